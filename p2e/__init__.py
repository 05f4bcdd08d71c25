"""p2e: build, run and evaluate multi-agent LLM systems.

`import p2e` is cheap (no Ray); `p2e.init()`, `p2e.local_chat()` and `p2e.rollout()` load the
runtime on first use. See README.md for the tour.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from p2e.errors import P2EError

if TYPE_CHECKING:
    from p2e.api import init, local_chat
    from p2e.api import run_rollout as rollout

__all__ = ["P2EError", "init", "local_chat", "rollout"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in ("init", "local_chat"):
        from p2e import api

        return getattr(api, name)
    if name == "rollout":
        from p2e.api import run_rollout

        return run_rollout
    raise AttributeError(f"module 'p2e' has no attribute {name!r}")
