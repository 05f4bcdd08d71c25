"""What crosses the model boundary: requests, responses, and the provider protocol.

Messages follow the OpenAI chat shape because every provider we target speaks it (OpenAI,
vLLM, Ollama, llama.cpp servers); `mock` and `replay` read the same requests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from p2e.errors import InvalidArgument, P2EError
from p2e.events import ToolCall, Usage


class ModelError(P2EError):
    """A model call that failed for good: a rejected request, or retries used up.

    Messages name the model, the endpoint and the HTTP status so the user can tell a bad request
    from an outage; they never contain the API key.
    """

    def __init__(
        self,
        message: str,
        *,
        model: str = "",
        base_url: str = "",
        status: int | None = None,
        attempts: int = 0,
        retryable: bool = False,
    ):
        super().__init__(message)
        self.model, self.base_url, self.status = model, base_url, status
        self.attempts, self.retryable = attempts, retryable


class Message(BaseModel):
    model_config = ConfigDict(frozen=True)

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None


class ToolSpec(BaseModel):
    """A tool as the model sees it: name, description, JSON schema of the arguments."""

    model_config = ConfigDict(frozen=True)

    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class ModelRequest(BaseModel):
    model_config = ConfigDict(frozen=True)

    model: str
    """`provider/model`, e.g. `openai/gpt-4o-mini`, `mock/default`."""
    messages: tuple[Message, ...]
    tools: tuple[ToolSpec, ...] = ()
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    agent: str = ""
    turn: int = 0
    """How many replies the agent has given in this frame before this one (0 = first)."""
    conversation: str = ""
    branch: str = ""
    seq: int = -1
    """The seq the reply will be stored at (the replay provider looks it up by this)."""


class ModelResponse(BaseModel):
    model_config = ConfigDict(frozen=True)

    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    model: str = ""
    usage: Usage = Usage()


class ModelDelta(BaseModel):
    """A piece of a reply as it streams in: text, or a fragment of tool call `tool` (its index in
    the reply: `name` and `id` come with its first fragment, `arguments` in pieces).

    `restart`: the attempt that sent the pieces so far failed and the call is being retried;
    forget them (`p2e.streaming.PartialReply.add`)."""

    model_config = ConfigDict(frozen=True)

    text: str = ""
    tool: int | None = None
    id: str = ""
    name: str = ""
    arguments: str = ""
    restart: bool = False


OnDelta = Callable[[ModelDelta], None]
"""Told of each piece of a streamed reply, in order; it must not block (it runs on the loop)."""


class Provider(Protocol):
    async def complete(self, request: ModelRequest, on_delta: OnDelta | None = None) -> ModelResponse:
        """The complete reply. With `on_delta`, a provider that can stream (openai, mock with
        `stream_chunk_ms`) reports the pieces as they arrive; the response is the same either way."""
        ...


def split_model(name: str) -> tuple[str, str]:
    """`provider/model` -> (provider, model). The model part may itself contain slashes."""
    provider, sep, model = name.partition("/")
    if not sep or not provider or not model:
        raise InvalidArgument(
            f"model {name!r} must be named provider/model, e.g. openai/gpt-4o-mini or mock/default"
        )
    return provider, model
