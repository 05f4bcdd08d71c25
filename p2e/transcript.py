"""What each open frame's agent has seen: a stack of message lists kept beside the machine.

It is a second fold over the same events, parallel to the interaction stack: a frame's list
starts with its task (the user's message, or the caller's `delegate` task), collects the agent's
own replies and tool results, and receives a delegate's final answer as the result of the
`delegate` call. When a frame pops, its list goes with it. Nothing here is stored: it is derived
from the events, so it costs no snapshot space and can always be rebuilt.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable

from p2e.events import AgentReply, Critique, Event, ToolResult, UserMessage
from p2e.llm.base import Message
from p2e.machine import INITIAL, State, apply

ERROR_PREFIX = "ERROR: "
"""How a failed tool call's result reads to the model (the duplicate policy relies on it)."""

SELF_REVIEW = (
    "Review your answer above critically: is it correct, complete and does it do what was asked? "
    "If it stands, repeat it unchanged; otherwise reply with the corrected answer."
)


def critique_message(event: Critique) -> str:
    """What an agent reads when its draft is reviewed (a critic's words, or the self-review)."""
    if event.critic is None:
        return SELF_REVIEW
    return (
        f"A reviewer ({event.critic}) commented on your answer:\n{event.text}\n\n"
        "Revise your answer if the review is right; if your answer stands, repeat it unchanged."
    )


_PROCESS = os.urandom(6).hex()
_COUNTER = itertools.count()


def new_frame_id() -> str:
    """An id no other frame list of any process gets: this process's random tag and a counter."""
    return f"{_PROCESS}.{next(_COUNTER)}"


class Transcript:
    def __init__(self) -> None:
        self.frames: list[list[Message]] = []
        self.tasks: list[str] = []
        """Per frame, what it was asked: the delegated task, or the root's latest user message."""
        self.ids: list[str] = []
        """Per frame, an id of its message list in this process (`new_frame_id`): the list only
        grows, so what was sent to an agent under an id is a prefix of what the id names later
        (`p2e.runtime.frames`); a copy or a rebuild gets new ids."""

    @classmethod
    def rebuild(cls, events: Iterable[Event], state: State = INITIAL) -> tuple[Transcript, State]:
        """Fold a whole history (from seq 0); return the transcript and the machine state."""
        t = cls()
        for e in events:
            after = apply(state, e)
            t.update(state, e, after)
            state = after
        return t, state

    @classmethod
    def opened(cls, state: State) -> Transcript:
        """The transcript of a conversation that has only started (no read of the store)."""
        t = cls()
        t.frames = [[] for _ in state.stack]
        t.tasks = [f.task for f in state.stack]
        t.ids = [new_frame_id() for _ in state.stack]
        return t

    def copy(self) -> Transcript:
        """An independent copy (a forked branch's transcript goes its own way)."""
        t = Transcript()
        t.frames = [list(f) for f in self.frames]
        t.tasks = list(self.tasks)
        t.ids = [new_frame_id() for _ in self.frames]  # the copies grow apart
        return t

    def messages(self) -> list[Message]:
        """The top frame's messages: what its agent is asked to continue."""
        return list(self.frames[-1]) if self.frames else []

    def frame_id(self) -> str:
        """The top frame's id (see `ids`); empty without a frame."""
        return self.ids[-1] if self.ids else ""

    def update(self, before: State, event: Event, after: State) -> None:
        """Follow one event that moved the machine from `before` to `after`."""
        if not before.stack:  # `started`: the root frame opens, empty until the user speaks
            opened = Transcript.opened(after)
            self.frames, self.tasks, self.ids = opened.frames, opened.tasks, opened.ids
            return
        if isinstance(event, UserMessage):
            self.frames[0].append(Message(role="user", content=event.text))
            self.tasks[0] = event.text
        elif isinstance(event, AgentReply):
            self.frames[-1].append(Message(role="assistant", content=event.text, tool_calls=event.tool_calls))
        elif isinstance(event, Critique):
            self.frames[-1].append(Message(role="user", content=critique_message(event)))
        elif isinstance(event, ToolResult):
            content = ERROR_PREFIX + event.output if event.is_error else event.output
            self.frames[-1].append(
                Message(role="tool", content=content, tool_call_id=event.call_id, name=event.name)
            )
        keep = _common(before, after)
        if len(before.stack) > keep:  # the top frame popped: its answer is its caller's tool result
            popped = before.stack[-1]
            del self.frames[keep:]
            del self.tasks[keep:]
            del self.ids[keep:]
            text = event.text if isinstance(event, AgentReply) else ""
            self.frames[-1].append(
                Message(role="tool", content=text, tool_call_id=popped.call_id, name="delegate")
            )
        for frame in after.stack[len(self.frames) :]:
            self.frames.append([Message(role="user", content=frame.task)])
            self.tasks.append(frame.task)
            self.ids.append(new_frame_id())


def _common(before: State, after: State) -> int:
    """How many frames, from the bottom, are the same activation before and after."""
    n = 0
    for a, b in zip(before.stack, after.stack, strict=False):
        if (a.agent, a.start) != (b.agent, b.start):
            break
        n += 1
    return n
