"""p2e's environment variables, read in one place.

Every setting p2e takes from the environment is a field of `Settings`. Modules call
`settings()` when they need a value, never at import time, so a variable set after import (a
driver script's `os.environ`, a test's monkeypatch) is seen. Each call reads the variables again
(a few dict lookups) and parses them only when one changed. An empty variable counts as unset.
A bad value fails on one line naming the variable and what it takes:

```python
from p2e.settings import settings

settings().snapshot_every      # P2E_SNAPSHOT_EVERY, default 256
```

Secrets (`OPENAI_API_KEY`, or the variable a provider's `api_key_env` names) are not settings:
they are read where they are used, and the redactor masks every secret-named variable.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from p2e.errors import InvalidArgument

ENV = {
    "redis_url": "P2E_REDIS_URL",
    "namespace": "P2E_NAMESPACE",
    "home": "P2E_HOME",
    "log_level": "P2E_LOG_LEVEL",
    "log_format": "P2E_LOG_FORMAT",
    "dashboard": "P2E_DASHBOARD",
    "confirm_episodes": "P2E_CONFIRM_EPISODES",
    "snapshot_every": "P2E_SNAPSHOT_EVERY",
    "agents": "P2E_AGENTS",
    "canton_url": "P2E_CANTON_URL",
    "rerun_viewer": "P2E_RERUN_VIEWER",
    "openai_base_url": "OPENAI_BASE_URL",
}
"""Field -> the environment variable it is read from."""

HINTS = {
    "log_format": "use text or json",
    "dashboard": "use 1 (dashboard on) or 0 (off)",
    "confirm_episodes": "give a number of episodes, e.g. 10000",
    "snapshot_every": "give a number of events, at least 1 (default 256)",
}
"""What a bad value should be instead, for the error line."""


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    redis_url: str | None = None
    """The store's server; None: the embedded Valkey."""
    namespace: str = "p2e"
    """The store's key prefix."""
    home: Path = Path(".p2e")
    """Where the embedded server keeps its data (relative to the working directory)."""
    log_level: str = "WARNING"
    """Checked where logging is configured (`p2e.obs.logs`), which takes a level as argument too."""
    log_format: Literal["text", "json"] = "text"
    dashboard: bool | None = None
    """Whether a Ray that p2e starts runs its dashboard; None: the command's default."""
    confirm_episodes: int = Field(10_000, ge=0)
    """`p2e rollout run` asks before running more episodes than this."""
    snapshot_every: int = Field(256, ge=1)
    """Events between snapshots of a branch's machine state."""
    agents: str = "experiments/agents.yaml"
    """The agents file of `p2e.chat()` and the CLI when none is given."""
    canton_url: str | None = None
    """The Canton Ledger API, when the ledger settings recorded none."""
    rerun_viewer: str | None = None
    """The `rerun` executable to spawn, instead of the one installed beside Python."""
    openai_base_url: str | None = None
    """An OpenAI-compatible server for the `openai` provider, when its settings name none."""

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @field_validator("dashboard", mode="before")
    @classmethod
    def _zero_or_one(cls, v: Any) -> Any:
        if isinstance(v, str) and v not in ("0", "1"):
            raise ValueError("not 0 or 1")
        return v

    @field_validator("confirm_episodes", "snapshot_every", mode="before")
    @classmethod
    def _digits(cls, v: Any) -> Any:
        if isinstance(v, str) and not v.isdecimal():
            raise ValueError("not a whole number")
        return v


def settings() -> Settings:
    """The settings as the environment holds them now."""
    return _parse(tuple(os.environ.get(name) for name in ENV.values()))


@functools.lru_cache(maxsize=8)
def _parse(values: tuple[str | None, ...]) -> Settings:
    raw = {field: value for field, value in zip(ENV, values, strict=True) if value}
    try:
        return Settings.model_validate(raw)
    except ValidationError as e:
        field = str(e.errors()[0]["loc"][0])
        hint = HINTS.get(field, e.errors()[0]["msg"])
        raise InvalidArgument(f"{ENV[field]}={raw[field]!r}: {hint}") from None
