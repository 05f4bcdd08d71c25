"""The Agent actor: one per agent id (times `replicas`), hosting an `AgentRunner`.

It keeps no conversation state, so Ray may restart it at any time (`max_restarts=-1`) and retry
the step that was running (`max_task_retries`): a step is only a model call and its tools, and
nothing of it counts until the supervisor has stored the reply. It does keep the messages of the
frames it served (`FrameCache`), so that a step carries only the new ones; when it lacks them
(restarted, evicted, another replica served the frame) it answers `NEED_FULL` and the supervisor
sends the whole frame (`p2e.runtime.frames`): losing the cache costs time, never correctness.
"""

from __future__ import annotations

import ray

from actors.wallet import actor_wallets
from p2e.agents import TeamConfig
from p2e.runtime.agent_step import AgentRunner
from p2e.runtime.frames import FrameCache
from p2e.runtime.steps import TOOL_RESULTS, StepRequest, ToolsRequest
from p2e.store import EventLog

NEED_FULL = b""
"""`step`'s answer to a request whose earlier messages this actor does not hold."""


# Ray's overloads for `ray.remote(...)` omit the actor options (concurrency_groups, ...)
@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=3, concurrency_groups={"control": 1})  # type: ignore[call-overload]
class AgentActor:
    def __init__(self, agent_id: str, team: TeamConfig, store_url: str, namespace: str):
        self.agent_id = agent_id
        self.runner = AgentRunner(
            agent_id, team, store=EventLog(store_url, namespace), wallets=actor_wallets(namespace)
        )
        self.frames = FrameCache(team.frame_cache)
        self.steps = 0

    # Requests and results cross as JSON bytes: pydantic-core (de)serialises them several times
    # faster than pickling nested models, and Ray passes bytes through without pickling.

    async def step(self, req: bytes) -> bytes:
        full = self.frames.resolve(StepRequest.model_validate_json(req))
        if full is None:
            return NEED_FULL
        self.steps += 1
        result = await self.runner.step(full)
        return result.model_dump_json().encode()

    async def run_tools(self, req: bytes) -> bytes:
        results = await self.runner.run_tools(ToolsRequest.model_validate_json(req))
        return TOOL_RESULTS.dump_json(results)

    @ray.method(concurrency_group="control")
    async def health(self) -> dict[str, str | int]:
        """Who this is; since it (re)started: the steps it served, how many of them it completed
        from its frame cache, and how many requests it sent back for lack of a frame's messages."""
        f = self.frames
        return {"agent": self.agent_id, "steps": self.steps, "frame_hits": f.hits, "frame_misses": f.misses}
