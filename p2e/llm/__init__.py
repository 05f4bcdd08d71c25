"""Model providers behind one protocol: `openai`, `mock`, `replay`. Names are `provider/model`."""

from p2e.llm.base import Message, ModelRequest, ModelResponse, Provider, ToolSpec, split_model
from p2e.llm.registry import PROVIDERS, Providers, provider_class

__all__ = [
    "PROVIDERS",
    "Message",
    "ModelRequest",
    "ModelResponse",
    "Provider",
    "Providers",
    "ToolSpec",
    "provider_class",
    "split_model",
]
