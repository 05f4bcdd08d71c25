"""The interaction stack and its counters: the machine's state, a plain immutable value.

Frames hold no message text, only where their activity starts in the branch, so a state (and a
snapshot of it) stays small however long the conversation grows.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from p2e.events import Limits, Reflection, ToolCall

Phase = Literal["user", "agent", "tools", "delegating", "review"]
"""What a frame waits for: a user message (root only), its agent's reply, the results of its
tool calls, the delegate above it to answer, or a critique of its draft answer."""

Status = Literal["new", "running", "idle", "finished", "failed"]


class Rejection(BaseModel):
    """A delegation the machine refused; it becomes an error tool result the model sees."""

    model_config = ConfigDict(frozen=True)

    call: ToolCall
    reason: str


class Violation(BaseModel):
    """A limit the conversation passed: the only event it accepts next is `Failed`."""

    model_config = ConfigDict(frozen=True)

    code: str
    message: str


class Frame(BaseModel):
    """One activation of one agent on the interaction stack."""

    model_config = ConfigDict(frozen=True)

    agent: str
    start: int
    """Seq of the first event of this activation (for the root: the first user message)."""
    call_id: str | None = None
    """The caller's `delegate` call this frame answers; None for the root frame."""
    task: str = ""
    phase: Phase = "agent"
    waiting: tuple[str, ...] = ()
    """Ids of tool calls (ordinary, or refused delegations) whose results are still due."""
    rejections: tuple[Rejection, ...] = ()
    queue: tuple[ToolCall, ...] = ()
    """Delegations of the last reply not yet started; they run one after another."""
    calls: tuple[ToolCall, ...] = ()
    """Every tool call of the frame's last reply, so results can be matched to names."""
    reviews: int = 0
    """Critiques this frame's agent has been given (see `Reflection`)."""
    draft: str = ""
    """A digest of the last draft answer under review (not its text: frames stay small), so an
    unchanged revision ends the reviews early."""


class State(BaseModel):
    """Everything the machine knows; a fold over a branch's events (`length` of them)."""

    model_config = ConfigDict(frozen=True)

    status: Status = "new"
    length: int = 0
    root: str = ""
    team: dict[str, tuple[str, ...]] = {}
    limits: Limits = Limits()
    reflection: dict[str, Reflection] = {}
    started_ts: float = 0.0
    stack: tuple[Frame, ...] = ()
    steps: int = 0
    tokens: int = 0
    """Model tokens (prompt + completion) of every reply so far."""
    cost_usd: float = 0.0
    pushes: int = 0
    pops: int = 0
    violation: Violation | None = None
    error: Violation | None = None
    """Set once `Failed` is applied: why the conversation ended."""

    @property
    def depth(self) -> int:
        return len(self.stack)

    @property
    def top(self) -> Frame | None:
        return self.stack[-1] if self.stack else None
