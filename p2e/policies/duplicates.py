"""The duplicate tool-call policy: what happens when an agent repeats a tool call.

A call repeats an earlier one when it names the same tool with the same arguments (compared as
canonical JSON: key order and spacing do not matter) in the same frame: earlier in the frame's
messages, or earlier in the same reply. An earlier call counts only if its result was not an
error (a retry after a failure is not a duplicate). Delegations are not tool calls here: the
conversation machine handles them.

- `none` (the default): every call runs; nothing is marked.
- `penalty`: every call runs; a repeat's `ToolResult` carries `duplicate_of` (the id of the
  earlier call), which the `duplicate_calls` evaluator counts.
- `strict`: like `penalty`, except that a repeat of a tool with side effects does not run: its
  result is the earlier result's output, after a note saying it was not run again. Tools declared
  side-effect free (`@tool(side_effect_free=True)`) still run (and are marked).

`cache_ttl_s` (any mode, off by default) serves the tools that are cacheable
(`Tool.cacheable`: side-effect free and not reading the `ToolContext`, unless declared
otherwise; `clock` is declared not cacheable) from a per-process cache, keyed by the tool and
its canonical arguments, for that many seconds. Errors are never cached. A cache hit is not a
duplicate by itself: only a repeat within the frame is marked.

The agent runner is stateless, so "earlier" is read from the frame's messages in the step
request (whole: the context policy only trims what the model is shown).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from p2e.events import ToolCall, ToolResult
from p2e.llm.base import Message
from p2e.tools.registry import Registry, Tool, ToolContext
from p2e.tools.run import run_call
from p2e.transcript import ERROR_PREFIX


class DuplicatePolicy(BaseModel):
    """What a repeated tool call does; `AgentSpec.duplicates`. The default runs every call."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["none", "penalty", "strict"] = "none"
    cache_ttl_s: float | None = Field(None, gt=0, allow_inf_nan=False)
    """Serve cacheable (side-effect free) tools from a per-process cache for this many seconds."""

    @property
    def is_noop(self) -> bool:
        """True when the policy changes nothing (the runtime then runs the calls as they are)."""
        return self.mode == "none" and self.cache_ttl_s is None


def canonical_arguments(arguments: dict[str, Any]) -> str:
    """The arguments as canonical JSON: sorted keys, no spaces, so equal arguments compare equal."""
    return json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def call_key(call: ToolCall) -> tuple[str, str] | None:
    """(tool, canonical arguments), or None for a call that cannot repeat anything (a delegation,
    or arguments that were not a JSON object)."""
    if call.is_delegation or call.invalid_arguments is not None:
        return None
    return call.name, canonical_arguments(call.arguments)


class Earlier(NamedTuple):
    call_id: str
    output: str


def earlier_calls(messages: Sequence[Message]) -> dict[tuple[str, str], Earlier]:
    """For each (tool, canonical arguments) called in the frame, its first call that succeeded."""
    calls: dict[str, tuple[str, str]] = {}
    found: dict[tuple[str, str], Earlier] = {}
    for m in messages:
        if m.role == "assistant":
            for c in m.tool_calls:
                key = call_key(c)
                if key is not None:
                    calls[c.id] = key
        elif m.role == "tool" and m.tool_call_id in calls and not m.content.startswith(ERROR_PREFIX):
            found.setdefault(calls[m.tool_call_id], Earlier(m.tool_call_id, m.content))
    return found


def not_run_note(name: str, earlier_id: str) -> str:
    return (
        f"[not run again: {name} has side effects and already ran with these same arguments "
        f"(call {earlier_id}); the duplicate-call policy repeats that call's result here]"
    )


class ToolCache:
    """Outputs of cacheable tools by (tool, canonical arguments), each with the time it was made;
    a reader accepts an entry no older than its own ttl. Oldest entries go past `maxsize`."""

    def __init__(self, maxsize: int = 4096, clock: Callable[[], float] = time.monotonic):
        self.maxsize, self.clock = maxsize, clock
        self._entries: OrderedDict[tuple[Tool, str], tuple[float, str]] = OrderedDict()

    def get(self, tool: Tool, arguments: str, ttl_s: float) -> str | None:
        entry = self._entries.get((tool, arguments))
        if entry is None:
            return None
        made, output = entry
        if self.clock() - made > ttl_s:
            return None
        return output

    def put(self, tool: Tool, arguments: str, output: str) -> None:
        key = (tool, arguments)
        self._entries[key] = (self.clock(), output)
        self._entries.move_to_end(key)
        while len(self._entries) > self.maxsize:
            self._entries.popitem(last=False)


CACHE = ToolCache()
"""The per-process cache the agent runners share."""


async def run_calls_with_policy(
    policy: DuplicatePolicy,
    registry: Registry,
    calls: Sequence[ToolCall],
    ctx: ToolContext,
    allowed: Collection[str],
    history: Sequence[Message] = (),
    cache: ToolCache = CACHE,
) -> list[ToolResult]:
    """`run_calls` under a duplicate-call policy: `history` is the frame's messages before these
    calls. Calls run concurrently; results come back in call order."""
    known = earlier_calls(history) if policy.mode != "none" else {}
    first: dict[tuple[str, str], str] = {}  # the first call of each key in this reply
    plan: list[tuple[ToolCall, str | None, bool]] = []  # (call, duplicate of, skip it)
    for c in calls:
        key = call_key(c)
        dup = None
        if policy.mode != "none" and key is not None:
            e = known.get(key)
            dup = e.call_id if e is not None else first.get(key)
            if dup is None:
                first[key] = c.id
        skip = (
            policy.mode == "strict"
            and dup is not None
            and c.name in allowed
            and c.name in registry
            and not registry.get(c.name).side_effect_free
        )
        plan.append((c, dup, skip))

    async def run(c: ToolCall) -> ToolResult:
        t = registry.get(c.name) if c.name in registry else None
        cached = (
            policy.cache_ttl_s is not None
            and t is not None
            and t.cacheable
            and c.name in allowed
            and c.invalid_arguments is None
        )
        if not cached:
            return await run_call(registry, c, ctx, allowed)
        assert t is not None and policy.cache_ttl_s is not None
        args = canonical_arguments(c.arguments)
        hit = cache.get(t, args, policy.cache_ttl_s)
        if hit is not None:
            return ToolResult(agent=ctx.agent, call_id=c.id, name=c.name, output=hit)
        r = await run_call(registry, c, ctx, allowed)
        if not r.is_error:
            cache.put(t, args, r.output)
        return r

    to_run = [c for c, _, skip in plan if not skip]
    ran = dict(zip((c.id for c in to_run), await asyncio.gather(*(run(c) for c in to_run)), strict=True))
    by_id = {e.call_id: e for e in known.values()}
    out: list[ToolResult] = []
    for c, dup, skip in plan:
        if not skip:
            r = ran[c.id]
            out.append(r if dup is None else r.model_copy(update={"duplicate_of": dup}))
            continue
        assert dup is not None
        if dup in by_id:
            output, is_error = by_id[dup].output, False
        else:
            output, is_error = ran[dup].output, ran[dup].is_error
        out.append(
            ToolResult(
                agent=ctx.agent,
                call_id=c.id,
                name=c.name,
                output=f"{not_run_note(c.name, dup)}\n{output}",
                is_error=is_error,
                duplicate_of=dup,
            )
        )
    return out
