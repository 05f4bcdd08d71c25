"""Property tests of the conversation machine.

`runs()` generates *valid* histories by driving the machine itself: a random small team (random
delegation edges, cycles and self-loops included) under random limits, then, again and again, a
valid event for what `pending(state)` says is outstanding: a reply from the agent on top (text
only, ordinary tool calls, delegations to allowed, forbidden or unknown agents, malformed
delegations), the results of a batch in a random order, `Failed` for a `Fail`, a new user message
or `Finished` when idle. The tests then check the machine's promises on those histories: replay
(`fold`) reproduces every state, snapshots survive JSON, the stack matches an independent model
of pushes and pops, limits hold, and events that do not fit are refused without a trace.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2e.errors import EventRejected
from p2e.events import (
    DELEGATE,
    AgentReply,
    Event,
    Failed,
    Finished,
    Limits,
    Started,
    ToolCall,
    ToolResult,
    UserMessage,
    event_adapter,
)
from p2e.machine import (
    INITIAL,
    CallAgent,
    Fail,
    RejectCalls,
    Reply,
    RunTools,
    State,
    apply,
    fold,
    handle,
    pending,
)

AGENTS = ("ann", "bob", "cyd", "dee")
STRANGER = "zed"  # never in any team
TOOLS = ("search", "calc", "fetch")
WORDS = st.sampled_from(["", "ok", "done", "let me check", "über", "42"])

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
"""Sized so that the whole file runs in well under 20 seconds; raise max_examples to hunt."""


@dataclass(frozen=True)
class Run:
    events: tuple[Event, ...]
    states: tuple[State, ...]
    """states[i] is the state after events[:i]; states[0] is INITIAL."""

    @property
    def final(self) -> State:
        return self.states[-1]


# --- generating valid histories ----------------------------------------------------------------


@st.composite
def teams(draw: st.DrawFn) -> tuple[str, dict[str, tuple[str, ...]], Limits]:
    names = AGENTS[: draw(st.integers(2, 4))]
    team = {
        # Every agent but the last may delegate to someone; edges are random, loops included.
        a: tuple(
            draw(
                st.lists(
                    st.sampled_from(names), unique=True, min_size=int(a != names[-1]), max_size=len(names)
                )
            )
        )
        for a in names
    }
    root = draw(st.sampled_from(names))
    limits = Limits(
        max_depth=draw(st.sampled_from([4, 3, 2, 5, 8, 1])),
        max_steps=draw(st.sampled_from([16, 10, 24, 6, 3, 1])),
        max_tool_calls_per_turn=draw(st.sampled_from([16, 8, 4, 3, 2, 1])),
        deadline_s=draw(st.none() | st.integers(5, 80).map(float)),
    )
    return root, team, limits


def delegate_arguments(state: State, caller: str) -> st.SearchStrategy[dict[str, Any]]:
    allowed = state.team[caller]
    anyone = st.sampled_from([*sorted(state.team), STRANGER])
    options: list[st.SearchStrategy[dict[str, Any]]] = [
        st.builds(lambda a, t: {"agent": a, "task": t}, anyone, WORDS),
        st.sampled_from([{}, {"agent": caller}, {"task": "t"}, {"agent": 3, "task": "t"}, {"agent": None}]),
    ]
    if allowed:
        valid = st.builds(lambda a, t: {"agent": a, "task": t}, st.sampled_from(allowed), WORDS)
        options = [valid, valid, *options]  # mostly valid
    return st.one_of(options)


@st.composite
def agent_replies(draw: st.DrawFn, state: State, ts: float) -> AgentReply:
    top = state.top
    assert top is not None
    agent = top.agent
    text = draw(WORDS)
    shape = draw(st.sampled_from(["answer", "answer", "tools", "delegate", "delegate", "mixed"]))
    if shape == "answer":
        return AgentReply(agent=agent, text=text, ts=ts)
    n_tools = draw(st.integers(1, 3)) if shape in ("tools", "mixed") else 0
    n_delegations = draw(st.integers(1, 2)) if shape in ("delegate", "mixed") else 0
    kinds = draw(st.permutations(["tool"] * n_tools + ["delegate"] * n_delegations))
    calls: list[ToolCall] = []
    for i, kind in enumerate(kinds):
        # Ids are numbered per reply, so a delegate and its caller reuse the same ids.
        if kind == "tool":
            calls.append(ToolCall(id=f"c{i}", name=draw(st.sampled_from(TOOLS)), arguments={"q": i}))
        else:
            args = draw(delegate_arguments(state, agent))
            calls.append(ToolCall(id=f"c{i}", name=DELEGATE, arguments=args))
    return AgentReply(agent=agent, text=text, tool_calls=tuple(calls), ts=ts)


@st.composite
def next_events(draw: st.DrawFn, state: State, ts: float) -> Event | None:
    """A valid next event for `state`, chosen from what `pending(state)` asks for; None to stop."""
    commands = pending(state)
    if state.status == "failed":
        return None
    if state.status in ("idle", "finished"):
        assert commands == []
        if all(draw(st.booleans()) for _ in range(3)):
            return None  # the user is done with it
        if state.status == "idle" and draw(st.sampled_from([False, False, True])):
            return Finished(ts=ts)
        return UserMessage(text=draw(WORDS), ts=ts)
    assert commands, f"a running conversation with nothing to do: {state}"
    fails = [c for c in commands if isinstance(c, Fail)]
    if fails:
        assert len(commands) == 1
        return Failed(code=fails[0].code, message=fails[0].message, ts=ts)
    if all(draw(st.booleans()) for _ in range(6)):  # rarely, the interpreter gives up (a model error)
        return Failed(code="interpreter", message="the model timed out", ts=ts)
    first = commands[0]
    if isinstance(first, CallAgent):
        assert len(commands) == 1
        return draw(agent_replies(state, ts))
    waiting: list[tuple[str, ToolCall, bool]] = []
    for c in commands:
        if isinstance(c, RunTools):
            waiting += [(c.agent, call, False) for call in c.calls]
        elif isinstance(c, RejectCalls):
            waiting += [(c.agent, r.call, True) for r in c.rejections]
        else:  # pragma: no cover
            raise AssertionError(f"unexpected command {c}")
    agent, call, refused = draw(st.sampled_from(waiting))
    return ToolResult(
        agent=agent,
        call_id=call.id,
        name=call.name,
        output="refused" if refused else draw(WORDS),
        is_error=refused or draw(st.booleans()),
        ts=ts,
    )


@st.composite
def runs(draw: st.DrawFn, max_events: int = 60) -> Run:
    root, team, limits = draw(teams())
    ts = float(draw(st.integers(0, 1000)))
    events: list[Event] = [Started(root=root, team=team, limits=limits, ts=ts)]
    states: list[State] = [INITIAL, apply(INITIAL, events[0])]
    while len(events) < max_events:
        ts += draw(st.integers(0, 4))
        event = draw(next_events(states[-1], ts))
        if event is None:
            break
        events.append(event)
        states.append(apply(states[-1], event))
    return Run(tuple(events), tuple(states))


# --- an independent model of the stack ---------------------------------------------------------


def valid_delegations(
    team: dict[str, tuple[str, ...]], caller: str, calls: tuple[ToolCall, ...]
) -> list[ToolCall]:
    """The delegations of a reply that the rules allow, in the reply's order."""
    out = []
    for c in calls:
        if c.name != DELEGATE:
            continue
        agent, task = c.arguments.get("agent"), c.arguments.get("task")
        if isinstance(agent, str) and isinstance(task, str) and agent in team[caller]:
            out.append(c)
    return out


@dataclass
class ModelFrame:
    agent: str
    call_id: str | None
    queue: list[ToolCall]


class StackModel:
    """Pushes and pops as the rules describe them, kept apart from the machine's own stack."""

    def __init__(self) -> None:
        self.frames: list[ModelFrame] = []
        self.team: dict[str, tuple[str, ...]] = {}

    def step(self, old: State, new: State, event: Event) -> None:
        if isinstance(event, Started):
            self.team = dict(event.team)
            self.frames = [ModelFrame(event.root, None, [])]
        elif isinstance(event, UserMessage):
            assert len(self.frames) == 1
        elif isinstance(event, AgentReply) and not (new.violation and new.violation.code == "max_tool_calls"):
            # Taken (a reply over the tool-call limit is counted but changes nothing else).
            assert event.agent == self.frames[-1].agent
            calls = event.tool_calls
            if calls:
                self.frames[-1].queue = valid_delegations(self.team, event.agent, calls)
                ordinary = [c.id for c in calls if c.name != DELEGATE]
                refused = [c.id for c in calls if c.name == DELEGATE and c not in self.frames[-1].queue]
                expected = []
                if ordinary:
                    expected.append(("run", ordinary))
                if refused:
                    expected.append(("reject", refused))
                if new.violation is None and expected:
                    assert _ids(pending(new)) == expected
            elif len(self.frames) > 1:
                popped = self.frames.pop()
                assert popped.agent == event.agent, "a pop must remove the frame of the agent that answered"
                assert new.pops == old.pops + 1
        if new.pushes == old.pushes + 1:
            parent = self.frames[-1]
            assert parent.queue, "a push with no delegation left to start"
            call = parent.queue.pop(0)
            assert new.top is not None
            assert new.top.agent == call.arguments["agent"]
            assert new.top.call_id == call.id
            assert new.top.task == call.arguments["task"]
            self.frames.append(ModelFrame(new.top.agent, call.id, []))
        else:
            assert new.pushes == old.pushes
        if new.status in ("running", "idle") and not isinstance(event, Failed):
            assert [f.agent for f in new.stack] == [f.agent for f in self.frames]
            assert [f.call_id for f in new.stack] == [f.call_id for f in self.frames]
        due = pending(new)
        if due and isinstance(due[0], CallAgent):
            # An agent is asked again only once every delegation of its last reply has popped.
            assert self.frames[-1].queue == []
            assert due[0].frame.agent == self.frames[-1].agent


def _ids(commands: list[Any]) -> list[tuple[str, list[str]]]:
    out: list[tuple[str, list[str]]] = []
    for c in commands:
        if isinstance(c, RunTools):
            out.append(("run", [t.id for t in c.calls]))
        elif isinstance(c, RejectCalls):
            out.append(("reject", [r.call.id for r in c.rejections]))
    return out


# --- properties of valid histories -------------------------------------------------------------


@SETTINGS
@given(runs())
def test_invariants_hold_along_every_valid_history(run: Run) -> None:
    model = StackModel()
    for i, event in enumerate(run.events):
        old, new = run.states[i], run.states[i + 1]
        assert old.length == i and new.length == i + 1
        handled, commands = handle(old, event)
        assert handled == new
        model.step(old, new, event)
        if new.status in ("running", "idle"):
            assert new.depth >= 1
        if new.status == "idle":
            assert new.depth == 1 and new.stack[0].phase == "user"
        if new.status == "running":
            assert new.pushes - new.pops == new.depth - 1
            assert new.depth <= new.limits.max_depth
        assert new.pops <= new.pushes
        assert new.steps <= new.limits.max_steps
        if new.violation is not None:
            assert pending(new) == [Fail(code=new.violation.code, message=new.violation.message)]
        if isinstance(event, AgentReply) and new.status == "idle":
            assert commands[0] == Reply(agent=event.agent, text=event.text)
        # Snapshots: the state and the event survive their JSON forms.
        assert State.model_validate_json(new.model_dump_json()) == new
        assert event_adapter.validate_json(event.model_dump_json()) == event


@SETTINGS
@given(runs())
def test_replaying_any_prefix_reproduces_the_state(run: Run) -> None:
    assert fold(run.events) == run.final
    stored = [e.model_copy(update={"seq": i}) for i, e in enumerate(run.events)]
    assert fold(stored) == run.final
    for n in range(len(run.events) + 1):
        assert fold(run.events[:n]) == run.states[n]
        assert fold(stored[:n]) == run.states[n]
        # What was outstanding is found again after a restart.
        assert pending(fold(stored[:n])) == pending(run.states[n])


@SETTINGS
@given(runs(), st.data())
def test_a_fork_folds_to_its_parent_state_and_can_go_on(run: Run, data: st.DataObject) -> None:
    at = data.draw(st.integers(1, len(run.events)), label="fork at")
    fork = fold(run.events[:at])
    assert fork == run.states[at]
    # Continuing the fork with the parent's own next events retraces the parent.
    assert fold(run.events[at:], fork) == run.final
    # A fork can also diverge: any valid continuation is accepted from the fork's state.
    ts = run.events[at - 1].ts + 1
    nxt = data.draw(next_events(fork, ts), label="diverging event")
    if nxt is not None:
        diverged = apply(fork, nxt)
        assert diverged.length == at + 1
        assert fold([*run.events[:at], nxt]) == diverged
    assert fork == run.states[at]  # the parent's state object is untouched


@SETTINGS
@given(runs())
def test_every_history_ends_stopped_or_with_a_clear_next_step(run: Run) -> None:
    final = run.final
    commands = pending(final)
    if final.status == "running":
        assert len(commands) >= 1  # never a hang: something is always due
        assert all(isinstance(c, CallAgent | RunTools | RejectCalls | Fail) for c in commands)
    else:
        assert commands == []
    if final.status == "failed":
        assert final.error is not None and final.violation is None


# --- events that do not fit --------------------------------------------------------------------


def _any_event(state: State, ts: float) -> st.SearchStrategy[Event]:
    agent = state.top.agent if state.top else "ann"
    return st.sampled_from(
        [
            Started(root="ann", team={"ann": ()}, ts=ts),
            UserMessage(text="hi", ts=ts),
            AgentReply(agent=agent, text="hi", ts=ts),
            ToolResult(agent=agent, call_id="c0", name="search", output="", ts=ts),
            Finished(ts=ts),
            Failed(code="x", message="y", ts=ts),
        ]
    )


@st.composite
def bad_events(draw: st.DrawFn, state: State, ts: float) -> Event:
    """An event that does not fit `state`, whatever the state is."""
    options: list[st.SearchStrategy[Event]] = []
    anything = _any_event(state, ts)
    offset = st.integers(-3, 3).filter(lambda d: d != 0 and state.length + d >= 0)
    options.append(st.builds(lambda e, d: e.model_copy(update={"seq": state.length + d}), anything, offset))
    if state.status == "new":
        options += [
            anything.filter(lambda e: not isinstance(e, Started)),
            st.just(Started(root="ghost", team={"ann": ()}, ts=ts)),
            st.just(Started(root="ann", team={"ann": ("ghost",)}, ts=ts)),
        ]
        return draw(st.one_of(options))
    options.append(st.just(Started(root=state.root, team=state.team, ts=ts)))
    if state.status == "failed":
        options.append(anything)
        return draw(st.one_of(options))
    outstanding = pending(state)
    if outstanding and isinstance(outstanding[0], Fail):
        options.append(anything.filter(lambda e: not isinstance(e, Failed)))
        return draw(st.one_of(options))
    top = state.top
    assert top is not None
    others = [a for a in [*state.team, STRANGER] if a != top.agent]
    wrong_agent = st.sampled_from(others)
    if state.status in ("idle", "finished"):
        options += [
            st.builds(lambda a, t: AgentReply(agent=a, text=t, ts=ts), st.sampled_from([*state.team]), WORDS),
            st.builds(
                lambda a, i: ToolResult(agent=a, call_id=i, name="search", output="", ts=ts),
                st.sampled_from([*state.team]),
                st.sampled_from(["c0", "c1", "c2"]),
            ),
        ]
        if state.status == "finished":
            options.append(st.just(Finished(ts=ts)))
        return draw(st.one_of(options))
    # running, and an agent reply or some tool results are due
    options += [
        st.just(UserMessage(text="are you there?", ts=ts)),
        st.just(Finished(ts=ts)),
        st.builds(lambda a: AgentReply(agent=a, text="me", ts=ts), wrong_agent),
        st.builds(
            lambda i: ToolResult(agent=top.agent, call_id=i, name="search", output="", ts=ts),
            st.sampled_from(["c0", "c1", "c2", "c3", "c4", "nope"]).filter(lambda i: i not in top.waiting),
        ),
    ]
    if top.phase == "agent":
        # Any tool result is out of place, and repeated call ids are refused.
        options += [
            st.builds(
                lambda i, n: ToolResult(agent=top.agent, call_id=i, name=n, output="", ts=ts),
                st.sampled_from(["c0", "c1", *top.waiting]),
                st.sampled_from([*TOOLS, DELEGATE]),
            ),
            st.just(
                AgentReply(
                    agent=top.agent,
                    tool_calls=(ToolCall(id="c0", name="search"), ToolCall(id="c0", name="calc")),
                    ts=ts,
                )
            ),
        ]
    else:
        assert top.phase == "tools" and top.waiting
        by_id = {c.id: c for c in top.calls}
        waiting = st.sampled_from(top.waiting)
        options += [
            st.just(AgentReply(agent=top.agent, text="too early", ts=ts)),
            st.builds(
                lambda i, n: ToolResult(agent=top.agent, call_id=i, name=n, output="", ts=ts),
                waiting,
                st.sampled_from([*TOOLS, DELEGATE, "other"]),
            ).filter(lambda e: e.name != by_id[e.call_id].name),
            st.builds(
                lambda i, a: ToolResult(agent=a, call_id=i, name=by_id[i].name, output="", ts=ts),
                waiting,
                wrong_agent,
            ),
        ]
        answered = [c.id for c in top.calls if c.id not in top.waiting]
        if answered:  # a duplicate result, or a result for a queued delegation
            options.append(
                st.builds(
                    lambda i: ToolResult(agent=top.agent, call_id=i, name=by_id[i].name, output="", ts=ts),
                    st.sampled_from(answered),
                )
            )
    return draw(st.one_of(options))


@SETTINGS
@given(runs(), st.data())
def test_events_that_do_not_fit_are_rejected_and_leave_no_trace(run: Run, data: st.DataObject) -> None:
    at = data.draw(st.integers(0, len(run.events)), label="at")
    state = run.states[at]
    snapshot = state.model_dump_json()
    ts = run.events[at - 1].ts if at else 0.0
    for _ in range(3):
        bad = data.draw(bad_events(state, ts), label="bad event")
        try:
            apply(state, bad)
        except EventRejected as e:
            assert e.reason
        else:
            raise AssertionError(f"{bad!r} was accepted in {state!r}")
        try:
            handle(state, bad)
        except EventRejected:
            pass
        else:
            raise AssertionError(f"handle accepted {bad!r}")
        assert state == run.states[at]
        assert state.model_dump_json() == snapshot
    # The untouched state still takes the history's own next event.
    if at < len(run.events):
        assert apply(state, run.events[at]) == run.states[at + 1]


@settings(SETTINGS, max_examples=60)
@given(teams(), st.data())
def test_random_events_either_fit_or_leave_the_state_unchanged(
    team: tuple[str, dict[str, tuple[str, ...]], Limits], data: st.DataObject
) -> None:
    """Blind fuzzing: events built with no regard to the state are taken or refused, nothing else
    (no other exception), and a refusal never changes the state."""
    root, members, limits = team
    state = apply(INITIAL, Started(root=root, team=members, limits=limits, ts=0.0))
    names = st.sampled_from([*members, STRANGER])
    ids = st.sampled_from(["c0", "c1", "c2"])
    calls = st.builds(
        ToolCall,
        id=ids,
        name=st.sampled_from([*TOOLS, DELEGATE]),
        arguments=st.fixed_dictionaries({}, optional={"agent": names, "task": WORDS}),
    )
    events = st.one_of(
        st.builds(UserMessage, text=WORDS, ts=st.just(1.0)),
        st.builds(
            AgentReply,
            agent=names,
            text=WORDS,
            tool_calls=st.lists(calls, max_size=3).map(tuple),
            ts=st.just(1.0),
        ),
        st.builds(
            ToolResult,
            agent=names,
            call_id=ids,
            name=st.sampled_from([*TOOLS, DELEGATE]),
            output=WORDS,
            ts=st.just(1.0),
        ),
        st.builds(Finished, ts=st.just(1.0)),
    )
    history: list[Event] = []
    for _ in range(25):
        event = data.draw(events)
        try:
            new = apply(state, event)
        except EventRejected:
            continue
        history.append(event)
        state = new
        assert state.pushes - state.pops == state.depth - 1
        assert state.steps <= limits.max_steps
        if state.violation is not None or state.status == "failed":
            break
    assert fold(history, apply(INITIAL, Started(root=root, team=members, limits=limits, ts=0.0))) == state
