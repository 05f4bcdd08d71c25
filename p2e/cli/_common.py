"""What every command needs: the store, a console."""

from __future__ import annotations

import typer
from rich.console import Console

from p2e.store import EventLog, connect

console = Console(highlight=False)

AGENTS = typer.Option(
    "experiments/agents.yaml",
    "--agents",
    envvar="P2E_AGENTS",
    help="the agents file (YAML)",
    show_default=True,
)


def open_log() -> EventLog:
    return connect()
