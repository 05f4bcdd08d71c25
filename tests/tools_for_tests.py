"""Tools that misbehave on purpose, loaded by test teams through `tool_modules`."""

from __future__ import annotations

import asyncio

from p2e.tools import REGISTRY, tool


@REGISTRY.register
@tool(timeout_s=0.3)
async def slow(seconds: float) -> str:
    """Sleep, to run past the timeout."""
    await asyncio.sleep(seconds)
    return "woke up"


@REGISTRY.register
@tool
def explode(reason: str) -> str:
    """Always raises."""
    raise RuntimeError(f"exploded: {reason}")
