"""The Supervisor actor: hosts many conversations' machines and drives them (see `Driver`).

Every event is stored before it is acted on, so when this actor dies Ray restarts it empty and
the next call for a conversation rebuilds it from the store and continues (`resume`). Calls are
not retried by Ray: a retried `send` could post the user's message twice; the API resumes
instead.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import ray

from actors import RAY_NAMESPACE
from actors.agent import NEED_FULL
from actors.metrics import RayMeter, ScoreMeter, labels
from actors.wallet import actor_wallets
from p2e.agents import TeamConfig
from p2e.evals.score import Score
from p2e.evals.service import EvalService
from p2e.evals.store import ScoreStore
from p2e.events import Event, Limits, ToolResult
from p2e.runtime.agent_step import AgentRunner
from p2e.runtime.driver import AgentHandle, Driver, TurnResult
from p2e.runtime.frames import SentFrames
from p2e.runtime.guided_search import GuidedSearch
from p2e.runtime.steps import TOOL_RESULTS, EpisodeRequest, StepRequest, StepResult, ToolsRequest
from p2e.store import BranchInfo, EventLog
from p2e.store.aio import GroupCommit


def agent_actor_name(namespace: str, agent_id: str, replica: int) -> str:
    """`p2e:agent:writer:0` for the default store namespace: the name the Ray dashboard shows."""
    return f"{namespace}:agent:{agent_id}:{replica}"


def supervisor_actor_name(namespace: str, index: int) -> str:
    return f"{namespace}:supervisor:{index}"


def evaluator_actor_name(namespace: str, index: int) -> str:
    return f"{namespace}:evaluator:{index}"


class RayEvaluators:
    """Hands steps and episodes to the evaluator actors, round-robin, without waiting."""

    def __init__(self, handles: list[Any]):
        self._cycle = itertools.cycle(handles)

    def step(self, conversation: str, branch: str, seq: int) -> None:
        next(self._cycle).on_step.remote(conversation, branch, seq)

    def episode(self, conversation: str, branch: str) -> None:
        next(self._cycle).on_episode.remote(conversation, branch)


class RayAgent:
    """An agent's replicas as one `AgentHandle`: calls go round-robin over the replicas. A step
    sends the replica only the frame's messages it has not seen, and all of them when it says
    it lacks the rest (`p2e.runtime.frames`)."""

    def __init__(self, handles: list[Any], frame_cache: int):
        self._handles = handles
        self._sent = [SentFrames(frame_cache) for _ in handles]
        self._cycle = itertools.cycle(range(len(handles)))

    async def step(self, req: StepRequest) -> StepResult:
        i = next(self._cycle)
        handle, sent = self._handles[i], self._sent[i]
        raw = await handle.step.remote(sent.delta(req).model_dump_json().encode())
        if raw == NEED_FULL:
            sent.forget(req)
            raw = await handle.step.remote(req.model_dump_json().encode())
        sent.sent(req)
        return StepResult.model_validate_json(raw)

    async def run_tools(self, req: ToolsRequest) -> list[ToolResult]:
        raw = await self._handles[next(self._cycle)].run_tools.remote(req.model_dump_json().encode())
        return TOOL_RESULTS.validate_json(raw)


# Ray's overloads for `ray.remote(...)` omit the actor options (concurrency_groups, ...)
@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0, concurrency_groups={"control": 1})  # type: ignore[call-overload]
class SupervisorActor:
    def __init__(
        self,
        index: int,
        team: TeamConfig,
        store_url: str,
        namespace: str,
        evaluators: int = 0,
        prefix: str | None = None,
        scoring: TeamConfig | None = None,
    ):
        """`prefix` starts the names of the actors this one looks up (default: the store
        namespace; a rollout uses its own, so its actor set is separate). `scoring`: the config
        whose evaluators score each rollout episode here, right after it ends (no actor hop)."""
        self.index = index
        self.team = team
        self.prefix = prefix or namespace
        observer = None
        if evaluators:
            names = [evaluator_actor_name(self.prefix, i) for i in range(evaluators)]
            observer = RayEvaluators([ray.get_actor(n, namespace=RAY_NAMESPACE) for n in names])
        log = EventLog(store_url, namespace)
        self.meter = RayMeter()
        self.driver = Driver(
            log,
            GroupCommit(store_url, namespace),
            self._agent,
            observer,
            self.meter,
            team=team,
            policy=GuidedSearch(team),
        )
        self._agents: dict[str, AgentHandle] = {}
        self.node = ray.get_runtime_context().get_node_id()
        self.scorer = EvalService(log, scoring) if scoring is not None else None
        self.score_meter = ScoreMeter()

    def _agent(self, agent_id: str) -> AgentHandle:
        if agent_id not in self._agents:
            spec = self.team.agent(agent_id)
            if spec.placement == "supervisor":  # runs here: no Ray call per step
                log = self.driver.log
                wallets = actor_wallets(log.keys.ns)
                self._agents[agent_id] = AgentRunner(agent_id, self.team, store=log, wallets=wallets)
                return self._agents[agent_id]
            handles = [
                ray.get_actor(agent_actor_name(self.prefix, agent_id, i), namespace=RAY_NAMESPACE)
                for i in range(spec.replicas)
            ]
            self._agents[agent_id] = RayAgent(handles, self.team.frame_cache)
        return self._agents[agent_id]

    async def create(
        self,
        root: str,
        limits: Limits | None = None,
        name: str | None = None,
        overrides: dict[str, dict[str, Any]] | None = None,
        cid: str | None = None,
    ) -> str:
        return await self.driver.create(
            root, self.team.team_of(root), limits or self.team.limits, name, overrides, cid
        )

    async def send(self, conv: str, text: str, branch: str | None = None) -> TurnResult:
        try:
            return await self.driver.send(conv, text, branch)
        finally:
            self.meter.flush()  # a turn's counts are Ray's before its answer is anyone's

    async def resume(self, conv: str, branch: str | None = None) -> TurnResult:
        try:
            return await self.driver.resume(conv, branch)
        finally:
            self.meter.flush()

    async def run_episode(self, req: bytes) -> bytes:
        """A rollout episode (an `EpisodeRequest` as JSON); its `EpisodeOutcome` as JSON."""
        request = EpisodeRequest.model_validate_json(req)
        with labels(request.rollout, request.variant):  # every metric of the episode carries them
            outcome = await self.driver.episode(request, self._score if self.scorer is not None else None)
            if outcome.status == "done":  # a failed episode's row has no score: neither has the metric
                for s in outcome.scores:
                    self.score_meter.score(s.evaluator, s.value)
        return outcome.model_copy(update={"node": self.node}).model_dump_json().encode()

    async def _score(
        self, branch: BranchInfo, history: list[Event] | None, reference: str | None
    ) -> list[Score]:
        """Score an episode that just ran here, from the events the driver kept; the scores go
        out through the group commit (no thread, no extra connection)."""
        assert self.scorer is not None
        return await self.scorer.score(
            branch.conversation, branch.name, reference, info=branch, history=history, save=self._save
        )

    async def _save(self, scores: list[Score]) -> None:
        writes = ScoreStore(self.driver.log).writes(scores)
        await asyncio.gather(
            *(
                self.driver.writer.command("HSET", key, *(x for kv in fields.items() for x in kv))
                for key, fields in writes.items()
            )
        )

    async def release(self, conv: str) -> None:
        self.driver.release(conv)

    async def flush_metrics(self) -> None:
        """Hand the counts summed so far to Ray (called before the actor is killed). On the
        default loop, the meter's own: the control group runs on another thread."""
        self.meter.flush()

    @ray.method(concurrency_group="control")
    async def health(self) -> dict[str, int]:
        return {"index": self.index, "hosted": len(self.driver.hosted)}
