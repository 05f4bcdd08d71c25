"""Providers by name: the part of `provider/model` before the slash picks the class.

Each provider class is built once per process from its section of the providers settings
(a plain dict, e.g. `{"base_url": ..., "api_key_env": ...}` for openai) and serves every model
of that provider.
"""

from __future__ import annotations

import importlib
from typing import Any

from p2e.errors import InvalidArgument
from p2e.llm.base import Provider, split_model

PROVIDERS: dict[str, str] = {
    "openai": "p2e.llm.openai:OpenAIProvider",
    "mock": "p2e.llm.mock:MockProvider",
    "replay": "p2e.llm.replay:ReplayProvider",
}


def provider_class(name: str) -> type:
    target = PROVIDERS.get(name)
    if target is None:
        raise InvalidArgument(f"unknown model provider {name!r}; known: {', '.join(sorted(PROVIDERS))}")
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


class Providers:
    """Provider instances for one process, created on first use from their settings."""

    def __init__(self, settings: dict[str, dict[str, Any]] | None = None):
        self.settings = settings or {}
        self._instances: dict[str, Provider] = {}

    def provider(self, name: str) -> Provider:
        """The provider `name`, built from its settings (bad settings, an unknown key, a mock rules
        set that does not parse, a bad price, fail here)."""
        if name not in self._instances:
            self._instances[name] = provider_class(name)(self.settings.get(name, {}))
        return self._instances[name]

    def for_model(self, model: str) -> Provider:
        return self.provider(split_model(model)[0])

    def check_model(self, model: str) -> None:
        """Fail now if `model` cannot be served: an unknown provider, bad settings, or what the
        provider itself checks without a call (`check_model(model)`: the mock's rules set)."""
        provider = self.for_model(model)
        check = getattr(provider, "check_model", None)
        if check is not None:
            check(model)
