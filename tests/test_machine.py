"""Unit tests of the conversation machine (p2e.machine): the cases a user checks by hand.

Each scenario is driven through `handle`, the way an interpreter drives it, by `Script`, which
also checks at every step that the state rebuilt from the events (`fold`, with the seqs a store
assigns) is the same state and has the same outstanding work (`pending`), so an interpreter that
restarts from the store picks up exactly where the last one stopped.
"""

from __future__ import annotations

from typing import Any

import pytest

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
    Usage,
    UserMessage,
)
from p2e.machine import (
    INITIAL,
    CallAgent,
    Command,
    Fail,
    Frame,
    RejectCalls,
    Reply,
    RunTools,
    State,
    apply,
    fold,
    handle,
    pending,
)

# --- helpers -----------------------------------------------------------------------------------


def tool(call_id: str, name: str = "search", **arguments: Any) -> ToolCall:
    return ToolCall(id=call_id, name=name, arguments=arguments)


def delegate(call_id: str, agent: str, task: str = "do it") -> ToolCall:
    return ToolCall(id=call_id, name=DELEGATE, arguments={"agent": agent, "task": task})


def reply(agent: str, text: str = "", *calls: ToolCall, ts: float = 0.0) -> AgentReply:
    return AgentReply(agent=agent, text=text, tool_calls=calls, ts=ts)


def result(
    agent: str, call: ToolCall, output: str = "ok", *, is_error: bool = False, ts: float = 0.0
) -> ToolResult:
    return ToolResult(agent=agent, call_id=call.id, name=call.name, output=output, is_error=is_error, ts=ts)


def user(text: str = "hello", ts: float = 0.0) -> UserMessage:
    return UserMessage(text=text, ts=ts)


def describe(commands: list[Command]) -> list[tuple[Any, ...]]:
    """A compact, exact picture of a command list (call ids in order, not whole frames)."""
    out: list[tuple[Any, ...]] = []
    for c in commands:
        if isinstance(c, CallAgent):
            out.append(("call", c.frame.agent, c.depth))
        elif isinstance(c, RunTools):
            out.append(("run", c.agent, tuple(t.id for t in c.calls)))
        elif isinstance(c, RejectCalls):
            out.append(("reject", c.agent, tuple(r.call.id for r in c.rejections)))
        elif isinstance(c, Reply):
            out.append(("reply", c.agent, c.text))
        elif isinstance(c, Fail):
            out.append(("fail", c.code))
        else:  # pragma: no cover
            raise AssertionError(c)
    return out


def stack_of(state: State) -> list[tuple[str, str]]:
    return [(f.agent, f.phase) for f in state.stack]


class Script:
    """Drives the machine with `handle` and keeps the history, as an interpreter with a store would."""

    def __init__(
        self, root: str, team: dict[str, tuple[str, ...]], limits: Limits | None = None, ts: float = 0.0
    ):
        self.state: State = INITIAL
        self.events: list[Event] = []
        self.send(Started(root=root, team=team, limits=limits or Limits(), ts=ts))

    def send(self, event: Event) -> list[Command]:
        before = self.state
        new, commands = handle(before, event)
        assert apply(before, event) == new  # handle is apply plus commands
        self.events.append(event)
        self.state = new
        self._check_restart(event, commands)
        return commands

    def _check_restart(self, event: Event, commands: list[Command]) -> None:
        # What the store gives back: the same events, each carrying its position as seq.
        stored = [e.model_copy(update={"seq": i}) for i, e in enumerate(self.events)]
        rebuilt = fold(stored)
        assert rebuilt == self.state
        assert fold(self.events) == self.state
        assert State.model_validate_json(rebuilt.model_dump_json()) == self.state
        outstanding = pending(rebuilt)
        assert outstanding == pending(self.state)
        due = [c for c in commands if not isinstance(c, Reply)]
        if due:
            # Everything handle asked for is exactly what a restarted interpreter finds outstanding.
            assert due == outstanding
        elif isinstance(event, ToolResult) and self.state.top is not None and self.state.top.phase == "tools":
            # A result in the middle of a batch makes nothing new due; the rest of the batch is
            # still outstanding after a restart.
            assert outstanding and all(isinstance(c, RunTools | RejectCalls) for c in outstanding)
        else:
            assert outstanding == []

    def rejects(self, event: Event, match: str | None = None) -> EventRejected:
        before = self.state
        snapshot = before.model_dump()
        with pytest.raises(EventRejected, match=match) as info:
            apply(before, event)
        with pytest.raises(EventRejected):
            handle(before, event)
        assert self.state == before
        assert before.model_dump() == snapshot
        return info.value


# --- delegation --------------------------------------------------------------------------------


def test_two_levels_of_delegation_with_tools_at_each_level() -> None:
    team = {"planner": ("researcher",), "researcher": ("searcher",), "searcher": ()}
    s = Script("planner", team)
    assert s.state.status == "idle"
    assert stack_of(s.state) == [("planner", "user")]

    assert describe(s.send(user("plan a trip"))) == [("call", "planner", 1)]
    assert s.state.status == "running"

    clock = tool("p1", "clock")
    to_researcher = delegate("p2", "researcher", "find flights")
    assert describe(s.send(reply("planner", "let me see", clock, to_researcher))) == [
        ("run", "planner", ("p1",))
    ]
    assert stack_of(s.state) == [("planner", "tools")]
    assert s.state.top is not None and s.state.top.queue == (to_researcher,)

    commands = s.send(result("planner", clock, "noon"))
    assert commands == [
        CallAgent(frame=Frame(agent="researcher", start=4, call_id="p2", task="find flights"), depth=2)
    ]
    assert stack_of(s.state) == [("planner", "delegating"), ("researcher", "agent")]
    assert (s.state.pushes, s.state.pops) == (1, 0)

    search = tool("r1", "search", q="flights")
    to_searcher = delegate("r2", "searcher", "fetch prices")
    assert describe(s.send(reply("researcher", "", search, to_searcher))) == [("run", "researcher", ("r1",))]
    assert stack_of(s.state) == [("planner", "delegating"), ("researcher", "tools")]

    commands = s.send(result("researcher", search, "3 flights"))
    assert commands == [
        CallAgent(frame=Frame(agent="searcher", start=6, call_id="r2", task="fetch prices"), depth=3)
    ]
    assert stack_of(s.state) == [
        ("planner", "delegating"),
        ("researcher", "delegating"),
        ("searcher", "agent"),
    ]

    fetch = tool("s1", "fetch", url="https://example.org")
    assert describe(s.send(reply("searcher", "", fetch))) == [("run", "searcher", ("s1",))]
    assert describe(s.send(result("searcher", fetch, "$300"))) == [("call", "searcher", 3)]
    assert stack_of(s.state) == [
        ("planner", "delegating"),
        ("researcher", "delegating"),
        ("searcher", "agent"),
    ]

    # The searcher answers: its frame pops and the researcher is asked again, with the answer.
    assert describe(s.send(reply("searcher", "cheapest is $300"))) == [("call", "researcher", 2)]
    assert stack_of(s.state) == [("planner", "delegating"), ("researcher", "agent")]
    assert (s.state.pushes, s.state.pops) == (2, 1)

    assert describe(s.send(reply("researcher", "book the $300 one"))) == [("call", "planner", 1)]
    assert stack_of(s.state) == [("planner", "agent")]
    assert (s.state.pushes, s.state.pops) == (2, 2)

    commands = s.send(reply("planner", "Fly at noon for $300."))
    assert commands == [Reply(agent="planner", text="Fly at noon for $300.")]
    assert s.state.status == "idle"
    assert stack_of(s.state) == [("planner", "user")]
    assert s.state.steps == 6
    assert len(s.events) == 11 == s.state.length


def test_tools_run_first_then_delegations_in_order() -> None:
    team = {"lead": ("writer", "critic"), "writer": (), "critic": ()}
    s = Script("lead", team)
    s.send(user())
    t1, t2, t3 = tool("t1", "search"), tool("t2", "calc"), tool("t3", "search")
    # The delegations are listed critic first: they run in the reply's order, not the team's.
    d1, d2 = delegate("d1", "critic", "review"), delegate("d2", "writer", "draft")
    commands = s.send(reply("lead", "", t1, d1, t2, d2, t3))
    assert commands == [RunTools(agent="lead", calls=(t1, t2, t3))]
    assert s.state.top is not None and s.state.top.queue == (d1, d2)

    # Results come back in any order; nothing is pushed until all of them are in.
    assert s.send(result("lead", t3)) == []
    assert s.send(result("lead", t1)) == []
    assert stack_of(s.state) == [("lead", "tools")]
    assert describe(pending(s.state)) == [("run", "lead", ("t2",))]
    assert s.state.pushes == 0

    assert describe(s.send(result("lead", t2))) == [("call", "critic", 2)]
    assert s.state.top is not None and s.state.top.call_id == "d1"
    assert stack_of(s.state) == [("lead", "delegating"), ("critic", "agent")]

    # The critic's answer pops its frame; the writer is pushed next, the lead is not asked yet.
    assert describe(s.send(reply("critic", "fine"))) == [("call", "writer", 2)]
    assert s.state.top is not None and s.state.top.call_id == "d2"
    assert stack_of(s.state) == [("lead", "delegating"), ("writer", "agent")]

    assert describe(s.send(reply("writer", "a draft"))) == [("call", "lead", 1)]
    assert stack_of(s.state) == [("lead", "agent")]
    assert (s.state.pushes, s.state.pops) == (2, 2)

    assert describe(s.send(reply("lead", "done"))) == [("reply", "lead", "done")]


def test_delegations_only_run_one_at_a_time_even_without_tools() -> None:
    s = Script("lead", {"lead": ("a", "b"), "a": (), "b": ()})
    s.send(user())
    assert describe(s.send(reply("lead", "", delegate("1", "a"), delegate("2", "b")))) == [("call", "a", 2)]
    assert describe(s.send(reply("a", "A"))) == [("call", "b", 2)]
    assert describe(s.send(reply("b", "B"))) == [("call", "lead", 1)]


def test_the_same_call_ids_in_parent_and_child_do_not_mix() -> None:
    s = Script("lead", {"lead": ("a",), "a": ()})
    s.send(user())
    s.send(reply("lead", "", delegate("c1", "a")))
    child_call = tool("c1", "search")  # the child reuses the id of the parent's delegate call
    assert describe(s.send(reply("a", "", child_call))) == [("run", "a", ("c1",))]
    s.rejects(result("lead", child_call), "'lead', but 'a' is on top")
    assert describe(s.send(result("a", child_call))) == [("call", "a", 2)]
    assert describe(s.send(reply("a", "answer"))) == [("call", "lead", 1)]


# --- refused delegations -----------------------------------------------------------------------


def test_refused_delegations_become_error_results_and_the_caller_continues() -> None:
    team = {"lead": ("helper",), "helper": (), "outsider": ()}
    s = Script("lead", team)
    s.send(user())
    not_in_team = delegate("x1", "outsider")
    unknown = delegate("x2", "ghost")
    no_task = ToolCall(id="x3", name=DELEGATE, arguments={"agent": "helper"})
    no_args = ToolCall(id="x4", name=DELEGATE)
    bad_type = ToolCall(id="x5", name=DELEGATE, arguments={"agent": 7, "task": "t"})
    search = tool("t1")
    commands = s.send(reply("lead", "", not_in_team, search, unknown, no_task, no_args, bad_type))
    assert describe(commands) == [
        ("run", "lead", ("t1",)),
        ("reject", "lead", ("x1", "x2", "x3", "x4", "x5")),
    ]
    rejected = commands[1]
    assert isinstance(rejected, RejectCalls)
    reasons = {r.call.id: r.reason for r in rejected.rejections}
    assert reasons["x1"] == "lead may not delegate to 'outsider'; it may delegate to: helper"
    assert reasons["x2"] == "lead may not delegate to 'ghost'; it may delegate to: helper"
    for call_id in ("x3", "x4", "x5"):
        assert reasons[call_id] == "delegate needs two string arguments: agent and task"
    assert [r.call for r in rejected.rejections] == [not_in_team, unknown, no_task, no_args, bad_type]
    assert s.state.pushes == 0

    # The error results come back (as `delegate` results) with the ordinary one, in any order.
    for call in (no_args, unknown, search, bad_type, not_in_team):
        assert s.send(result("lead", call, "refused", is_error=call.is_delegation)) == []
    assert describe(s.send(result("lead", no_task, "refused", is_error=True))) == [("call", "lead", 1)]
    assert stack_of(s.state) == [("lead", "agent")]

    # The caller re-plans with the errors: it delegates properly this time.
    assert describe(s.send(reply("lead", "", delegate("y1", "helper")))) == [("call", "helper", 2)]
    assert describe(s.send(reply("helper", "helped"))) == [("call", "lead", 1)]
    assert describe(s.send(reply("lead", "all done"))) == [("reply", "lead", "all done")]
    assert s.state.status == "idle"


def test_an_agent_without_delegates_is_told_so() -> None:
    s = Script("lead", {"lead": ("solo",), "solo": ()})
    s.send(user())
    s.send(reply("lead", "", delegate("1", "solo")))
    commands = s.send(reply("solo", "", delegate("2", "lead")))
    assert len(commands) == 1 and isinstance(commands[0], RejectCalls)
    assert commands[0].agent == "solo"
    assert commands[0].rejections[0].reason == "solo may not delegate to anyone"
    assert stack_of(s.state) == [("lead", "delegating"), ("solo", "tools")]
    assert describe(s.send(result("solo", delegate("2", "lead"), "refused", is_error=True))) == [
        ("call", "solo", 2)
    ]


def test_a_refused_and_a_valid_delegation_in_one_reply() -> None:
    s = Script("lead", {"lead": ("a",), "a": (), "b": ()})
    s.send(user())
    bad, good = delegate("1", "b"), delegate("2", "a")
    assert describe(s.send(reply("lead", "", bad, good))) == [("reject", "lead", ("1",))]
    assert s.state.pushes == 0  # the refusal's result is recorded before the valid one starts
    assert describe(s.send(result("lead", bad, "refused", is_error=True))) == [("call", "a", 2)]
    assert describe(s.send(reply("a", "A"))) == [("call", "lead", 1)]


# --- limits ------------------------------------------------------------------------------------


def assert_failed_for_good(s: Script, code: str) -> None:
    """After a Fail command: only `Failed` is accepted, then the conversation is over."""
    assert s.state.status == "running"
    for event in (
        user(),
        reply(s.state.top.agent if s.state.top else "x", "late"),
        Finished(),
        Started(root="x", team={"x": ()}),
    ):
        s.rejects(event)
    fail = pending(s.state)
    assert len(fail) == 1 and isinstance(fail[0], Fail) and fail[0].code == code
    assert s.send(Failed(code=fail[0].code, message=fail[0].message)) == []
    assert s.state.status == "failed"
    assert s.state.error is not None and s.state.error.code == code
    assert s.state.violation is None
    assert pending(s.state) == []
    for event in (
        user(),
        reply("lead", "late"),
        Failed(code="again", message="again"),
        Finished(),
        Started(root="lead", team={"lead": ()}),
    ):
        s.rejects(event, "has failed")


def test_max_steps() -> None:
    s = Script("lead", {"lead": ()}, Limits(max_steps=3))
    s.send(user())
    for i in range(2):
        call = tool(f"t{i}")
        assert describe(s.send(reply("lead", "", call))) == [("run", "lead", (f"t{i}",))]
        assert describe(s.send(result("lead", call))) == [("call", "lead", 1)]
    last = tool("t2")
    assert describe(s.send(reply("lead", "", last))) == [("run", "lead", ("t2",))]
    assert s.state.steps == 3
    commands = s.send(result("lead", last))
    assert commands == [Fail(code="max_steps", message="step limit reached: 3 agent replies")]
    s.rejects(reply("lead", "one more"), "step limit reached")
    assert_failed_for_good(s, "max_steps")


def test_max_steps_reached_by_a_delegate_answer() -> None:
    s = Script("lead", {"lead": ("a",), "a": ()}, Limits(max_steps=2))
    s.send(user())
    s.send(reply("lead", "", delegate("1", "a")))
    # The pop is taken (it is the second step), but the lead may not be asked a third time.
    assert describe(s.send(reply("a", "answer"))) == [("fail", "max_steps")]
    assert (s.state.pushes, s.state.pops) == (1, 1)
    assert_failed_for_good(s, "max_steps")


def test_max_steps_sets_a_violation_like_the_other_limits() -> None:
    s = Script("lead", {"lead": ()}, Limits(max_steps=1))
    s.send(user())
    assert describe(s.send(reply("lead", "", tool("t")))) == [("run", "lead", ("t",))]
    assert describe(s.send(result("lead", tool("t")))) == [("fail", "max_steps")]
    assert s.state.violation is not None and s.state.violation.code == "max_steps"


def test_max_depth() -> None:
    team = {"lead": ("a",), "a": ("b",), "b": ()}
    s = Script("lead", team, Limits(max_depth=2))
    s.send(user())
    assert describe(s.send(reply("lead", "", delegate("1", "a")))) == [("call", "a", 2)]
    commands = s.send(reply("a", "", delegate("2", "b")))
    assert commands == [Fail(code="max_depth", message="delegation lead -> a -> b passed max_depth=2")]
    assert s.state.violation is not None and s.state.violation.code == "max_depth"
    assert s.state.depth == 2 and s.state.pushes == 1
    assert_failed_for_good(s, "max_depth")


def test_max_depth_one_forbids_any_delegation() -> None:
    s = Script("lead", {"lead": ("a",), "a": ()}, Limits(max_depth=1))
    s.send(user())
    assert describe(s.send(reply("lead", "", tool("t"), delegate("1", "a")))) == [("run", "lead", ("t",))]
    assert describe(s.send(result("lead", tool("t")))) == [("fail", "max_depth")]
    assert_failed_for_good(s, "max_depth")


def test_max_tool_calls_per_turn() -> None:
    s = Script("lead", {"lead": ("a",), "a": ()}, Limits(max_tool_calls_per_turn=2))
    s.send(user())
    # Exactly at the limit is fine (a delegation counts as a tool call).
    assert describe(s.send(reply("lead", "", tool("1"), delegate("2", "a")))) == [("run", "lead", ("1",))]
    s.send(result("lead", tool("1")))
    commands = s.send(reply("a", "", tool("1"), tool("2"), tool("3")))
    assert commands == [
        Fail(code="max_tool_calls", message="'a' made 3 tool calls in one reply; the limit is 2")
    ]
    assert s.state.steps == 2
    assert_failed_for_good(s, "max_tool_calls")


def test_deadline_from_event_timestamps() -> None:
    s = Script("lead", {"lead": ()}, Limits(deadline_s=10), ts=100.0)
    s.send(user(ts=101.0))
    call = tool("t")
    s.send(reply("lead", "", call, ts=110.0))  # exactly at the deadline: still in time
    assert s.state.violation is None
    commands = s.send(result("lead", call, ts=110.5))
    assert commands == [Fail(code="deadline", message="deadline of 10s passed")]
    assert_failed_for_good(s, "deadline")


def test_deadline_passed_in_the_middle_of_a_batch() -> None:
    s = Script("lead", {"lead": ()}, Limits(deadline_s=5), ts=0.0)
    s.send(user(ts=1.0))
    a, b = tool("a"), tool("b")
    s.send(reply("lead", "", a, b, ts=2.0))
    assert describe(s.send(result("lead", a, ts=6.0))) == [("fail", "deadline")]
    s.rejects(result("lead", b, ts=6.0), "passed a limit")
    assert_failed_for_good(s, "deadline")


def test_deadline_counts_from_the_start_across_user_messages() -> None:
    s = Script("lead", {"lead": ()}, Limits(deadline_s=5), ts=0.0)
    s.send(user(ts=1.0))
    s.send(reply("lead", "hi", ts=2.0))
    assert s.state.status == "idle"
    assert describe(s.send(user(ts=9.0))) == [("fail", "deadline")]
    assert_failed_for_good(s, "deadline")


def spend(agent: str, tokens: int, cost: float, *calls: ToolCall) -> AgentReply:
    return AgentReply(
        agent=agent, tool_calls=calls, usage=Usage(prompt_tokens=tokens, completion_tokens=0, cost_usd=cost)
    )


def test_token_budget_ends_the_conversation() -> None:
    s = Script("lead", {"lead": ()}, Limits(max_tokens=100))
    s.send(user())
    call = tool("t")
    s.send(spend("lead", 60, 0.0, call))
    assert (s.state.tokens, s.state.violation) == (60, None)
    assert describe(s.send(result("lead", call))) == [("call", "lead", 1)]
    commands = s.send(spend("lead", 41, 0.0, tool("u")))
    assert commands == [Fail(code="budget", message="token budget passed: 101 > 100")]
    assert_failed_for_good(s, "budget")


def test_cost_budget_counts_every_agent_of_the_conversation() -> None:
    s = Script("lead", {"lead": ("helper",), "helper": ()}, Limits(max_cost_usd=0.01))
    s.send(user())
    s.send(spend("lead", 10, 0.006, delegate("d", "helper")))
    commands = s.send(spend("helper", 10, 0.005, tool("x")))
    assert s.state.cost_usd == pytest.approx(0.011)
    assert commands == [Fail(code="budget", message="cost budget passed: $0.0110 > $0.01")]


def test_a_final_answer_over_budget_still_stands() -> None:
    s = Script("lead", {"lead": ()}, Limits(max_tokens=10))
    s.send(user())
    assert describe(s.send(spend("lead", 50, 0.0))) == [("reply", "lead", "")]
    assert s.state.status == "idle" and s.state.violation is None and s.state.tokens == 50


def test_a_delegation_cycle_beyond_max_depth() -> None:
    s = Script("A", {"A": ("B",), "B": ("A",)}, Limits(max_depth=4))
    s.send(user())
    expected_depth = 1
    for i, (agent, target) in enumerate([("A", "B"), ("B", "A"), ("A", "B")]):
        expected_depth += 1
        assert describe(s.send(reply(agent, "", delegate(str(i), target)))) == [
            ("call", target, expected_depth)
        ]
    assert [f.agent for f in s.state.stack] == ["A", "B", "A", "B"]
    commands = s.send(reply("B", "", delegate("3", "A")))
    assert commands == [
        Fail(code="delegation_cycle", message="delegation cycle A -> B -> A -> B -> A passed max_depth=4")
    ]
    assert_failed_for_good(s, "delegation_cycle")


def test_a_self_delegation_cycle() -> None:
    s = Script("A", {"A": ("A",)}, Limits(max_depth=2))
    s.send(user())
    assert describe(s.send(reply("A", "", delegate("1", "A")))) == [("call", "A", 2)]
    commands = s.send(reply("A", "", delegate("1", "A")))
    assert describe(commands) == [("fail", "delegation_cycle")]
    assert isinstance(commands[0], Fail) and "A -> A -> A" in commands[0].message


def test_an_interpreter_failure_is_accepted_while_running() -> None:
    s = Script("lead", {"lead": ()})
    s.send(user())
    assert s.send(Failed(code="model_error", message="the model timed out")) == []
    assert s.state.status == "failed"
    assert s.state.error is not None and s.state.error.code == "model_error"
    s.rejects(reply("lead", "late"), "has failed")


# --- invalid events ----------------------------------------------------------------------------


def delegating_script() -> Script:
    """lead delegated to helper; helper is on top and asked for a reply."""
    s = Script("lead", {"lead": ("helper",), "helper": ()})
    s.send(user())
    s.send(reply("lead", "", delegate("d1", "helper")))
    return s


def tools_script() -> Script:
    """lead called two tools; both results are due."""
    s = Script("lead", {"lead": ()})
    s.send(user())
    s.send(reply("lead", "", tool("t1", "search"), tool("t2", "calc")))
    return s


def test_reply_from_an_agent_not_on_top() -> None:
    s = delegating_script()
    s.rejects(reply("lead", "me again"), "'lead', but 'helper' is on top")
    s.rejects(reply("nobody", "hi"), "'nobody', but 'helper' is on top")


def test_reply_while_tools_are_pending() -> None:
    s = tools_script()
    s.rejects(reply("lead", "too early"), "waits for tools")
    s.send(result("lead", tool("t1", "search")))
    s.rejects(reply("lead", "still too early"), "waits for tools")


def test_reply_while_idle_or_finished() -> None:
    s = Script("lead", {"lead": ()})
    s.rejects(reply("lead", "unprompted"), "waits for user")
    s.send(Finished())
    s.rejects(reply("lead", "unprompted"))


def test_reply_with_repeated_call_ids() -> None:
    s = Script("lead", {"lead": ()})
    s.send(user())
    s.rejects(reply("lead", "", tool("same"), tool("same", "calc")), "repeat")


def test_tool_result_for_an_unknown_call() -> None:
    s = tools_script()
    s.rejects(result("lead", tool("t9", "search")), "no frame is waiting for")


def test_tool_result_for_a_queued_delegation() -> None:
    s = Script("lead", {"lead": ("a",), "a": ()})
    s.send(user())
    s.send(reply("lead", "", tool("t1"), delegate("d1", "a")))
    s.rejects(result("lead", delegate("d1", "a")), "no frame is waiting for")


def test_duplicate_tool_result() -> None:
    s = tools_script()
    first = result("lead", tool("t1", "search"))
    s.send(first)
    s.rejects(first, "no frame is waiting for")
    s.send(result("lead", tool("t2", "calc")))
    s.rejects(first, "no frame is waiting for")  # now the lead is asked again


def test_tool_result_with_the_wrong_tool_name() -> None:
    s = tools_script()
    s.rejects(result("lead", tool("t1", "calc")), "call 't1' is to 'search', but the result names 'calc'")


def test_tool_result_for_the_wrong_agent() -> None:
    s = tools_script()
    s.rejects(result("other", tool("t1", "search")), "'other', but 'lead' is on top")


def test_tool_result_while_an_agent_reply_is_due() -> None:
    s = delegating_script()
    s.rejects(result("lead", delegate("d1", "helper")), "no frame is waiting for")


def test_user_message_while_running() -> None:
    s = delegating_script()
    s.rejects(user("are you there?"), "running")
    s = tools_script()
    s.rejects(user("are you there?"), "running")


@pytest.mark.parametrize(
    "event",
    [
        UserMessage(text="hi"),
        AgentReply(agent="lead", text="hi"),
        ToolResult(agent="lead", call_id="1", name="search", output=""),
        Finished(),
        Failed(code="x", message="y"),
    ],
    ids=lambda e: e.kind,
)
def test_anything_before_started(event: Event) -> None:
    with pytest.raises(EventRejected, match="must start with a `started` event"):
        apply(INITIAL, event)
    assert State() == INITIAL  # the shared initial state was not touched


def test_started_twice() -> None:
    s = Script("lead", {"lead": ()})
    s.rejects(Started(root="lead", team={"lead": ()}), "already started")
    s.send(user())
    s.rejects(Started(root="lead", team={"lead": ()}), "already started")


def test_started_with_a_root_outside_the_team() -> None:
    with pytest.raises(EventRejected, match="root agent 'boss' is not in the team"):
        apply(INITIAL, Started(root="boss", team={"lead": ()}))


def test_started_with_a_team_naming_unknown_delegates() -> None:
    with pytest.raises(EventRejected, match=r"'lead' may delegate to unknown agents \['ghost'\]"):
        apply(INITIAL, Started(root="lead", team={"lead": ("helper", "ghost"), "helper": ()}))


def test_finished_while_running() -> None:
    s = delegating_script()
    s.rejects(Finished(), "only an idle conversation can finish; it is running")


def test_finished_twice() -> None:
    s = Script("lead", {"lead": ()})
    s.send(Finished())
    s.rejects(Finished(), "it is finished")


@pytest.mark.parametrize("offset", [-3, -1, 1, 5])
def test_an_event_with_a_wrong_explicit_seq(offset: int) -> None:
    s = delegating_script()
    at = s.state.length
    assert at == 3
    event = reply("helper", "answer").model_copy(update={"seq": at + offset})
    err = s.rejects(event, f"carries seq {at + offset} but the branch is at {at}")
    assert f"at seq {at}" in str(err)
    # The right seq is accepted.
    s.send(reply("helper", "answer").model_copy(update={"seq": at}))
    assert s.state.length == 4


def test_a_rejected_event_leaves_nothing_behind() -> None:
    s = tools_script()
    before = s.state
    with pytest.raises(EventRejected):
        apply(before, result("lead", tool("t1", "wrong")))
    # The same state still takes the right event, as if nothing had happened.
    after, commands = handle(before, result("lead", tool("t1", "search")))
    assert commands == []
    assert after.length == before.length + 1
    assert before.top is not None and before.top.waiting == ("t1", "t2")


# --- lifecycle ---------------------------------------------------------------------------------


def test_idle_finished_and_continued() -> None:
    s = Script("lead", {"lead": ()})
    assert s.state.status == "idle"
    s.rejects(Finished(seq=5))
    assert describe(s.send(user("first"))) == [("call", "lead", 1)]
    assert describe(s.send(reply("lead", "answer one"))) == [("reply", "lead", "answer one")]
    assert s.state.status == "idle"
    assert s.send(Finished(reason="done")) == []
    assert s.state.status == "finished"
    assert pending(s.state) == []
    s.rejects(reply("lead", "extra"))
    s.rejects(result("lead", tool("t")))

    # A new message continues a finished conversation.
    assert describe(s.send(user("one more thing"))) == [("call", "lead", 1)]
    assert s.state.status == "running"
    assert stack_of(s.state) == [("lead", "agent")]
    assert describe(s.send(reply("lead", "answer two"))) == [("reply", "lead", "answer two")]
    assert s.state.status == "idle"
    assert s.state.steps == 2


def test_a_root_reply_with_empty_text_is_still_a_reply() -> None:
    s = Script("lead", {"lead": ()})
    s.send(user())
    assert s.send(reply("lead", "")) == [Reply(agent="lead", text="")]


def test_pending_after_a_restart_equals_what_handle_returned() -> None:
    """Replay a whole conversation from its stored events at every point; each time the rebuilt
    state has exactly the outstanding commands that `handle` returned live."""
    team = {"lead": ("a", "b"), "a": ("b",), "b": ()}
    events: list[Event] = [
        Started(root="lead", team=team, ts=0.0),
        user(),
        reply("lead", "", tool("t1"), delegate("d1", "a"), delegate("d2", "zed"), tool("t2", "calc")),
        result("lead", tool("t2", "calc")),
        result("lead", delegate("d2", "zed"), "refused", is_error=True),
        result("lead", tool("t1")),
        reply("a", "", delegate("d1", "b")),
        reply("b", "", tool("x")),
        result("b", tool("x")),
        reply("b", "from b"),
        reply("a", "from a"),
        reply("lead", "final"),
        Finished(),
        user("again"),
    ]
    live: list[tuple[State, list[Command]]] = []
    state = INITIAL
    for e in events:
        state, commands = handle(state, e)
        live.append((state, commands))
    assert [describe(c) for _, c in live] == [
        [],
        [("call", "lead", 1)],
        [("run", "lead", ("t1", "t2")), ("reject", "lead", ("d2",))],
        [],
        [],
        [("call", "a", 2)],
        [("call", "b", 3)],
        [("run", "b", ("x",))],
        [("call", "b", 3)],
        [("call", "a", 2)],
        [("call", "lead", 1)],
        [("reply", "lead", "final")],
        [],
        [("call", "lead", 1)],
    ]
    stored = [e.model_copy(update={"seq": i}) for i, e in enumerate(events)]
    for n, (state, commands) in enumerate(live, start=1):
        restarted = fold(stored[:n])
        assert restarted == state
        due = [c for c in commands if not isinstance(c, Reply)]
        if due:
            assert pending(restarted) == due
    # In the middle of a batch a restart sees what is still due (handle said nothing new).
    assert describe(pending(fold(stored[:4]))) == [("run", "lead", ("t1",)), ("reject", "lead", ("d2",))]
    assert describe(pending(fold(stored[:5]))) == [("run", "lead", ("t1",))]
    # A fold continues from any snapshot.
    assert fold(stored[7:], fold(stored[:7])) == live[-1][0]


def test_a_batch_of_results_does_not_ask_again_for_what_was_asked_already() -> None:
    """Recovery runs a reply's tools on `RunTools` while `RejectCalls` for its refused delegation
    is still to be performed: the results' batch must not ask for the rejection a second time
    (the interpreter would store it twice, and the second is refused)."""
    from p2e.machine import handle_all

    state = INITIAL
    for e in (Started(root="a", team={"a": ()}), user()):
        state, _ = handle(state, e)
    calls = (tool("c0"), tool("c1"), delegate("c2", "nobody"))
    state, commands = handle(state, reply("a", "", *calls))
    assert describe(commands) == [("run", "a", ("c0", "c1")), ("reject", "a", ("c2",))]
    _, after_results = handle_all(state, [result("a", calls[0]), result("a", calls[1])])
    assert after_results == []
