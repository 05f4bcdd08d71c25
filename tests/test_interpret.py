"""The interpreter's step (`p2e.runtime.interpret`): the machine is the only authority.

The property: an agent that runs the tools of its reply inside its own step (`tools_due`, the
round trip the runtime saves) runs exactly the tools that the machine asks for when the reply is
stored first and the tools run only on its `RunTools` command, and both leave the same history,
whatever the replies, limits and budgets. No tool runs for a reply that passes a limit, and no
conversation is left `running` by a refused event.
"""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_machine_properties import agent_replies, teams

from p2e.events import AgentReply, Event, Failed, Limits, Started, ToolCall, ToolResult, Usage, UserMessage
from p2e.machine import INITIAL, CallAgent, Command, Fail, RejectCalls, Reply, RunTools, State, handle
from p2e.runtime.interpret import REJECTED, advance, settle, tools_due

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

Replies = Callable[[State], AgentReply]


def output(call: ToolCall) -> str:
    return f"out of {call.id}"


def interpret(
    start: Started, replies: Replies, fused: bool, max_events: int = 60
) -> tuple[list[Event], list[ToolCall]]:
    """Drive a conversation with one user message to its end: the stored events and the calls
    run. `fused`: the agent runs `tools_due` with its reply, in one batch (the runtime's path);
    else the reply is stored alone and tools run on the machine's `RunTools`."""
    state, ran, stored = INITIAL, [], []

    def store(*events: Event) -> list[Command]:
        nonlocal state
        out = advance(state, events)
        stored.extend(out.events)
        state = out.states[-1]
        return out.commands

    todo = store(start) + store(UserMessage(text="go", ts=start.ts))
    while todo and len(stored) < max_events:
        cmd = todo.pop(0)
        if isinstance(cmd, CallAgent):
            reply = replies(state)
            results: list[Event] = []
            if fused:
                due = tools_due(state, reply)
                ran.extend(due)
                results = [
                    ToolResult(agent=reply.agent, call_id=c.id, name=c.name, output=output(c)) for c in due
                ]
            todo = store(reply, *results) + todo
        elif isinstance(cmd, RunTools):
            assert not fused, "the fused agent ran these already: the machine must not ask again"
            ran.extend(cmd.calls)
            todo = (
                store(
                    *[
                        ToolResult(agent=cmd.agent, call_id=c.id, name=c.name, output=output(c))
                        for c in cmd.calls
                    ]
                )
                + todo
            )
        elif isinstance(cmd, Reply):
            continue
        else:
            events = settle(cmd)
            assert events is not None
            todo = store(*events) + todo
    return stored, ran


@SETTINGS
@given(st.data())
def test_the_tools_run_are_the_tools_the_machine_asked_for(data: st.DataObject) -> None:
    root, team, limits = data.draw(teams())
    budget = data.draw(st.none() | st.integers(1, 400))
    limits = limits.model_copy(update={"max_tokens": budget, "deadline_s": None})
    start = Started(root=root, team=team, limits=limits, ts=0.0)
    drawn: list[AgentReply] = []

    def draw_reply(state: State) -> AgentReply:
        reply = data.draw(agent_replies(state, 0.0))
        tokens = data.draw(st.integers(0, 120))
        reply = reply.model_copy(update={"usage": Usage(prompt_tokens=tokens, completion_tokens=1)})
        drawn.append(reply)
        return reply

    plain_events, plain_ran = interpret(start, draw_reply, fused=False)
    replay = iter(drawn)
    fused_events, fused_ran = interpret(start, lambda _: next(replay), fused=True)

    assert [c.id for c in fused_ran] == [c.id for c in plain_ran]
    assert [e.model_dump(exclude={"ts", "id"}) for e in fused_events] == [
        e.model_dump(exclude={"ts", "id"}) for e in plain_events
    ]
    assert not any(isinstance(e, Failed) and e.code == REJECTED for e in fused_events)


def running(limits: Limits) -> State:
    state = INITIAL
    for e in (Started(root="a", team={"a": ()}, limits=limits), UserMessage(text="go")):
        state, _ = handle(state, e)
    return state


def transfer(i: int) -> ToolCall:
    return ToolCall(id=f"c{i}", name="transfer", arguments={"to": "b", "amount": "5", "reason": "x"})


def test_no_tool_is_due_for_a_reply_over_the_token_budget() -> None:
    state = running(Limits(max_tokens=10))
    reply = AgentReply(
        agent="a", tool_calls=(transfer(0),), usage=Usage(prompt_tokens=50, completion_tokens=5)
    )
    assert tools_due(state, reply) == ()
    under = reply.model_copy(update={"usage": Usage(prompt_tokens=5, completion_tokens=1)})
    assert [c.id for c in tools_due(state, under)] == ["c0"]


def test_no_tool_is_due_for_a_reply_over_the_tool_call_limit() -> None:
    state = running(Limits(max_tool_calls_per_turn=2))
    reply = AgentReply(agent="a", tool_calls=tuple(transfer(i) for i in range(3)))
    assert tools_due(state, reply) == ()
    assert tools_due(None, reply) == ()  # no state (a critic): nothing runs


def test_a_refused_event_ends_the_conversation_instead_of_escaping() -> None:
    """The results of a reply that passed the budget are refused: the reply is kept (its tokens
    were spent), the results are not, and the conversation fails with the limit's code."""
    state = running(Limits(max_tokens=10))
    reply = AgentReply(
        agent="a", tool_calls=(transfer(0),), usage=Usage(prompt_tokens=50, completion_tokens=5)
    )
    result = ToolResult(agent="a", call_id="c0", name="transfer", output="paid")
    out = advance(state, [reply, result])
    assert [e.kind for e in out.events] == ["agent_reply", "failed"]
    failed = out.events[-1]
    assert isinstance(failed, Failed) and failed.code == "budget"
    assert out.states[-1].status == "failed" and out.commands == []

    stray = ToolResult(agent="a", call_id="nope", name="calc", output="1")
    out = advance(state, [stray])
    assert [e.kind for e in out.events] == ["failed"]
    assert isinstance(out.events[0], Failed) and out.events[0].code == REJECTED
    assert "no frame is waiting" in out.events[0].message

    assert advance(out.states[-1], [stray]).events == ()  # a failed conversation takes nothing


def test_settle_answers_the_commands_that_need_no_io() -> None:
    (failed,) = settle(Fail(code="max_steps", message="m")) or []
    assert isinstance(failed, Failed) and (failed.code, failed.message) == ("max_steps", "m")
    assert settle(RejectCalls(agent="a", rejections=())) == []
    assert settle(Reply(agent="a", text="t")) is None
