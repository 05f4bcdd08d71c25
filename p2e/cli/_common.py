"""What every command needs: the store, a console, checks of numbers."""

from __future__ import annotations

import math

import typer

from p2e.cli.terminal import DataConsole
from p2e.store import EventLog, connect

console = DataConsole()
"""Every str printed is data (no markup); styled lines are `Text` (`p2e.cli.terminal.styled`)."""

AGENTS = typer.Option(
    "experiments/agents.yaml",
    "--agents",
    envvar="P2E_AGENTS",
    help="the agents file (YAML)",
    show_default=True,
)


def finite(value: float | None) -> float | None:
    """An option's callback: refuse nan and infinities (they pass a range check, then a sleep
    or a comparison fails on them)."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


def open_log() -> EventLog:
    return connect()
