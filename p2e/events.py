"""Events: the immutable, numbered records a branch is made of.

A conversation's whole state is a fold over its events (see `p2e.machine`), so an event carries
everything the fold needs and nothing it could derive. Delegation push and pop are *not* stored:
a reply that calls `delegate` pushes, and the delegate's final reply pops; storing them too would
say the same thing twice.

`seq` is assigned by the store when the event is appended (its position in the branch's history)
and is present on every event read back; events built in memory have `seq=None`.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

DELEGATE = "delegate"
"""The tool name that delegates: `delegate(agent=..., task=...)`. The machine handles it."""


def now() -> float:
    return time.time()


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    seq: int | None = None
    ts: float = Field(default_factory=now)


class Limits(BaseModel):
    """Bounds that end a conversation with an error event instead of letting it run away."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_depth: int = Field(8, ge=1, description="most frames on the stack, root included")
    max_steps: int = Field(64, ge=1, description="most agent replies in one conversation")
    max_tool_calls_per_turn: int = Field(16, ge=1, description="most tool calls in one reply")
    deadline_s: float | None = Field(None, gt=0, description="wall time from the start event")
    max_tokens: int | None = Field(None, ge=1, description="most model tokens (prompt + completion)")
    max_cost_usd: float | None = Field(None, gt=0, allow_inf_nan=False, description="most model cost")


class Reflection(BaseModel):
    """An agent reviews its own final answer (or has a critic agent review it) before the answer
    pops: up to `rounds` times, stopping early when a revision repeats the draft unchanged."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rounds: int = Field(1, ge=1, le=8, description="most reviews of one frame's answer")
    critic: str | None = Field(
        None, description="an agent that reviews the answer; None: the agent reviews its own"
    )


class Started(_Event):
    """First event of every conversation: who is at the root, who may delegate to whom, limits."""

    kind: Literal["started"] = "started"
    root: str
    team: dict[str, tuple[str, ...]] = Field(
        description="every agent of the conversation and the agents it may delegate to"
    )
    limits: Limits = Limits()
    overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="per agent, the variant's overrides of its spec (model, temperature, ...); "
        "recorded here so that any host rebuilding the conversation runs the same variant",
    )
    reflection: dict[str, Reflection] = Field(
        default_factory=dict, description="per agent, how its answers are reviewed before they pop"
    )


class UserMessage(_Event):
    kind: Literal["user_message"] = "user_message"
    text: str


class ToolCall(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    invalid_arguments: str | None = None
    """The model's raw argument text when it was not a JSON object (then `arguments` is empty);
    kept so the tool error the model sees can quote it."""

    @property
    def is_delegation(self) -> bool:
        return self.name == DELEGATE


class Usage(BaseModel):
    """What one model call cost. Filled by the model providers; zero for scripted replies."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0


class AgentReply(_Event):
    """One step: what an agent's model call produced (text and/or tool calls)."""

    kind: Literal["agent_reply"] = "agent_reply"
    agent: str
    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    model: str | None = None
    usage: Usage | None = None


class ToolResult(_Event):
    """The outcome of an ordinary tool call (or of a delegation the machine refused)."""

    kind: Literal["tool_result"] = "tool_result"
    agent: str
    call_id: str
    name: str
    output: str
    is_error: bool = False
    duplicate_of: str | None = None
    """The call id of an earlier identical call (same tool, same arguments, same frame) when the
    agent's duplicate-call policy (`penalty` or `strict`) found one; see `p2e.policies.duplicates`."""


class Critique(_Event):
    """A review of `agent`'s draft answer, which the agent sees before answering again: the
    critic agent's reply (its model call, so `model`/`usage`), or, with no critic, the self-review
    prompt (`text` empty; the transcript supplies the words)."""

    kind: Literal["critique"] = "critique"
    agent: str
    critic: str | None = None
    text: str = ""
    model: str | None = None
    usage: Usage | None = None


class Failed(_Event):
    """The conversation ended with an error (a limit passed, a cycle, an interpreter failure)."""

    kind: Literal["failed"] = "failed"
    code: str
    message: str


class Finished(_Event):
    """The conversation was closed after the root agent's answer (an episode ends here)."""

    kind: Literal["finished"] = "finished"
    reason: str = "done"


Event = Annotated[
    Started | UserMessage | AgentReply | ToolResult | Critique | Failed | Finished,
    Field(discriminator="kind"),
]
EVENT_KINDS: tuple[str, ...] = (
    "started",
    "user_message",
    "agent_reply",
    "tool_result",
    "critique",
    "failed",
    "finished",
)

event_adapter: TypeAdapter[Event] = TypeAdapter(Event)
events_adapter: TypeAdapter[list[Event]] = TypeAdapter(list[Event])


def event_agent(event: Event) -> str | None:
    """The agent an event belongs to, for indexing; None for conversation-level events."""
    if isinstance(event, Started):
        return event.root
    return getattr(event, "agent", None)


def encode(event: Event) -> bytes:
    """The stored form: JSON without `seq` (the store splices the assigned number in)."""
    return event.model_dump_json(exclude={"seq"}).encode()
