"""Commands: what the machine asks its interpreter to do. Plain data; performing them is I/O."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from p2e.events import ToolCall
from p2e.machine.state import Frame, Rejection


class _Command(BaseModel):
    model_config = ConfigDict(frozen=True)


class CallAgent(_Command):
    """Ask `frame.agent` for its next reply; answer with an `AgentReply` event."""

    kind: Literal["call_agent"] = "call_agent"
    frame: Frame
    depth: int


class RunTools(_Command):
    """Run these ordinary tool calls (concurrently); answer each with a `ToolResult` event."""

    kind: Literal["run_tools"] = "run_tools"
    agent: str
    calls: tuple[ToolCall, ...]


class RejectCalls(_Command):
    """Record each refused delegation as an error `ToolResult` carrying the reason."""

    kind: Literal["reject_calls"] = "reject_calls"
    agent: str
    rejections: tuple[Rejection, ...]


class Review(_Command):
    """Have `frame.agent`'s draft answer reviewed (by `critic`, or by the agent itself when None);
    answer with a `Critique` event."""

    kind: Literal["review"] = "review"
    frame: Frame
    depth: int
    critic: str | None = None


class Reply(_Command):
    """The root agent answered the user; the conversation now waits for the next message."""

    kind: Literal["reply"] = "reply"
    agent: str
    text: str


class Fail(_Command):
    """A limit was passed; append a `Failed` event with this code and message."""

    kind: Literal["fail"] = "fail"
    code: str
    message: str


Command = CallAgent | RunTools | RejectCalls | Review | Reply | Fail
