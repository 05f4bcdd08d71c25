"""The Evaluator actor: scores steps and episodes off the hot path (see `EvalService`).

The supervisor calls it without waiting; a failure here costs a score (recorded as an error
score by the evaluators themselves), never a conversation.
"""

from __future__ import annotations

import ray

from actors.metrics import ScoreMeter
from p2e.agents import TeamConfig
from p2e.evals.score import SCORES
from p2e.evals.service import EvalService
from p2e.store import EventLog


# Ray's overloads for `ray.remote(...)` omit the actor options (concurrency_groups, ...)
@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=1, concurrency_groups={"control": 1})  # type: ignore[call-overload]
class EvaluatorActor:
    def __init__(self, team: TeamConfig, store_url: str, namespace: str):
        self.service = EvalService(EventLog(store_url, namespace), team)
        self.meter = ScoreMeter()
        self.done = 0

    async def on_step(self, conversation: str, branch: str, seq: int) -> int:
        self.done += len(await self.service.on_step(conversation, branch, seq))
        return self.done

    async def on_episode(self, conversation: str, branch: str) -> int:
        self.done += len(await self.service.on_episode(conversation, branch))
        return self.done

    async def score(self, conversation: str, branch: str, reference: str | None = None) -> bytes:
        """Score a finished episode now; the scores as a JSON list (they are stored too)."""
        scores = await self.service.score(conversation, branch, reference)
        self.done += len(scores)
        for s in scores:
            self.meter.score(s.evaluator, s.value)
        return SCORES.dump_json(scores)

    @ray.method(concurrency_group="control")
    async def health(self) -> dict[str, int]:
        return {"scores": self.done}
