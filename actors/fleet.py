"""The coordinator's `Fleet` on Ray: named supervisor and evaluator actors, Ray's errors turned
into the protocol's (`WorkerLost` for a dead actor or node, `CallFailed` for an error raised in
the call), and every call in flight cancellable."""

from __future__ import annotations

from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError

from p2e.rollouts.fleet import CallFailed, WorkerLost

_DEAD = (RayActorError, ActorDiedError, ActorUnavailableError)


class RayFleet:
    def __init__(self, supervisors: list[Any], evaluators: list[Any]):
        self._supervisors = supervisors
        self._evaluators = evaluators
        self._refs: set[ray.ObjectRef] = set()

    @property
    def supervisors(self) -> int:
        return len(self._supervisors)

    @property
    def evaluators(self) -> int:
        return len(self._evaluators)

    async def _call(self, ref: ray.ObjectRef) -> Any:
        self._refs.add(ref)
        try:
            return await ref
        except _DEAD as e:
            raise WorkerLost(e) from e
        except RayTaskError as e:
            raise CallFailed(e) from e
        finally:
            self._refs.discard(ref)

    async def run_episode(self, supervisor: int, request: bytes) -> bytes:
        return await self._call(self._supervisors[supervisor].run_episode.remote(request))

    async def health(self, supervisor: int) -> None:
        await self._call(self._supervisors[supervisor].health.remote())

    async def score(self, evaluator: int, conversation: str, branch: str, reference: str | None) -> bytes:
        ev = self._evaluators[evaluator]
        return await self._call(ev.score.remote(conversation, branch, reference))

    def cancel(self) -> None:
        for ref in list(self._refs):
            ray.cancel(ref)
