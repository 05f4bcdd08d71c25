"""Running tool calls: whatever a model sends, the answer is a `ToolResult`, never an exception.

A model's tool call is untrusted input. An unknown tool, a tool outside the agent's allowlist,
arguments that are not JSON or fail the schema, a tool that raises or runs past its timeout: each
becomes an error result (`is_error=True`) whose text tells the model what to fix, so the agent can
retry in its next turn and the conversation goes on. Only cancellation of the caller propagates.

Sync tools run in a worker thread so they never block the event loop; async tools are awaited.
A sync tool that times out cannot be stopped (Python threads cannot be killed): its result is
dropped and the thread finishes in the background, so sync tools should bound their own waits.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Collection, Iterable
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError, to_json

from p2e.events import DELEGATE, ToolCall, ToolResult
from p2e.tools.registry import Registry, Tool, ToolContext

QUOTE_CHARS = 200
"""How much of a bad input is quoted back to the model."""
MESSAGE_CHARS = 2000
"""How much of a tool's exception message is shown."""


def shorten(text: str, limit: int = QUOTE_CHARS) -> str:
    """`text` cut to `limit` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more chars)"


def _result(call: ToolCall, ctx: ToolContext, output: str, is_error: bool = False) -> ToolResult:
    return ToolResult(agent=ctx.agent, call_id=call.id, name=call.name, output=output, is_error=is_error)


def _available(registry: Registry, allowed: Collection[str]) -> str:
    names = sorted(n for n in allowed if n in registry)
    return ", ".join(names) or "(none)"


def describe_errors(error: ValidationError) -> str:
    """One line listing each problem as `field: message`, the way a model can act on it."""
    problems = []
    for e in error.errors(include_url=False):
        loc = ".".join(str(p) for p in e["loc"]) or "arguments"
        if e["type"] == "missing":
            problems.append(f"{loc}: required")
        elif e["type"] == "extra_forbidden":
            problems.append(f"{loc}: unexpected argument")
        else:
            got = shorten(repr(e.get("input")), 60)
            problems.append(f"{loc}: {e['msg']} (got {got})")
    return "; ".join(problems)


def encode_output(value: Any) -> str:
    """Strings pass as they are; anything else is JSON (pydantic models via `model_dump_json`)."""
    if isinstance(value, str):
        return value
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    return to_json(value).decode()


async def _invoke(t: Tool, args: list[Any], kwargs: dict[str, Any]) -> tuple[Any, Exception | None]:
    """Call the tool; an exception it raises is returned, so the caller's `wait_for` can tell the
    deadline (TimeoutError out of wait_for) from a TimeoutError the tool raised itself."""
    try:
        if t.is_async:
            return await t.fn(*args, **kwargs), None
        if t.inline:
            return t.fn(*args, **kwargs), None
        return await asyncio.to_thread(t.fn, *args, **kwargs), None
    except Exception as e:
        return None, e


async def run_call(
    registry: Registry, call: ToolCall, ctx: ToolContext, allowed: Collection[str]
) -> ToolResult:
    """Run one call of `ctx.agent`, allowed the tools named in `allowed`. Never raises (except
    when cancelled): every failure is an error result the model can read and act on."""
    if call.name == DELEGATE:
        return _result(
            call, ctx, f"{DELEGATE!r} is handled by the conversation, not run as a tool; try again", True
        )
    if call.name not in registry:
        return _result(
            call,
            ctx,
            f"unknown tool {call.name!r}; the tools you can call: {_available(registry, allowed)}",
            True,
        )
    if call.name not in allowed:
        return _result(
            call,
            ctx,
            f"tool {call.name!r} is not available to agent {ctx.agent!r}; "
            f"the tools you can call: {_available(registry, allowed)}",
            True,
        )
    t = registry.get(call.name)
    if call.invalid_arguments is not None:
        return _result(
            call,
            ctx,
            f"the arguments of {t.name} must be a JSON object, got: {shorten(call.invalid_arguments)!r}; "
            f"expected {t.signature_hint}",
            True,
        )
    try:
        args, kwargs = t.bind(call.arguments, dataclasses.replace(ctx, call_id=call.id))
    except ValidationError as e:
        return _result(
            call,
            ctx,
            f"invalid arguments for {t.name}: {describe_errors(e)}; expected {t.signature_hint}",
            True,
        )
    try:
        value, error = await asyncio.wait_for(_invoke(t, args, kwargs), t.timeout_s)
    except TimeoutError:
        return _result(call, ctx, f"{t.name} timed out after {t.timeout_s:g} s", True)
    if error is not None:
        message = shorten(str(error), MESSAGE_CHARS)
        return _result(call, ctx, f"{t.name} failed: {error.__class__.__name__}: {message}", True)
    try:
        return _result(call, ctx, encode_output(value))
    except (PydanticSerializationError, TypeError, ValueError) as e:
        return _result(
            call, ctx, f"{t.name} returned a value that cannot be shown ({type(value).__name__}): {e}", True
        )


async def run_calls(
    registry: Registry, calls: Iterable[ToolCall], ctx: ToolContext, allowed: Collection[str]
) -> list[ToolResult]:
    """Run calls concurrently; results come back in call order."""
    return list(await asyncio.gather(*(run_call(registry, c, ctx, allowed) for c in calls)))
