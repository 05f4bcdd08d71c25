"""One agent's turn: render the frame, call the model, run the tools the machine will ask for.

This is the whole logic of the Agent actor, kept free of Ray so it can be tested directly. It
holds no conversation state: a request carries the frame's messages and the variant overrides.
The model call streams its reply to the store and to a listener as it comes (`p2e.streaming`).
"""

from __future__ import annotations

import asyncio
import importlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from p2e.agents import AgentSpec, TeamConfig
from p2e.agents.prompt import Prepared, prepare_agent
from p2e.errors import InvalidArgument
from p2e.events import AgentReply, ToolCall, ToolResult
from p2e.ledger.wallet import WalletFinder
from p2e.llm import Message, ModelRequest, ModelResponse, Providers
from p2e.policies.context import apply_context
from p2e.policies.duplicates import run_calls_with_policy
from p2e.runtime.interpret import tools_due
from p2e.runtime.steps import StepRequest, StepResult, ToolsRequest
from p2e.store import EventLog
from p2e.streaming import Listener, PartialReply, Publisher
from p2e.tools import REGISTRY, Registry, ToolContext, run_calls


class AgentRunner:
    def __init__(
        self,
        agent_id: str,
        team: TeamConfig,
        providers: Providers | None = None,
        registry: Registry = REGISTRY,
        store: EventLog | None = None,
        listener: Listener | None = None,
        wallets: WalletFinder | None = None,
    ):
        """`listener`: told of the partial reply of each step as it streams (`p2e.streaming`).
        `wallets`: finds an agent's Wallet actor where the process runs them (`ToolContext`)."""
        self.spec = team.agent(agent_id)
        self.team = team
        self.providers = providers or Providers(team.providers)
        self.registry = registry
        self.store = store
        self.listener = listener
        self.wallets = wallets
        import_tool_modules(team.tool_modules)
        registry.check_allowlist(agent_id, self.spec.tools)
        self._prepared: dict[str, Prepared] = {}

    def prepare(self, overrides: dict[str, Any]) -> Prepared:
        """The agent under a variant's overrides, its tools and its rendered persona; computed
        once per distinct set of overrides (rendering a persona per step would dominate)."""
        key = json.dumps(overrides, sort_keys=True, default=str) if overrides else ""
        p = self._prepared.get(key)
        if p is None:
            p = self._prepared[key] = prepare_agent(
                self.spec.with_overrides(overrides), self.team, self.registry
            )
        return p

    async def step(self, req: StepRequest) -> StepResult:
        spec, system, tools = self.prepare(req.overrides)
        messages: tuple[Message, ...] = (system, *req.messages)
        if not spec.context.is_noop:  # the default shows the whole frame: nothing to do
            messages = apply_context(spec.context, messages)
        request = ModelRequest(
            model=spec.model,
            messages=messages,
            tools=tools,
            temperature=spec.temperature,
            seed=spec.seed,
            top_p=spec.top_p,
            max_tokens=spec.max_tokens,
            agent=spec.id,
            turn=req.turn,
            conversation=req.conversation,
            branch=req.branch,
            seq=req.seq,
        )
        response = await self._call_model(request, req)
        reply = AgentReply(
            agent=spec.id,
            text=response.text,
            tool_calls=unique_ids(response.tool_calls, req.seq),
            model=response.model or spec.model,
            usage=response.usage,
        )
        due = tools_due(req.state, reply)  # the machine's decision, before anything runs
        if not due:
            return StepResult(reply=reply)
        place = {c.id: f"{req.seq}.{i}" for i, c in enumerate(reply.tool_calls)}
        results = await self._run(req.conversation, req.branch, due, spec, req.messages, req.episode, place)
        return StepResult(reply=reply, results=tuple(results))

    async def _call_model(self, request: ModelRequest, req: StepRequest) -> ModelResponse:
        """The model's reply, streamed as it comes to the listener and the store; not for a
        rollout episode's step (no one reads those live, and they run by the thousand)."""
        provider = self.providers.for_model(request.model)
        if req.episode or (self.store is None and self.listener is None):
            return await provider.complete(request)
        partial = PartialReply(seq=req.seq, agent=request.agent)
        publish = Publisher(self.store, req.conversation, req.branch, partial, self.listener)
        try:
            response = await provider.complete(request, on_delta=publish)
        except BaseException:  # failed or cancelled: what it showed is not a reply
            await asyncio.shield(publish.close(ok=False))
            raise
        await publish.close(ok=True)
        return response

    async def run_tools(self, req: ToolsRequest) -> list[ToolResult]:
        spec = self.spec.with_overrides(req.overrides)
        return await self._run(req.conversation, req.branch, req.calls, spec, episode=req.episode)

    async def _run(
        self,
        conversation: str,
        branch: str,
        calls: Sequence[ToolCall],
        spec: AgentSpec,
        history: Sequence[Message] = (),
        episode: str = "",
        positions: Mapping[str, str] | None = None,
    ) -> list[ToolResult]:
        """Run the calls; `history` (the frame's messages before them) is what the duplicate-call
        policy compares them with; `episode` and `positions` key their effects (`ToolContext`)."""
        ctx = ToolContext(
            conversation=conversation,
            branch=branch,
            agent=spec.id,
            store=self.store,
            episode=episode,
            positions=positions or {},
            wallets=self.wallets,
        )
        if spec.duplicates.is_noop:
            return await run_calls(self.registry, calls, ctx, allowed=spec.tools)
        return await run_calls_with_policy(
            spec.duplicates, self.registry, calls, ctx, spec.tools, history=history
        )


def import_tool_modules(modules: Sequence[str]) -> None:
    """Import user modules whose `@tool` functions register themselves."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise InvalidArgument(f"field 'tool_modules': cannot import {name!r}: {e}") from e


def unique_ids(calls: Sequence[ToolCall], seq: int) -> tuple[ToolCall, ...]:
    """Models sometimes repeat or omit call ids; results must match calls one to one."""
    seen: set[str] = set()
    out = []
    for i, c in enumerate(calls):
        if not c.id or c.id in seen:
            c = c.model_copy(update={"id": f"call_{seq}_{i}"})
        seen.add(c.id)
        out.append(c)
    return tuple(out)
