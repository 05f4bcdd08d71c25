"""The interpreter of the machine's commands for many conversations at once (async).

This is the Supervisor actor's logic without Ray: it hosts conversations, asks agents for steps
through an `Agents` lookup (Ray actor handles in production, plain runners in tests), stores
every event before acting on it (group-committed), and ends each conversation cleanly: a turn
ends when the root agent answers, or with a `failed` event, never by hanging.

Recovery: a conversation is rebuilt from the store when first touched, and `pending(state)`
says what was outstanding, so a restarted host continues where the old one stopped; an event
is stored once, since nothing acts before its append is acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from pydantic import BaseModel

from p2e.conversation import Conversation
from p2e.errors import Conflict, P2EError
from p2e.events import AgentReply, Event, Failed, Limits, Started, ToolResult, UserMessage
from p2e.machine import CallAgent, Command, Fail, RejectCalls, Reply, RunTools, handle_all, pending
from p2e.runtime.steps import EpisodeOutcome, EpisodeRequest, StepRequest, StepResult, ToolsRequest
from p2e.store import EventLog
from p2e.store.aio import GroupCommit
from p2e.transcript import Transcript

log = logging.getLogger("p2e.driver")


class AgentHandle(Protocol):
    async def step(self, req: StepRequest) -> StepResult: ...
    async def run_tools(self, req: ToolsRequest) -> list[ToolResult]: ...


Agents = Callable[[str], AgentHandle]


class Meter(Protocol):
    """Told of each stored reply and each finished episode (metrics: Ray's, or none)."""

    def reply(self, reply: AgentReply) -> None: ...
    def episode(self, status: str, wall_s: float) -> None: ...


class Observer(Protocol):
    """Told of each stored step and each root answer; must not block (evaluators run elsewhere)."""

    def step(self, conversation: str, branch: str, seq: int) -> None: ...
    def episode(self, conversation: str, branch: str) -> None: ...


class TurnResult(BaseModel):
    """How a turn ended: the root's answer, or the error that ended the conversation."""

    conversation: str
    name: str
    branch: str
    status: str
    answer: str | None = None
    error: str | None = None
    length: int
    steps: int


class Hosted:
    def __init__(self, conv: Conversation, transcript: Transcript, overrides: dict[str, dict[str, Any]]):
        self.conv = conv
        self.transcript = transcript
        self.overrides = overrides
        self.lock = asyncio.Lock()
        self.answer: str | None = None


class Driver:
    def __init__(
        self,
        log_: EventLog,
        writer: GroupCommit,
        agents: Agents,
        observer: Observer | None = None,
        meter: Meter | None = None,
    ):
        self.log = log_
        self.writer = writer
        self.agents = agents
        self.observer = observer
        self.meter = meter
        self.hosted: dict[str, Hosted] = {}

    # --- conversations -------------------------------------------------------------------------

    async def create(
        self,
        root: str,
        team: dict[str, tuple[str, ...]],
        limits: Limits | None = None,
        name: str | None = None,
        overrides: dict[str, dict[str, Any]] | None = None,
        cid: str | None = None,
    ) -> str:
        conv = await asyncio.to_thread(
            Conversation.create, self.log, root, team, limits, name, cid, overrides
        )
        self.hosted[conv.id] = Hosted(conv, Transcript.opened(conv.state), overrides or {})
        return conv.id

    async def host(self, conv: str, branch: str | None = None) -> Hosted:
        """The hosted conversation, rebuilt from the store if this host has not seen it (or if
        another branch is asked for, or the checked-out branch moved)."""
        h = self.hosted.get(conv)  # callers that route by id skip the name lookup
        cid = conv if h is not None else await asyncio.to_thread(self.log.resolve, conv)
        h = h or self.hosted.get(cid)
        if h is not None:
            # one non-blocking round trip: a checkout made elsewhere (the CLI) is followed
            wanted = branch
            if wanted is None:
                active = await self.writer.command("HGET", self.log.keys.conv(cid), "active")
                wanted = (active or b"").decode()
            if wanted == h.conv.branch.name:
                return h
        c = await asyncio.to_thread(Conversation.open, self.log, cid, branch)
        events = await asyncio.to_thread(c.history)
        transcript, state = Transcript.rebuild(events)
        c.state = state
        start = events[0] if events else None
        overrides = start.overrides if isinstance(start, Started) else {}
        self.hosted[cid] = Hosted(c, transcript, overrides)
        return self.hosted[cid]

    def release(self, conv: str) -> None:
        """Forget a hosted conversation (it stays in the store; touching it again rebuilds it)."""
        self.hosted.pop(conv, None)

    async def send(self, conv: str, text: str, branch: str | None = None) -> TurnResult:
        """A user message, then every step it leads to, until the root answers or it fails."""
        return await self._turn(await self.host(conv, branch), text)

    async def _turn(self, h: Hosted, text: str) -> TurnResult:
        async with h.lock:
            h.answer = None
            await self._drive(h, await self._submit(h, UserMessage(text=text)))
            return self._result(h)

    async def resume(self, conv: str, branch: str | None = None) -> TurnResult:
        """Finish whatever the stored state says is outstanding (after a crash or a rewind)."""
        h = await self.host(conv, branch)
        async with h.lock:
            h.answer = None
            await self._drive(h, pending(h.conv.state))
            return self._result(h)

    async def episode(self, req: EpisodeRequest) -> EpisodeOutcome:
        """A rollout episode: a new conversation, one user message, driven to the root's answer
        (or a failure), then released so a long rollout holds nothing per finished episode."""
        t0 = time.monotonic()
        cid = await self.create(req.root, req.graph, req.limits, req.name, req.overrides, req.cid)
        h = self.hosted[cid]  # just created here: no need to ask the store where it stands
        try:
            turn = await self._turn(h, req.message)
            state = h.conv.state
        finally:
            self.release(cid)
        wall = time.monotonic() - t0
        status = "done" if turn.status != "failed" and turn.answer is not None else "failed"
        if self.meter is not None:
            self.meter.episode(status, wall)
        return EpisodeOutcome(
            conversation=cid,
            branch=turn.branch,
            status=status,
            answer=turn.answer,
            error=(turn.error or "the root agent gave no answer") if status == "failed" else None,
            steps=turn.steps,
            tokens=state.tokens,
            cost_usd=state.cost_usd,
            wall_s=wall,
        )

    def _result(self, h: Hosted) -> TurnResult:
        s = h.conv.state
        return TurnResult(
            conversation=h.conv.id,
            name=h.conv.info.name,
            branch=h.conv.branch.name,
            status=s.status,
            answer=h.answer,
            error=f"{s.error.code}: {s.error.message}" if s.error else None,
            length=s.length,
            steps=s.steps,
        )

    # --- the interpreter -----------------------------------------------------------------------

    async def _drive(self, h: Hosted, commands: list[Command]) -> None:
        todo = list(commands)
        while todo:
            cmd = todo.pop(0)
            todo = await self._perform(h, cmd) + todo

    async def _perform(self, h: Hosted, cmd: Command) -> list[Command]:
        c = h.conv
        if isinstance(cmd, CallAgent):
            agent = cmd.frame.agent
            req = StepRequest(
                conversation=c.id,
                branch=c.branch.name,
                seq=c.state.length,
                agent=agent,
                turn=sum(1 for m in h.transcript.frames[-1] if m.role == "assistant"),
                depth=cmd.depth,
                messages=tuple(h.transcript.messages()),
                overrides=h.overrides.get(agent, {}),
                max_tool_calls=c.state.limits.max_tool_calls_per_turn,
            )
            result = await self._guarded(h, f"agent {agent!r}", self.agents(agent).step(req))
            if result is None:
                return []
            return await self._submit(h, result.reply, *result.results)
        if isinstance(cmd, RunTools):
            treq = ToolsRequest(
                conversation=c.id,
                branch=c.branch.name,
                agent=cmd.agent,
                calls=cmd.calls,
                overrides=h.overrides.get(cmd.agent, {}),
            )
            results = await self._guarded(
                h, f"tools of {cmd.agent!r}", self.agents(cmd.agent).run_tools(treq)
            )
            return [] if results is None else await self._submit(h, *results)
        if isinstance(cmd, RejectCalls):
            errors: list[Event] = [
                ToolResult(
                    agent=cmd.agent, call_id=r.call.id, name=r.call.name, output=r.reason, is_error=True
                )
                for r in cmd.rejections
            ]
            return await self._submit(h, *errors)
        if isinstance(cmd, Reply):
            h.answer = cmd.text
            if self.observer is not None:
                self.observer.episode(c.id, c.branch.name)
            return []
        if isinstance(cmd, Fail):
            return await self._submit(h, Failed(code=cmd.code, message=cmd.message))
        raise TypeError(f"unknown command {cmd!r}")  # pragma: no cover

    async def _guarded(self, h: Hosted, what: str, call: Awaitable[Any]) -> Any:
        """Await an agent; if it fails for good, end the conversation with a `failed` event."""
        try:
            return await call
        except P2EError as e:
            await self._submit(h, Failed(code="agent_error", message=f"{what}: {e}"))
        except Exception as e:  # an actor that died for good, a bug in a tool wrapper, ...
            log.exception("%s failed in conversation %s", what, h.conv.id)
            await self._submit(h, Failed(code="agent_error", message=f"{what}: {type(e).__name__}: {e}"))
        return None

    async def _submit(self, h: Hosted, *events: Event) -> list[Command]:
        """Write-ahead: validate on the machine, store (group commit), then adopt the new state."""
        c = h.conv
        states, commands = handle_all(c.state, events)  # raises EventRejected before anything is stored
        try:
            await self.writer.append(c.id, c.branch.name, events, expected=c.state.length)
        except Conflict:
            self.release(c.id)  # someone else wrote to this branch: rebuild from the store next time
            raise
        for before, e, after in zip(states, events, states[1:], strict=False):
            h.transcript.update(before, e, after)
            if isinstance(e, AgentReply):
                if self.observer is not None:
                    self.observer.step(c.id, c.branch.name, before.length)
                if self.meter is not None:
                    self.meter.reply(e)
        state = states[-1]
        snapshot = c.commit(state)
        if snapshot is not None:
            await self.writer.command(
                "HSET", self.log.keys.snapshots(c.id, c.branch.name), state.length, snapshot
            )
        return commands
