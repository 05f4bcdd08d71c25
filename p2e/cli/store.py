"""`p2e store status | start | stop`: the server behind every conversation."""

from __future__ import annotations

import typer
from rich.markup import escape

from p2e.cli._common import console
from p2e.redact import mask_url
from p2e.store import embedded_status, ensure_embedded, stop_embedded
from p2e.store.server import configured_url, describe, p2e_home

app = typer.Typer(
    help="The store: P2E_REDIS_URL if set, else an embedded Valkey under $P2E_HOME.", no_args_is_help=True
)


@app.command()
def status() -> None:
    """Say which store p2e uses and whether it answers (does not start anything)."""
    url = configured_url()
    if url:
        console.print(f"store: [bold]{escape(mask_url(url))}[/] (from P2E_REDIS_URL)")
        _describe(url)
        return
    info = embedded_status()
    if info is None:
        console.print(
            f"embedded store: [yellow]not running[/] (data dir {p2e_home() / 'valkey'}); "
            "any p2e command that needs it starts it, or run `p2e store start`"
        )
        return
    console.print(
        f"embedded store: [bold green]running[/] at [bold]{info.url}[/], pid {info.pid}, "
        f"data in {info.data_dir}"
    )
    _describe(info.url)


@app.command()
def start() -> None:
    """Start the embedded store (or find the one already running) and print its URL."""
    if configured_url():
        console.print(f"P2E_REDIS_URL is set ({escape(mask_url(configured_url() or ''))}): nothing to start")
        return
    info = ensure_embedded()
    console.print(f"embedded store running at [bold]{info.url}[/], pid {info.pid}, data in {info.data_dir}")


@app.command()
def stop() -> None:
    """Stop the embedded store; its append-only file keeps the data for the next start."""
    if configured_url():
        console.print(
            f"P2E_REDIS_URL is set ({escape(mask_url(configured_url() or ''))}): "
            "p2e does not stop a server it did not start"
        )
        raise typer.Exit(1)
    info = stop_embedded()
    if info is None:
        console.print("embedded store was not running")
    else:
        console.print(f"stopped the embedded store (pid {info.pid}); data kept in {info.data_dir}")


def _describe(url: str) -> None:
    d = describe(url)
    console.print(
        f"  {d['server']}, {d['keys']} keys, {d['used_memory']} used, "
        f"append-only file {'on' if d['aof_enabled'] else 'off'}"
    )
