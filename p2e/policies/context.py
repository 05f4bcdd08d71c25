"""The context policy: what of a frame its agent's model is shown on each step.

A frame's messages (see `p2e.transcript`) grow with every reply and tool result. The policy cuts
them down before the model call, and only there: the events and the transcript stay whole, so
replay, evaluators and the duplicate-call policy still see everything.

- `full` (the default): every message. With no `max_tool_result_chars` either, the runtime does
  not call `apply_context` at all.
- `last_turns`: the agent's last `turns` replies (a reply together with its tool results), and
  every message after the oldest of them.
- `tokens`: the newest turns that fit a budget of `tokens` estimated tokens (system prompt
  included), older ones left out.

Whatever the mode, some messages are always kept (even past a budget):

- the system messages at the start (the agent's persona);
- the task: the frame's first user message (a delegate's task, or the user's first message);
- the latest user message (the user's current request, or a review of the agent's draft);
- the pending work: the agent's last reply, with its tool calls, and every message after it
  (the tool results it is about to read).

A reply with tool calls and its tool results are kept or left out together (providers refuse a
tool message whose call is missing). When turns are left out, a user message takes their place,
at their place, saying so: with `overflow: drop` it says how many; with `overflow: summarize` it
also lists them, one clipped line each (the first line of each message). That summary is
extractive and deterministic: no model is asked, so it costs nothing and replays exactly.

`max_tool_result_chars` cuts longer tool outputs (kept or pending) to that many characters,
followed by `… [truncated N chars]`, before anything is counted.

Tokens are estimated, not counted by a tokenizer (the providers differ and a tokenizer per step
would cost more than the call saves): `len(text) // 4` for each message's content, plus 4 per
message, plus for each tool call 8 and `len(name + JSON arguments) // 4`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from p2e.llm.base import Message

MESSAGE_TOKENS = 4
"""Estimated overhead of one message (role, separators) in tokens."""
CALL_TOKENS = 8
"""Estimated overhead of one tool call in tokens, besides its name and arguments."""
CHARS_PER_TOKEN = 4
SUMMARY_LINE_CHARS = 120
"""Each left-out message is one line of a summary, clipped to this many characters."""
SUMMARY_MAX_CHARS = 4000
"""A summary never grows past this (the lines that do not fit are counted instead)."""


class ContextPolicy(BaseModel):
    """What of a frame the model sees; `AgentSpec.context`. The default shows everything."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["full", "last_turns", "tokens"] = "full"
    turns: int | None = Field(None, ge=1)
    """For `last_turns`: how many of the agent's latest replies (each with its tool results)."""
    tokens: int | None = Field(None, ge=1)
    """For `tokens`: the budget of the model's messages, system prompt included, in estimated
    tokens (the tool schemas and the reply are not counted: leave room for them)."""
    overflow: Literal["drop", "summarize"] = "drop"
    """What replaces the turns left out: a one-line note (`drop`), or a note listing the first
    line of each (`summarize`, extractive: no model call)."""
    max_tool_result_chars: int | None = Field(None, ge=1)
    """Tool outputs longer than this are cut, with `… [truncated N chars]` at the end."""

    @model_validator(mode="after")
    def _consistent(self) -> ContextPolicy:
        if self.mode == "last_turns" and self.turns is None:
            raise ValueError(
                "mode 'last_turns' needs `turns`: how many of the agent's latest turns to keep, "
                "e.g. `context: {mode: last_turns, turns: 4}`"
            )
        if self.mode == "tokens" and self.tokens is None:
            raise ValueError(
                "mode 'tokens' needs `tokens`: the budget in estimated tokens, "
                "e.g. `context: {mode: tokens, tokens: 8000}`"
            )
        if self.turns is not None and self.mode != "last_turns":
            raise ValueError(
                f"`turns` is set but mode is {self.mode!r}: add `mode: last_turns` (or remove `turns`)"
            )
        if self.tokens is not None and self.mode != "tokens":
            raise ValueError(
                f"`tokens` is set but mode is {self.mode!r}: add `mode: tokens` (or remove `tokens`)"
            )
        if self.overflow == "summarize" and self.mode == "full":
            raise ValueError(
                "`overflow: summarize` applies when turns are left out, and mode 'full' leaves none "
                "out: set `mode: last_turns` or `mode: tokens` (or remove `overflow`)"
            )
        return self

    @property
    def is_noop(self) -> bool:
        """True when the policy changes nothing (the runtime then skips it)."""
        return self.mode == "full" and self.max_tool_result_chars is None


def estimate_tokens(message: Message) -> int:
    """A cheap estimate of a message's size in tokens (see the module's docstring)."""
    n = MESSAGE_TOKENS + len(message.content) // CHARS_PER_TOKEN
    for c in message.tool_calls:
        args = c.invalid_arguments if c.invalid_arguments is not None else json.dumps(c.arguments)
        n += CALL_TOKENS + (len(c.name) + len(args)) // CHARS_PER_TOKEN
    return n


def truncate(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, with a marker saying how many were cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [truncated {len(text) - limit} chars]"


def apply_context(policy: ContextPolicy, messages: Sequence[Message]) -> tuple[Message, ...]:
    """The messages the model is shown under `policy` (a pure function of its arguments)."""
    msgs = list(messages)
    limit = policy.max_tool_result_chars
    if limit is not None:
        msgs = [
            m.model_copy(update={"content": truncate(m.content, limit)})
            if m.role == "tool" and len(m.content) > limit
            else m
            for m in msgs
        ]
    if policy.mode == "full":
        return tuple(msgs)
    units = _units(msgs)
    pinned = _pinned(msgs, units)
    candidates = [i for i in range(len(units)) if i not in pinned]
    if policy.mode == "last_turns":
        assert policy.turns is not None
        replies = [i for i, (start, _) in enumerate(units) if msgs[start].role == "assistant"]
        if len(replies) <= policy.turns:
            return tuple(msgs)
        cutoff = replies[-policy.turns]
        dropped = [i for i in candidates if i < cutoff]
        budget_left = None
    else:
        assert policy.tokens is not None
        cost = [sum(estimate_tokens(m) for m in msgs[s:e]) for s, e in units]
        total = sum(cost)
        if total <= policy.tokens:
            return tuple(msgs)
        used = sum(cost[i] for i in pinned) + _MARKER_TOKENS
        kept: set[int] = set()
        for i in reversed(candidates):  # the newest turns first; stop at the first that does not fit
            if used + cost[i] > policy.tokens:
                break
            used += cost[i]
            kept.add(i)
        dropped = [i for i in candidates if i not in kept]
        budget_left = max(0, policy.tokens - used + _MARKER_TOKENS)
    if not dropped:
        return tuple(msgs)
    gone = [m for i in dropped for m in msgs[units[i][0] : units[i][1]]]
    marker = Message(role="user", content=_marker(policy, gone, budget_left))
    out: list[Message] = []
    first = units[dropped[0]][0]
    drop = {j for i in dropped for j in range(*units[i])}
    for j, m in enumerate(msgs):
        if j == first:
            out.append(marker)
        if j not in drop:
            out.append(m)
    return tuple(out)


def _units(msgs: list[Message]) -> list[tuple[int, int]]:
    """[start, end) ranges: each non-tool message with the tool messages that follow it, so a
    reply and its tool results are never split."""
    units: list[tuple[int, int]] = []
    for j, m in enumerate(msgs):
        if m.role == "tool" and units:
            units[-1] = (units[-1][0], j + 1)
        else:
            units.append((j, j + 1))
    return units


def _pinned(msgs: list[Message], units: list[tuple[int, int]]) -> set[int]:
    """The units always kept: leading system messages, the task, the latest user message, and
    the agent's last reply with everything after it."""
    pinned: set[int] = set()
    for i, (start, _) in enumerate(units):
        if msgs[start].role != "system":
            break
        pinned.add(i)
    users = [i for i, (start, _) in enumerate(units) if msgs[start].role == "user"]
    if users:
        pinned.update((users[0], users[-1]))
    replies = [i for i, (start, _) in enumerate(units) if msgs[start].role == "assistant"]
    if replies:
        pinned.update(range(replies[-1], len(units)))
    return pinned


_MARKER_TOKENS = MESSAGE_TOKENS + 40
"""Room kept in a token budget for the note that says turns were left out."""


def _marker(policy: ContextPolicy, gone: list[Message], budget_left: int | None) -> str:
    replies = sum(1 for m in gone if m.role == "assistant")
    results = sum(1 for m in gone if m.role == "tool")
    others = len(gone) - replies - results
    parts = [f"{replies} of your earlier replies"]
    if results:
        parts.append(f"{results} tool result{'s' if results != 1 else ''}")
    if others:
        parts.append(f"{others} other message{'s' if others != 1 else ''}")
    what = ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1]
    if policy.overflow == "drop":
        return f"[context policy: {what} were left out here to keep the context short]"
    head = (
        f"[context policy: {what} were left out here to keep the context short; "
        "their first lines (an automatic extract, not a model's summary):]"
    )
    room = SUMMARY_MAX_CHARS
    if budget_left is not None:
        room = min(room, budget_left * CHARS_PER_TOKEN)
    lines: list[str] = []
    size = len(head)
    for n, m in enumerate(gone):
        line = "- " + _clip(_first_line(m), SUMMARY_LINE_CHARS)
        reserve = 0 if n == len(gone) - 1 else 30  # room for the "... and N more" line
        if size + len(line) + 1 + reserve > room:
            lines.append(f"- ... and {len(gone) - n} more")
            break
        lines.append(line)
        size += len(line) + 1
    return "\n".join([head, *lines])


def _first_line(m: Message) -> str:
    text = m.content.strip().split("\n", 1)[0]
    if m.role == "assistant":
        calls = ", ".join(
            f"{c.name}({c.invalid_arguments if c.invalid_arguments is not None else json.dumps(c.arguments)})"
            for c in m.tool_calls
        )
        said = f"you: {text}" if text else "you"
        return f"{said}; called {calls}" if calls else said
    if m.role == "tool":
        return f"result of {m.name or 'a tool'}: {text}"
    return f"{m.role}: {text}"


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
