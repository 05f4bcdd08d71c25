"""What the coordinator needs of the workers that run episodes: a protocol, so that every
decision (which supervisor, when to retry, when to give up) is a plain class, testable without
Ray, and every Ray call lives at the edge (`actors/fleet.py` is the Ray implementation).

A call that fails raises one of two errors, whatever the transport: `WorkerLost` (the worker,
or its node, died: the episode may run again elsewhere) or `CallFailed` (the call itself raised:
running it again would fail again). Each keeps the transport's error as `cause`."""

from __future__ import annotations

from typing import Protocol


class FleetError(Exception):
    def __init__(self, cause: BaseException):
        super().__init__(str(cause))
        self.cause = cause


class WorkerLost(FleetError):
    """The worker running the call died (or cannot be reached): the call may run elsewhere."""


class CallFailed(FleetError):
    """The call raised in the worker: running it again would raise again."""


class Fleet(Protocol):
    """Supervisors that run episodes and evaluators that score them, by index."""

    @property
    def supervisors(self) -> int: ...

    @property
    def evaluators(self) -> int: ...

    async def run_episode(self, supervisor: int, request: bytes) -> bytes:
        """An `EpisodeRequest` (JSON) run to its end: the `EpisodeOutcome` (JSON)."""
        ...

    async def health(self, supervisor: int) -> None:
        """Returns once the supervisor answers (raises `WorkerLost` while it is down)."""
        ...

    async def score(self, evaluator: int, conversation: str, branch: str, reference: str | None) -> bytes:
        """A finished episode's scores (a JSON list of `Score`)."""
        ...

    def cancel(self) -> None:
        """Cancel every call in flight (Ctrl-C, or the rollout stopped)."""
        ...
