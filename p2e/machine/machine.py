"""The interaction-stack machine: pure functions from (state, event) to (state, commands).

- `apply(state, event)` folds one event in, or raises `EventRejected` if the event does not fit
  (a reply from an agent that is not on top, a result for no pending call, ...). The input state
  is never modified, so a rejected event leaves nothing behind.
- `pending(state)` derives what must happen next from the state alone, so an interpreter that
  restarts from the store knows exactly what is outstanding.
- `handle(state, event)` is `apply` plus the commands that the event made due.

Rules: a reply whose tool calls include `delegate(agent, task)` pushes a frame for the delegate
(only toward agents in the caller's team entry); the delegate's final reply (no tool calls) pops
it and is the result of the caller's call; the caller is then asked again, with the answer.
Ordinary tool calls of one reply run together first; delegations then run one after another.
An agent with a `Reflection` rule has its final answer reviewed before it pops: the frame waits
for a `Critique`, then asks its agent again, until the rounds are spent or a revision repeats
the draft.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from p2e.errors import EventRejected
from p2e.events import (
    AgentReply,
    Critique,
    Event,
    Failed,
    Finished,
    Started,
    ToolCall,
    ToolResult,
    UserMessage,
)
from p2e.machine.commands import CallAgent, Command, Fail, RejectCalls, Reply, Review, RunTools
from p2e.machine.state import Frame, Rejection, State, Violation

INITIAL = State()


def apply(state: State, event: Event) -> State:
    """Fold one event into the state; raise `EventRejected` if it does not fit."""
    seq = state.length
    if event.seq is not None and event.seq != seq:
        raise EventRejected(f"event carries seq {event.seq} but the branch is at {seq}", seq)
    if state.status == "failed":
        raise EventRejected(f"the conversation has failed ({state.error.code if state.error else '?'})", seq)
    if isinstance(event, Failed):
        if state.status == "new":
            raise EventRejected("a conversation must start with a `started` event", seq)
        err = Violation(code=event.code, message=event.message)
        return state.model_copy(
            update={"status": "failed", "error": err, "violation": None, "length": seq + 1}
        )
    if state.violation is not None:
        raise EventRejected(
            f"the conversation passed a limit ({state.violation.message}); only `failed` may follow", seq
        )
    try:
        new = _transition(state, event)
    except EventRejected as e:
        if e.seq is None:
            raise EventRejected(e.reason, seq) from None
        raise
    new = new.model_copy(update={"length": seq + 1})
    limits = new.limits
    top = new.top
    if (
        new.violation is None
        and new.status == "running"
        and top is not None
        and top.phase == "agent"
        and new.steps >= limits.max_steps
    ):  # the next step would pass the limit: fail instead of asking
        msg = f"step limit reached: {limits.max_steps} agent replies"
        new = new.model_copy(update={"violation": Violation(code="max_steps", message=msg)})
    if (
        limits.deadline_s is not None
        and new.violation is None
        and new.status == "running"
        and event.ts - new.started_ts > limits.deadline_s
    ):
        msg = f"deadline of {limits.deadline_s:g}s passed"
        new = new.model_copy(update={"violation": Violation(code="deadline", message=msg)})
    if isinstance(event, AgentReply | Critique) and event.usage is not None:
        new = _spend(new, event)
    return new


def _spend(state: State, reply: AgentReply | Critique) -> State:
    """Count a model call's tokens and cost; passing a budget is a violation like a step limit."""
    u = reply.usage
    assert u is not None
    tokens = state.tokens + u.prompt_tokens + u.completion_tokens
    cost = state.cost_usd + u.cost_usd
    update: dict[str, object] = {"tokens": tokens, "cost_usd": cost}
    limits = state.limits
    if state.violation is None and state.status == "running":
        if limits.max_tokens is not None and tokens > limits.max_tokens:
            msg = f"token budget passed: {tokens} > {limits.max_tokens}"
            update["violation"] = Violation(code="budget", message=msg)
        elif limits.max_cost_usd is not None and cost > limits.max_cost_usd:
            msg = f"cost budget passed: ${cost:.4f} > ${limits.max_cost_usd:g}"
            update["violation"] = Violation(code="budget", message=msg)
    return state.model_copy(update=update)


def pending(state: State) -> list[Command]:
    """What the interpreter must do next, derived from the state alone."""
    if state.violation is not None:
        return [Fail(code=state.violation.code, message=state.violation.message)]
    top = state.top
    if state.status != "running" or top is None:
        return []
    if top.phase == "agent":
        return [CallAgent(frame=top, depth=state.depth)]
    if top.phase == "review":
        rule = state.reflection[top.agent]
        return [Review(frame=top, depth=state.depth, critic=rule.critic)]
    if top.phase == "tools":
        waiting = set(top.waiting)
        refused = {r.call.id for r in top.rejections}
        calls = tuple(c for c in top.calls if c.id in waiting and c.id not in refused)
        rejections = tuple(r for r in top.rejections if r.call.id in waiting)
        out: list[Command] = []
        if calls:
            out.append(RunTools(agent=top.agent, calls=calls))
        if rejections:
            out.append(RejectCalls(agent=top.agent, rejections=rejections))
        return out
    return []


def handle(state: State, event: Event) -> tuple[State, list[Command]]:
    """Apply an event and return the commands it made due (not those already outstanding)."""
    new = apply(state, event)
    top = new.top
    if isinstance(event, ToolResult) and top is not None and top.phase == "tools" and new.violation is None:
        return new, []  # still waiting for the other results of the same batch
    commands = pending(new)
    if isinstance(event, AgentReply) and new.status == "idle":
        commands.insert(0, Reply(agent=event.agent, text=event.text))
    return new, commands


def handle_all(state: State, events: Sequence[Event]) -> tuple[list[State], list[Command]]:
    """Apply a batch: the states after each event (`states[0]` is the input) and the commands
    the batch made due. A batch that carries a reply (with the results of the tools it called,
    say) makes everything outstanding after it due, save what it answered itself; a batch of
    results alone makes due what its last event did (the calls it leaves unanswered were asked
    for already, and are not asked for twice)."""
    states = [state]
    commands: list[Command] = []
    for e in events:
        state, commands = handle(state, e)
        states.append(state)
    if len(events) > 1 and any(isinstance(e, AgentReply) for e in events[:-1]):
        replies = [c for c in commands if isinstance(c, Reply)]
        commands = replies + pending(state)
    return states, commands


def fold(events: Iterable[Event], state: State = INITIAL) -> State:
    """Replay events onto a state: the state of a branch is `fold(history)`."""
    for event in events:
        state = apply(state, event)
    return state


# --- transitions -------------------------------------------------------------------------------


def _transition(state: State, event: Event) -> State:
    if isinstance(event, Started):
        return _start(state, event)
    if state.status == "new":
        raise EventRejected("a conversation must start with a `started` event")
    if isinstance(event, UserMessage):
        return _user_message(state, event)
    if isinstance(event, AgentReply):
        return _reply(state, event)
    if isinstance(event, ToolResult):
        return _tool_result(state, event)
    if isinstance(event, Critique):
        return _critique(state, event)
    if isinstance(event, Finished):
        if state.status != "idle":
            raise EventRejected(f"only an idle conversation can finish; it is {state.status}")
        return state.model_copy(update={"status": "finished"})
    raise EventRejected(f"unknown event kind {type(event).__name__}")  # pragma: no cover


def _start(state: State, event: Started) -> State:
    if state.status != "new":
        raise EventRejected("the conversation has already started", state.length)
    if event.root not in event.team:
        raise EventRejected(
            f"root agent {event.root!r} is not in the team {sorted(event.team)}", state.length
        )
    for agent, targets in event.team.items():
        unknown = [t for t in targets if t not in event.team]
        if unknown:
            raise EventRejected(f"{agent!r} may delegate to unknown agents {unknown}", state.length)
    for agent, rule in event.reflection.items():
        if agent not in event.team:
            raise EventRejected(f"a reflection rule for {agent!r}, who is not in the team", state.length)
        if rule.critic is not None and (rule.critic not in event.team or rule.critic == agent):
            raise EventRejected(
                f"{agent!r}'s critic {rule.critic!r} must be another agent of the team", state.length
            )
    root = Frame(agent=event.root, start=state.length + 1, phase="user")
    return state.model_copy(
        update={
            "status": "idle",
            "root": event.root,
            "team": dict(event.team),
            "limits": event.limits,
            "reflection": dict(event.reflection),
            "started_ts": event.ts,
            "stack": (root,),
        }
    )


def _user_message(state: State, event: UserMessage) -> State:
    if state.status not in ("idle", "finished"):
        raise EventRejected(f"a user message is taken only while the root agent waits; it is {state.status}")
    root = state.stack[0].model_copy(update={"phase": "agent"})
    return state.model_copy(update={"status": "running", "stack": (root,)})


def _reply(state: State, event: AgentReply) -> State:
    top = state.top
    assert top is not None  # status running implies a stack
    if state.status != "running" or top.phase != "agent":
        raise EventRejected(f"no agent reply is due (the top frame of {top.agent!r} waits for {top.phase})")
    if event.agent != top.agent:
        raise EventRejected(f"a reply from {event.agent!r}, but {top.agent!r} is on top of the stack")
    state = state.model_copy(update={"steps": state.steps + 1})
    calls = event.tool_calls
    ids = [c.id for c in calls]
    if len(set(ids)) != len(ids):
        raise EventRejected(f"tool call ids repeat within one reply: {ids}")
    if len(calls) > state.limits.max_tool_calls_per_turn:
        msg = (
            f"{event.agent!r} made {len(calls)} tool calls in one reply; "
            f"the limit is {state.limits.max_tool_calls_per_turn}"
        )
        return state.model_copy(update={"violation": Violation(code="max_tool_calls", message=msg)})
    if not calls:
        return _draft(state, event.text)
    queue: list[ToolCall] = []
    rejections: list[Rejection] = []
    for call in calls:
        if call.is_delegation:
            reason = _delegation_problem(state, top.agent, call)
            if reason:
                rejections.append(Rejection(call=call, reason=reason))
            else:
                queue.append(call)
    waiting = tuple(c.id for c in calls if not c.is_delegation) + tuple(r.call.id for r in rejections)
    frame = top.model_copy(
        update={
            "phase": "tools" if waiting else "delegating",
            "calls": calls,
            "waiting": waiting,
            "rejections": tuple(rejections),
            "queue": tuple(queue),
        }
    )
    state = _replace_top(state, frame)
    return state if waiting else _next_delegation(state)


def _tool_result(state: State, event: ToolResult) -> State:
    top = state.top
    assert top is not None
    if top.phase != "tools" or event.call_id not in top.waiting:
        raise EventRejected(f"a tool result for call {event.call_id!r}, which no frame is waiting for")
    if event.agent != top.agent:
        raise EventRejected(f"a tool result for {event.agent!r}, but {top.agent!r} is on top of the stack")
    call = next(c for c in top.calls if c.id == event.call_id)
    if event.name != call.name:
        raise EventRejected(f"call {call.id!r} is to {call.name!r}, but the result names {event.name!r}")
    waiting = tuple(i for i in top.waiting if i != event.call_id)
    frame = top.model_copy(update={"waiting": waiting, "phase": "tools" if waiting else "delegating"})
    state = _replace_top(state, frame)
    return state if waiting else _next_delegation(state)


def _draft(state: State, text: str) -> State:
    """A reply without tool calls: the frame's answer, unless its agent's reflection rule wants
    it reviewed first (rounds left, and the text is not the previous draft repeated)."""
    top = state.top
    assert top is not None
    rule = state.reflection.get(top.agent)
    if rule is not None:
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        if top.reviews < rule.rounds and not (top.reviews and digest == top.draft):
            frame = top.model_copy(
                update={"phase": "review", "draft": digest, "calls": (), "waiting": (), "rejections": ()}
            )
            return _replace_top(state, frame)
    return _answer(state)


def _critique(state: State, event: Critique) -> State:
    top = state.top
    assert top is not None
    if state.status != "running" or top.phase != "review":
        raise EventRejected(f"no critique is due (the top frame of {top.agent!r} waits for {top.phase})")
    if event.agent != top.agent:
        raise EventRejected(f"a critique of {event.agent!r}, but {top.agent!r} is on top of the stack")
    critic = state.reflection[top.agent].critic
    if event.critic != critic:
        raise EventRejected(f"a critique by {event.critic!r}, but {top.agent!r}'s critic is {critic!r}")
    return _replace_top(state, top.model_copy(update={"phase": "agent", "reviews": top.reviews + 1}))


def _answer(state: State) -> State:
    """The top frame's agent answered without tool calls: pop it, or hand the answer to the user."""
    if state.depth == 1:
        root = state.stack[0].model_copy(
            update={
                "phase": "user",
                "calls": (),
                "waiting": (),
                "rejections": (),
                "queue": (),
                "reviews": 0,
                "draft": "",
            }
        )
        return state.model_copy(update={"status": "idle", "stack": (root,)})
    state = state.model_copy(update={"stack": state.stack[:-1], "pops": state.pops + 1})
    return _next_delegation(state)


def _next_delegation(state: State) -> State:
    """The top frame's tools are done: start its next delegation, or ask its agent again."""
    top = state.top
    assert top is not None
    if not top.queue:
        return _replace_top(state, top.model_copy(update={"phase": "agent"}))
    call, rest = top.queue[0], top.queue[1:]
    target = str(call.arguments["agent"])
    if state.depth >= state.limits.max_depth:
        path = [f.agent for f in state.stack] + [target]
        chain = " -> ".join(path)
        if target in path[:-1]:
            v = Violation(
                code="delegation_cycle",
                message=f"delegation cycle {chain} passed max_depth={state.limits.max_depth}",
            )
        else:
            v = Violation(
                code="max_depth", message=f"delegation {chain} passed max_depth={state.limits.max_depth}"
            )
        return state.model_copy(update={"violation": v})
    parent = top.model_copy(update={"phase": "delegating", "queue": rest})
    child = Frame(agent=target, start=state.length + 1, call_id=call.id, task=str(call.arguments["task"]))
    return state.model_copy(update={"stack": (*state.stack[:-1], parent, child), "pushes": state.pushes + 1})


def _delegation_problem(state: State, caller: str, call: ToolCall) -> str:
    args = call.arguments
    if not isinstance(args.get("agent"), str) or not isinstance(args.get("task"), str):
        return "delegate needs two string arguments: agent and task"
    allowed = state.team.get(caller, ())
    if args["agent"] not in allowed:
        if not allowed:
            return f"{caller} may not delegate to anyone"
        return f"{caller} may not delegate to {args['agent']!r}; it may delegate to: {', '.join(allowed)}"
    return ""


def _replace_top(state: State, frame: Frame) -> State:
    return state.model_copy(update={"stack": (*state.stack[:-1], frame)})


def trace(events: Iterable[Event], state: State = INITIAL) -> Iterable[tuple[Event, State]]:
    """Each event with the state it was applied to (for views: depth, frame, pending calls)."""
    for event in events:
        yield event, state
        state = apply(state, event)
