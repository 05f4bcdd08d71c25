"""The interpreter of the machine's commands for many conversations at once (async).

This is the Supervisor actor's logic without Ray: it hosts conversations, asks agents for steps
through an `Agents` lookup (Ray actor handles in production, plain runners in tests), stores
every event before acting on it (group-committed), and ends each conversation cleanly: a turn
ends when the root agent answers, or with a `failed` event, never by hanging. At each agent's
turn it asks the turn policy it was handed (`p2e.runtime.turns`; guided search) whether that
policy drives the turn; it imports no policy itself.

Recovery: a conversation is rebuilt from the store when first touched, and `pending(state)`
says what was outstanding, so a restarted host continues where the old one stopped; an event
is stored once, since nothing acts before its append is acknowledged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from pydantic import BaseModel

from p2e.agents import AgentSpec, TeamConfig
from p2e.conversation import Conversation
from p2e.errors import Conflict, log_failure, one_line
from p2e.evals.score import Score
from p2e.events import (
    AgentReply,
    Critique,
    Event,
    Failed,
    Limits,
    Reflection,
    Started,
    ToolResult,
    UserMessage,
)
from p2e.llm.base import Message
from p2e.machine import CallAgent, Command, Reply, Review, RunTools, pending
from p2e.runtime.hosted import Hosted
from p2e.runtime.interpret import advance, settle
from p2e.runtime.steps import (
    GIVE_UP,
    GOAL_MET,
    EndedBy,
    EpisodeOutcome,
    EpisodeRequest,
    SimulatedUser,
    StepRequest,
    StepResult,
    ToolsRequest,
    episode_key,
)
from p2e.runtime.turns import Spend, TurnPolicy
from p2e.store import BranchInfo, EventLog
from p2e.store.aio import GroupCommit
from p2e.templates import prompt
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


Scorer = Callable[[BranchInfo, "list[Event] | None", "str | None"], Awaitable["list[Score]"]]
"""Scores a finished episode: (its branch, its events if kept, the reference) -> scores."""


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


class DialogueEnd(BaseModel):
    """How an episode's dialogue ended: its last turn, the user turns sent, who ended it and why,
    and what a simulated user spent and decided."""

    turn: TurnResult
    turns: int
    by: EndedBy
    reason: str = ""
    goal_met: bool | None = None
    tokens: int = 0
    cost_usd: float = 0.0


class Driver:
    def __init__(
        self,
        log_: EventLog,
        writer: GroupCommit,
        agents: Agents,
        observer: Observer | None = None,
        meter: Meter | None = None,
        team: TeamConfig | None = None,
        policy: TurnPolicy | None = None,
    ):
        """`team`: the agents' config, for the policies the supervisor applies (reflection);
        without it conversations run plain. `policy`: asked at each agent's turn whether it
        drives the turn (guided search); without one every agent steps as usual."""
        self.log = log_
        self.writer = writer
        self.agents = agents
        self.observer = observer
        self.meter = meter
        self.team = team
        self.policy = policy
        self.hosted: dict[str, Hosted] = {}
        self._specs: dict[tuple[str, str], AgentSpec] = {}
        specs = team.agents.values() if team is not None else ()
        self._reflective = any(a.reflection is not None for a in specs)
        """Whether the file itself asks for reflection; if not, only a variant naming it can
        (checked without building the agent's spec: the common case costs nothing)."""

    def spec(self, agent: str, overrides: dict[str, Any] | None) -> AgentSpec | None:
        """`agent`'s spec under a variant's overrides (cached), or None without a team config."""
        if self.team is None:
            return None
        key = (agent, json.dumps(overrides, sort_keys=True, default=str) if overrides else "")
        spec = self._specs.get(key)
        if spec is None:
            spec = self._specs[key] = self.team.agent(agent).with_overrides(overrides or {})
        return spec

    def reflection(
        self, graph: dict[str, tuple[str, ...]], overrides: dict[str, dict[str, Any]]
    ) -> dict[str, Reflection]:
        """The reflection rules of a conversation's agents, for its `started` event."""
        if not self._reflective and not any("reflection" in o for o in overrides.values()):
            return {}
        rules = {}
        for agent in graph:
            spec = self.spec(agent, overrides.get(agent))
            if spec is not None and spec.reflection is not None:
                rules[agent] = spec.reflection
        return rules

    # --- conversations -------------------------------------------------------------------------

    async def create(
        self,
        root: str,
        team: dict[str, tuple[str, ...]],
        limits: Limits | None = None,
        name: str | None = None,
        overrides: dict[str, dict[str, Any]] | None = None,
        cid: str | None = None,
        record: bool = False,
    ) -> str:
        """A new conversation hosted here; `record`: keep its events (an episode scored here)."""
        conv, start = await Conversation.acreate(
            self.log,
            self.writer,
            root,
            team,
            limits,
            name,
            cid,
            overrides,
            self.reflection(team, overrides or {}),
        )
        hosted = self.hosted[conv.id] = Hosted(conv, Transcript.opened(conv.state), overrides or {})
        hosted.record = [start] if record else None
        return conv.id

    async def host(self, conv: str, branch: str | None = None) -> Hosted:
        """The hosted conversation, rebuilt from the store if this host has not seen it (or if
        another branch is asked for, or the checked-out branch moved)."""
        hosted = self.hosted.get(conv)  # callers that route by id skip the name lookup
        cid = conv if hosted is not None else await asyncio.to_thread(self.log.resolve, conv)
        hosted = hosted or self.hosted.get(cid)
        if hosted is not None:
            # one non-blocking round trip: a checkout made elsewhere (the CLI) is followed
            wanted = branch
            if wanted is None:
                active = await self.writer.command("HGET", self.log.keys.conv(cid), "active")
                wanted = (active or b"").decode()
            if wanted == hosted.conv.branch.name:
                return hosted
        opened = await asyncio.to_thread(Conversation.open, self.log, cid, branch)
        events = await asyncio.to_thread(opened.history)
        transcript, state = Transcript.rebuild(events)
        opened.state = state
        start = events[0] if events else None
        overrides = start.overrides if isinstance(start, Started) else {}
        self.hosted[cid] = Hosted(opened, transcript, overrides)
        return self.hosted[cid]

    def release(self, conv: str) -> None:
        """Forget a hosted conversation (it stays in the store; touching it again rebuilds it)."""
        self.hosted.pop(conv, None)

    async def send(self, conv: str, text: str, branch: str | None = None) -> TurnResult:
        """A user message, then every step it leads to, until the root answers or it fails."""
        return await self._turn(await self.host(conv, branch), text)

    async def _turn(self, hosted: Hosted, text: str) -> TurnResult:
        async with hosted.lock:
            hosted.answer = None
            await self._drive(hosted, await self._submit(hosted, UserMessage(text=text)))
            return self._result(hosted)

    async def resume(self, conv: str, branch: str | None = None) -> TurnResult:
        """Finish whatever the stored state says is outstanding (after a crash or a rewind)."""
        hosted = await self.host(conv, branch)
        async with hosted.lock:
            hosted.answer = None
            await self._drive(hosted, pending(hosted.conv.state))
            return self._result(hosted)

    async def episode(self, req: EpisodeRequest, score: Scorer | None = None) -> EpisodeOutcome:
        """A rollout episode: a new conversation, its user message and scripted turns, each
        driven to the root's answer (a failure ends the dialogue), scored by `score` when the
        request asks for it (from the events kept here: nothing is read back), then released so
        a long rollout holds nothing per finished episode."""
        t0 = time.monotonic()
        scoring = req.score and score is not None
        cid = await self.create(req.root, req.graph, req.limits, req.name, req.overrides, req.cid, scoring)
        hosted = self.hosted[cid]  # just created here: no need to ask the store where it stands
        hosted.reference = req.reference
        hosted.episode = episode_key(req.rollout, req.episode) if req.episode else ""
        scores: list[Score] = []
        try:
            if req.user is None:
                end = await self._dialogue(hosted, req)
            else:
                end = await self._simulated(hosted, req, req.user)
            turn, turns = end.turn, end.turns
            state = hosted.conv.state
            if scoring:
                assert score is not None
                scores = await score(hosted.conv.branch, hosted.record, req.reference)
        finally:
            self.release(cid)
        spent = self.policy.spent(hosted) if self.policy is not None else Spend()
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
            tokens=state.tokens + spent.tokens + end.tokens,
            cost_usd=state.cost_usd + spent.cost_usd + end.cost_usd,
            wall_s=wall,
            scores=scores,
            turns=turns,
            ended_by=end.by if status == "done" else "error",
            end_reason=end.reason if status == "done" else f"turn {turns} failed",
            goal_met=end.goal_met if status == "done" else None,
        )

    async def _dialogue(self, hosted: Hosted, req: EpisodeRequest) -> DialogueEnd:
        """The episode's user turns, in order, while the root answers and each turn's `when`
        matches the answer before it."""
        turn = await self._turn(hosted, req.message)
        n = 1
        for follow in req.turns:
            if turn.status == "failed" or turn.answer is None:
                break
            if follow.when is not None and re.search(follow.when, turn.answer) is None:
                why = f"turn {n + 1}: the answer to turn {n} did not match {follow.when!r}"
                return DialogueEnd(turn=turn, turns=n, by="script", reason=why)
            turn = await self._turn(hosted, follow.message)
            n += 1
        return DialogueEnd(
            turn=turn, turns=n, by="script", reason=f"turn {n}, the script's last, was answered"
        )

    async def _simulated(self, hosted: Hosted, req: EpisodeRequest, user: SimulatedUser) -> DialogueEnd:
        """The user's message, then after each answer of the root the simulated user's reply:
        its next turn, or its verdict, which ends the dialogue (as `max_turns` does)."""
        brief = prompt("simulated_user").render(goal=user.goal, facts=user.facts)
        view = [Message(role="user", content=brief), Message(role="assistant", content=req.message)]
        turn = await self._turn(hosted, req.message)
        end = DialogueEnd(turn=turn, turns=1, by="user")
        while turn.status != "failed" and turn.answer is not None:
            view.append(Message(role="user", content=turn.answer))
            reply = await self._user_reply(hosted, user, view)
            if reply is None:  # it failed: the conversation holds why
                end.turn = self._result(hosted)
                break
            if reply.usage is not None:
                end.tokens += reply.usage.prompt_tokens + reply.usage.completion_tokens
                end.cost_usd += reply.usage.cost_usd
            text = reply.text.strip()
            first = text.splitlines()[0].strip() if text else f"{GIVE_UP}: the user said nothing"
            if first.upper().startswith((GOAL_MET, GIVE_UP)):
                end.reason, end.goal_met = first, first.upper().startswith(GOAL_MET)
                break
            if end.turns >= req.max_turns:
                end.by, end.goal_met = "limit", False
                end.reason = f"max_turns {req.max_turns} reached without the user's verdict"
                break
            view.append(Message(role="assistant", content=text))
            turn = end.turn = await self._turn(hosted, text)
            end.turns += 1
        return end

    async def _user_reply(
        self, hosted: Hosted, user: SimulatedUser, view: list[Message]
    ) -> AgentReply | None:
        """The simulated user's model call on the dialogue as it sees it (the team's answers are
        its `user` messages); not stored in the conversation: the team sees only its turns."""
        turn = sum(1 for m in view if m.role == "assistant")
        return await self._ask(hosted, user.agent, view, turn, 0, f"simulated user {user.agent!r}")

    async def _ask(
        self, hosted: Hosted, agent: str, messages: list[Message], turn: int, depth: int, what: str
    ) -> AgentReply | None:
        """One model call of `agent` beside the stack (a critic's review, the simulated user's
        answer): no machine state goes with it, so the words come back and no tool it asks for
        runs; None when it failed (the conversation then holds the `failed` event)."""
        conv = hosted.conv
        req = StepRequest(
            conversation=conv.id,
            branch=conv.branch.name,
            seq=conv.state.length,
            agent=agent,
            turn=turn,
            depth=depth,
            messages=tuple(messages),
            overrides=hosted.overrides.get(agent, {}),
            episode=hosted.episode,
        )
        result = await self._guarded(hosted, what, self.agents(agent).step(req))
        return None if result is None else result.reply

    def _result(self, hosted: Hosted) -> TurnResult:
        state = hosted.conv.state
        return TurnResult(
            conversation=hosted.conv.id,
            name=hosted.conv.info.name,
            branch=hosted.conv.branch.name,
            status=state.status,
            answer=hosted.answer,
            error=f"{state.error.code}: {state.error.message}" if state.error else None,
            length=state.length,
            steps=state.steps,
        )

    # --- the interpreter -----------------------------------------------------------------------

    async def _drive(self, hosted: Hosted, commands: list[Command]) -> None:
        todo = list(commands)
        while todo:
            cmd = todo.pop(0)
            turn = None
            if self.policy is not None and isinstance(cmd, CallAgent):
                turn = self.policy.turn(self, hosted, cmd)
            todo = await (self.perform(hosted, cmd) if turn is None else turn.run()) + todo

    async def perform(self, hosted: Hosted, cmd: Command) -> list[Command]:
        """Carry out one command of the machine on a hosted branch; the commands it made due.
        The turn policy is not asked here (see `_drive`): a policy's own steps come this way."""
        conv = hosted.conv
        if isinstance(cmd, CallAgent):
            return await self.call_agent(hosted, cmd)
        if isinstance(cmd, Review):
            return await self._review(hosted, cmd)
        if isinstance(cmd, RunTools):
            treq = ToolsRequest(
                conversation=conv.id,
                branch=conv.branch.name,
                agent=cmd.agent,
                calls=cmd.calls,
                overrides=hosted.overrides.get(cmd.agent, {}),
                episode=hosted.episode,
            )
            results = await self._guarded(
                hosted, f"tools of {cmd.agent!r}", self.agents(cmd.agent).run_tools(treq)
            )
            return [] if results is None else await self._submit(hosted, *results)
        if isinstance(cmd, Reply):
            hosted.answer = cmd.text
            if self.observer is not None:
                self.observer.episode(conv.id, conv.branch.name)
            return []
        events = settle(cmd)
        if events is None:  # pragma: no cover - every command is handled above or settles
            raise TypeError(f"unknown command {cmd!r}")
        return await self._submit(hosted, *events)

    async def call_agent(self, hosted: Hosted, cmd: CallAgent) -> list[Command]:
        """Ask the top frame's agent for its reply (the variant's overrides, or a search child's)."""
        conv = hosted.conv
        agent = cmd.frame.agent
        req = StepRequest(
            conversation=conv.id,
            branch=conv.branch.name,
            seq=conv.state.length,
            agent=agent,
            turn=sum(1 for m in hosted.transcript.frames[-1] if m.role == "assistant"),
            depth=cmd.depth,
            messages=tuple(hosted.transcript.messages()),
            frame=hosted.transcript.frame_id(),
            overrides=hosted.overrides.get(agent, {}),
            episode=hosted.episode,
            state=conv.state,
        )
        result = await self._guarded(hosted, f"agent {agent!r}", self.agents(agent).step(req))
        if result is None:
            return []
        return await self._submit(hosted, result.reply, *result.results)

    async def _review(self, hosted: Hosted, cmd: Review) -> list[Command]:
        """A draft answer under review: the self-review prompt, or the critic agent's verdict on
        the task and the draft (a model call of its own, stored in the `critique` event)."""
        agent = cmd.frame.agent
        if cmd.critic is None:
            return await self._submit(hosted, Critique(agent=agent))
        drafts = [m for m in hosted.transcript.frames[-1] if m.role == "assistant"]
        request = prompt("critic_review").render(
            agent=agent, task=hosted.transcript.tasks[-1], answer=drafts[-1].content if drafts else ""
        )
        messages = [Message(role="user", content=request)]
        reply = await self._ask(hosted, cmd.critic, messages, 0, cmd.depth + 1, f"critic {cmd.critic!r}")
        if reply is None:
            return []
        critique = Critique(
            agent=agent, critic=cmd.critic, text=reply.text, model=reply.model, usage=reply.usage
        )
        return await self._submit(hosted, critique)

    async def fork(self, hosted: Hosted, name: str, overrides: dict[str, dict[str, Any]]) -> Hosted:
        """A new branch `name` of `hosted` at its current length, hosted apart (not in
        `self.hosted`), run with `overrides`."""
        conv = hosted.conv
        info = await asyncio.to_thread(
            self.log.fork, conv.id, conv.branch.name, conv.state.length, name, False
        )
        return hosted.fork(Conversation(self.log, conv.info, info, conv.state), overrides)

    async def adopt(self, hosted: Hosted, child: Hosted) -> None:
        """Continue `hosted` on `child`'s branch, checked out."""
        await asyncio.to_thread(self.log.checkout, hosted.conv.id, child.conv.branch.name)
        hosted.adopt(child)

    async def _guarded(self, hosted: Hosted, what: str, call: Awaitable[Any]) -> Any:
        """Await an agent; if it fails for good, or the conversation's deadline passes while it
        works, end the conversation with a `failed` event."""
        state = hosted.conv.state
        deadline = state.limits.deadline_s
        try:
            if deadline is None:
                return await call
            end = state.started_ts + deadline
            try:
                return await asyncio.wait_for(call, max(end - time.time(), 0.0))
            except TimeoutError:
                if time.time() < end:
                    raise  # a timeout of the agent's own, not the deadline
            msg = f"deadline of {deadline:g}s passed while waiting for {what}"
            await self._submit(hosted, Failed(code="deadline", message=msg))
        except Exception as e:  # a model that keeps failing, an actor dead for good, a bug in a tool
            log_failure(log, f"{what} failed in conversation {hosted.conv.id}", e)
            await self._submit(hosted, Failed(code="agent_error", message=f"{what}: {one_line(e)}"))
        return None

    async def _submit(self, hosted: Hosted, *events: Event) -> list[Command]:
        """Write-ahead: offer to the machine (what it refuses is not stored, and ends the
        conversation with a `failed` event), store (group commit), then adopt the new state."""
        conv = hosted.conv
        events, states, commands = advance(conv.state, events)
        if not events:
            return commands
        try:
            await self.writer.append(conv.id, conv.branch.name, events, expected=conv.state.length)
        except Conflict:
            self.release(conv.id)  # someone else wrote to this branch: rebuild from the store next time
            raise
        if hosted.record is not None:
            hosted.record += [
                event.model_copy(update={"seq": before.length})
                for before, event in zip(states, events, strict=False)
            ]
        for before, event, after in zip(states, events, states[1:], strict=False):
            hosted.transcript.update(before, event, after)
            if isinstance(event, AgentReply):
                if self.observer is not None:
                    self.observer.step(conv.id, conv.branch.name, before.length)
                if self.meter is not None:
                    self.meter.reply(event)
        state = states[-1]
        snapshot = conv.commit(state)
        if snapshot is not None:
            await self.writer.command(
                "HSET", self.log.keys.snapshots(conv.id, conv.branch.name), state.length, snapshot
            )
        return commands
