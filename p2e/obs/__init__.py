"""Observability: follow the store, record to Rerun, watch in the terminal, structured logs.

Observers read the store and never sit on the hot path. Importing this package is cheap; the
Rerun SDK is imported only when something is recorded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from p2e.obs.follow import BranchBatch, ScoreBatch, Step, StoreFollower, Update
from p2e.obs.logs import bind, configure_logging, log_context
from p2e.obs.observer import (
    Observation,
    RerunOptions,
    finish_recording,
    observe,
    record_conversation,
    record_rows,
    start_recording,
)
from p2e.obs.rows import RolloutRow, leaderboard, matrix
from p2e.obs.viewer import ViewerUnavailable, recording_path, recordings_dir
from p2e.redact import Redactor, default_redactor, redact, refresh_secrets, register_secret

if TYPE_CHECKING:
    from p2e.obs.recorder import Recorder, blueprint


def __getattr__(name: str) -> Any:
    if name in ("Recorder", "blueprint"):
        from p2e.obs import recorder

        return getattr(recorder, name)
    raise AttributeError(f"module 'p2e.obs' has no attribute {name!r}")


__all__ = [
    "BranchBatch",
    "Observation",
    "Recorder",
    "Redactor",
    "RerunOptions",
    "RolloutRow",
    "ScoreBatch",
    "Step",
    "StoreFollower",
    "Update",
    "ViewerUnavailable",
    "bind",
    "blueprint",
    "configure_logging",
    "default_redactor",
    "finish_recording",
    "leaderboard",
    "log_context",
    "matrix",
    "observe",
    "record_conversation",
    "record_rows",
    "recording_path",
    "recordings_dir",
    "redact",
    "refresh_secrets",
    "register_secret",
    "start_recording",
]
