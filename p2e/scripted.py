"""A synchronous interpreter with scripted agents: the machine and the store, no models, no Ray.

Each agent answers from its own list of replies, in order; tools are plain functions. It is what
`make demo-branching` runs, and it lets tests drive real conversations through the real store.
(The Ray supervisor is the production interpreter; this one is its smallest faithful sibling,
on the same write-ahead step, `p2e.runtime.interpret`.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from p2e.conversation import Conversation
from p2e.errors import P2EError
from p2e.events import AgentReply, Event, ToolResult
from p2e.machine import CallAgent, Command, Reply, RunTools
from p2e.runtime.interpret import advance, settle

Tool = Callable[[dict[str, Any]], str]


def step(conv: Conversation, *events: Event) -> list[Command]:
    """The interpreter's write-ahead step: what the machine refuses is not stored and ends the
    conversation with a `failed` event."""
    return conv.record(*advance(conv.state, events))


class ScriptExhausted(P2EError):
    def __init__(self, agent: str):
        super().__init__(f"the script has no more replies for agent {agent!r}")


class ScriptedTeam:
    def __init__(self, replies: dict[str, Iterable[AgentReply]], tools: dict[str, Tool] | None = None):
        self.replies = {agent: iter(rs) for agent, rs in replies.items()}
        self.tools = tools or {}
        self.answers: list[str] = []

    def run(self, conv: Conversation, commands: list[Command]) -> list[str]:
        """Perform commands (and the ones they lead to) until the machine waits; return the
        root's answers given on the way."""
        start = len(self.answers)
        todo = list(commands)
        while todo:
            todo = self._perform(conv, todo.pop(0)) + todo
        return self.answers[start:]

    def _perform(self, conv: Conversation, cmd: Command) -> list[Command]:
        if isinstance(cmd, CallAgent):
            reply = next(self.replies.get(cmd.frame.agent, iter(())), None)
            if reply is None:
                raise ScriptExhausted(cmd.frame.agent)
            return step(conv, reply)
        if isinstance(cmd, RunTools):
            return step(conv, *[self._run_tool(cmd.agent, c.id, c.name, c.arguments) for c in cmd.calls])
        if isinstance(cmd, Reply):
            self.answers.append(cmd.text)
            return []
        events = settle(cmd)
        if events is None:  # pragma: no cover - every command is handled above or settles
            raise TypeError(f"unknown command {cmd!r}")
        return step(conv, *events)

    def _run_tool(self, agent: str, call_id: str, name: str, args: dict[str, Any]) -> ToolResult:
        tool = self.tools.get(name)
        if tool is None:
            return ToolResult(
                agent=agent, call_id=call_id, name=name, output=f"unknown tool {name!r}", is_error=True
            )
        try:
            return ToolResult(agent=agent, call_id=call_id, name=name, output=tool(args))
        except Exception as e:  # a failing tool is a result the model sees, not a crash
            return ToolResult(
                agent=agent, call_id=call_id, name=name, output=f"{type(e).__name__}: {e}", is_error=True
            )
