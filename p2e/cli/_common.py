"""What every command needs: the store, a console."""

from __future__ import annotations

from rich.console import Console

from p2e.store import EventLog, connect

console = Console(highlight=False)


def open_log() -> EventLog:
    return connect()
