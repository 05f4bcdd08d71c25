"""The messages between a supervisor and an agent: one request and one result per step."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from p2e.evals.score import Score
from p2e.events import AgentReply, Limits, ToolCall, ToolResult
from p2e.llm.base import Message
from p2e.machine import State


class StepRequest(BaseModel):
    """Everything an agent needs for one turn; it keeps no conversation state of its own (an
    Agent actor caches frames' messages, but only to be sent less: `p2e.runtime.frames`)."""

    model_config = ConfigDict(frozen=True)

    conversation: str
    branch: str
    seq: int
    """The seq its reply will be stored at."""
    agent: str
    turn: int
    depth: int
    messages: tuple[Message, ...]
    """The frame's messages; with `base`, only those after its first `base`."""
    frame: str = ""
    """The id of the frame's message list in its host (`Transcript.ids`): what an agent actor
    caches the messages under (`p2e.runtime.frames`); empty: not cached (a critic's review)."""
    base: int = 0
    """How many of the frame's first messages are left out, for the agent to take from its
    cache; 0: `messages` is the whole frame."""
    overrides: dict[str, Any] = {}
    """The variant's overrides of this agent's spec."""
    episode: str = ""
    """`rollout:episode` of a rollout episode (see `ToolContext.episode`); empty otherwise."""
    state: State | None = None
    """The machine's state that the reply will be offered to: the agent runs the ordinary tool
    calls the machine will ask for once it accepts the reply (`interpret.tools_due`), and none
    without a state (a critic's review)."""


class StepResult(BaseModel):
    """The agent's reply and the results of the tool calls it ran itself: exactly those the
    machine will ask for once it accepts the reply."""

    model_config = ConfigDict(frozen=True)

    reply: AgentReply
    results: tuple[ToolResult, ...] = ()


class ToolsRequest(BaseModel):
    """Run tool calls of a stored reply (used when recovering: the reply is in the store, its
    results are not)."""

    model_config = ConfigDict(frozen=True)

    conversation: str
    branch: str
    agent: str
    calls: tuple[ToolCall, ...]
    overrides: dict[str, Any] = {}
    episode: str = ""


TOOL_RESULTS: TypeAdapter[list[ToolResult]] = TypeAdapter(list[ToolResult])


class Turn(BaseModel):
    """A scripted user turn after a scenario's first message: sent on the same conversation once
    the root has answered the turn before, if that answer matches `when`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    message: str = Field(min_length=1)
    when: str | None = None
    """A Python regular expression searched for in the previous answer (`(?i)` ignores case);
    if it is not found, the dialogue ends there. None: always sent."""

    @field_validator("when")
    @classmethod
    def _pattern(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"not a valid regular expression ({e}): {v!r}") from None
        return v


class SimulatedUser(BaseModel):
    """An agent of the agents file that plays the user: after each answer of the team it writes
    the user's next message (one model call, off the interaction stack), until its reply starts
    with its verdict, `GOAL MET` or `GIVE UP`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    agent: str = Field(min_length=1)
    goal: str = Field(min_length=1)
    facts: dict[str, Any] = {}
    """What the user knows and tells the team when asked (the order number, the address, ...)."""


GOAL_MET = "GOAL MET"
GIVE_UP = "GIVE UP"
"""How a simulated user's reply ends the dialogue: its first line starts with one of them."""

EndedBy = Literal["script", "user", "limit", "error", ""]
"""Who ended an episode's dialogue: the script (its last turn was answered, or a turn's `when`
did not match), the simulated user (its verdict), the limit (`max_turns` reached without a
verdict), or an error (a turn failed); empty: a row written before p2e recorded it."""


class EpisodeRequest(BaseModel):
    """One whole episode for a supervisor: start a conversation, post the message, run it out."""

    model_config = ConfigDict(frozen=True)

    cid: str
    name: str
    root: str
    graph: dict[str, tuple[str, ...]]
    limits: Limits
    overrides: dict[str, dict[str, Any]] = {}
    message: str
    turns: tuple[Turn, ...] = ()
    """The user's turns after `message`, each sent once the root has answered the one before."""
    user: SimulatedUser | None = None
    """The agent that writes the user's turns after `message` (instead of `turns`)."""
    max_turns: int = 10
    """The most user turns a simulated user's dialogue may hold, its message included."""
    reference: str | None = None
    """The scenario's expected answer, for the evaluators."""
    score: bool = False
    """Score the episode before answering (the supervisor hosts the rollout's evaluators)."""
    rollout: str = ""
    variant: str = ""
    """What the episode's metrics are labelled with (`actors.metrics.labels`)."""
    episode: str = ""
    """The episode's id in its rollout: the same for every attempt at it (effects are keyed by
    it, see `ToolContext.episode`)."""


def episode_key(rollout: str, episode: str) -> str:
    """`rollout:episode`: what an episode's effects are keyed by, over all its attempts (its
    payments' command ids and budget scope, see `ToolContext.episode`)."""
    return f"{rollout}:{episode}"


class EpisodeOutcome(BaseModel):
    """How an episode ended, with what it spent; the coordinator turns it into a result row."""

    conversation: str
    branch: str
    status: str
    answer: str | None = None
    error: str | None = None
    steps: int
    tokens: int
    cost_usd: float
    wall_s: float
    node: str = ""
    scores: list[Score] = []
    turns: int = 1
    """User messages sent (the first one and the scripted turns that ran)."""
    ended_by: EndedBy = "script"
    end_reason: str = ""
    goal_met: bool | None = None
    """The simulated user's verdict (False: it gave up, or `max_turns` came first); None: the
    episode had no simulated user, or failed."""
