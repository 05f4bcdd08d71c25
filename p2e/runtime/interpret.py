"""The interpreter's step, free of I/O: every interpreter of the machine (the async supervisor's
driver, the local driver, the scripted interpreter, guided search) goes through these functions,
so the write-ahead rule and the machine's authority live in one place.

- `advance(state, events)`: what to store and what follows. Events are offered to the machine
  one by one; an event it rejects is never stored. The accepted ones are stored, and the
  conversation ends with a `failed` event instead of being left `running`: with the code of the
  limit the accepted events passed (a reply over the token budget: `budget`), else `rejected`.
- `settle(cmd)`: the events that answer a command needing no I/O (a refused delegation's error
  result, a `failed` event), or None when the command needs the interpreter to act.
- `tools_due(state, reply)`: the ordinary tool calls the machine will ask to run once it accepts
  `reply`, decided before the reply is stored, so an agent can run them in the same step without
  a second round trip and still never runs a call the machine would refuse.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from p2e.errors import EventRejected
from p2e.events import AgentReply, Event, Failed, ToolCall, ToolResult
from p2e.machine import Command, Fail, RejectCalls, RunTools, State, handle, handle_all

REJECTED = "rejected"
"""The `failed` code of a conversation ended because the interpreter offered an event that the
machine refused (a bug in an agent or a tool wrapper, never the model's own mistake)."""


class Advance(NamedTuple):
    """The outcome of offering events: `events` to store (in order, with nothing else between),
    `states[i + 1]` the state after `events[i]` (`states[0]` is the input), and the commands due
    once they are stored."""

    events: tuple[Event, ...]
    states: list[State]
    commands: list[Command]


def advance(state: State, events: Sequence[Event]) -> Advance:
    """Offer `events` to the machine; see the module docstring. A conversation that has already
    failed takes nothing (an empty outcome); one that has not started raises `EventRejected`."""
    try:
        states, commands = handle_all(state, events)
        return Advance(tuple(events), states, commands)
    except EventRejected as e:
        if state.status == "new":
            raise
        rejected = e
    if state.status == "failed":
        return Advance((), [state], [])
    states = [state]
    accepted: list[Event] = []
    for event in events:  # the accepted prefix (the batch raised, so some event does not fit)
        try:
            new, _ = handle(states[-1], event)
        except EventRejected as e:
            rejected = e
            break
        states.append(new)
        accepted.append(event)
    last = states[-1]
    if last.violation is not None:
        failed = Failed(code=last.violation.code, message=last.violation.message)
    elif last.status == "failed":
        return Advance(tuple(accepted), states, [])
    else:
        what = type(events[len(accepted)]).__name__
        failed = Failed(code=REJECTED, message=f"the machine refused a {what}: {rejected.reason}")
    end, _ = handle(last, failed)
    return Advance((*accepted, failed), [*states, end], [])


def settle(cmd: Command) -> list[Event] | None:
    """The events answering a command that needs no I/O; None for the others."""
    if isinstance(cmd, RejectCalls):
        return [
            ToolResult(agent=cmd.agent, call_id=r.call.id, name=r.call.name, output=r.reason, is_error=True)
            for r in cmd.rejections
        ]
    if isinstance(cmd, Fail):
        return [Failed(code=cmd.code, message=cmd.message)]
    return None


def tools_due(state: State | None, reply: AgentReply) -> tuple[ToolCall, ...]:
    """The calls of `reply` that the machine, in `state`, will ask to run once it accepts the
    reply; none without a state, or when it would refuse the reply or end the conversation."""
    if state is None or not any(not c.is_delegation for c in reply.tool_calls):
        return ()
    try:
        _, commands = handle(state, reply)
    except EventRejected:
        return ()
    return tuple(c for cmd in commands if isinstance(cmd, RunTools) for c in cmd.calls)
