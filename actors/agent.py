"""The Agent actor: one per agent id (times `replicas`), hosting an `AgentRunner`.

It keeps no conversation state, so Ray may restart it at any time (`max_restarts=-1`) and retry
the step that was running (`max_task_retries`): a step is only a model call and its tools, and
nothing of it counts until the supervisor has stored the reply.
"""

from __future__ import annotations

import ray

from p2e.agents import TeamConfig
from p2e.runtime.agent import AgentRunner
from p2e.runtime.steps import TOOL_RESULTS, StepRequest, ToolsRequest
from p2e.store import EventLog


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=3, concurrency_groups={"control": 1})
class AgentActor:
    def __init__(self, agent_id: str, team: TeamConfig, store_url: str, namespace: str):
        self.agent_id = agent_id
        self.runner = AgentRunner(agent_id, team, store=EventLog(store_url, namespace))
        self.steps = 0

    # Requests and results cross as JSON bytes: pydantic-core (de)serialises them several times
    # faster than pickling nested models, and Ray passes bytes through without pickling.

    async def step(self, req: bytes) -> bytes:
        self.steps += 1
        result = await self.runner.step(StepRequest.model_validate_json(req))
        return result.model_dump_json().encode()

    async def run_tools(self, req: bytes) -> bytes:
        results = await self.runner.run_tools(ToolsRequest.model_validate_json(req))
        return TOOL_RESULTS.dump_json(results)

    @ray.method(concurrency_group="control")
    async def health(self) -> dict[str, str | int]:
        """Who this is and how many steps it has served since it (re)started."""
        return {"agent": self.agent_id, "steps": self.steps}
