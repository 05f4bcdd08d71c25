"""`p2e store status | start | stop | url`: the server behind every conversation."""

from __future__ import annotations

import typer

from p2e.cli._common import console
from p2e.cli.terminal import styled
from p2e.redact import mask_url
from p2e.store import embedded_status, ensure_embedded, stop_embedded
from p2e.store.server import configured_url, describe, p2e_home, password_file

app = typer.Typer(
    help="The store: P2E_REDIS_URL if set, else an embedded Valkey under $P2E_HOME.", no_args_is_help=True
)


@app.command()
def status() -> None:
    """Say which store p2e uses and whether it answers (does not start anything)."""
    url = configured_url()
    if url:
        console.print(styled("store: ", (mask_url(url), "bold"), " (from P2E_REDIS_URL)"))
        _describe(url)
        return
    info = embedded_status()
    if info is None:
        console.print(
            styled(
                "embedded store: ",
                ("not running", "yellow"),
                f" (data dir {p2e_home() / 'valkey'}); "
                "any p2e command that needs it starts it, or run `p2e store start`",
            )
        )
        return
    console.print(
        styled(
            "embedded store: ",
            ("running", "bold green"),
            " at ",
            (mask_url(info.url), "bold"),
            f", pid {info.pid}, data in {info.data_dir}; password in {password_file()}",
        )
    )
    _describe(info.url)


@app.command()
def start() -> None:
    """Start the embedded store (or find the one already running) and print its URL."""
    if configured_url():
        console.print(f"P2E_REDIS_URL is set ({mask_url(configured_url() or '')}): nothing to start")
        return
    info = ensure_embedded()
    console.print(
        styled(
            "embedded store running at ",
            (mask_url(info.url), "bold"),
            f", pid {info.pid}, data in {info.data_dir}",
        )
    )


@app.command()
def stop() -> None:
    """Stop the embedded store; its append-only file keeps the data for the next start."""
    if configured_url():
        console.print(
            f"P2E_REDIS_URL is set ({mask_url(configured_url() or '')}): "
            "p2e does not stop a server it did not start"
        )
        raise typer.Exit(1)
    info = stop_embedded()
    if info is None:
        console.print("embedded store was not running")
    else:
        console.print(f"stopped the embedded store (pid {info.pid}); data kept in {info.data_dir}")


@app.command()
def url(
    show_secret: bool = typer.Option(
        False, "--show-secret", help="Print the password too (for redis-cli -u, or P2E_REDIS_URL elsewhere)."
    ),
) -> None:
    """Print the store's URL (its password masked unless --show-secret); starts the embedded
    store if needed. E.g. redis-cli -u "$(p2e store url --show-secret)" """
    target = configured_url() or ensure_embedded().url
    typer.echo(target if show_secret else mask_url(target))  # plain: no wrapping inside a URL


def _describe(url: str) -> None:
    d = describe(url)
    console.print(
        f"  {d['server']}, {d['keys']} keys, {d['used_memory']} used, "
        f"append-only file {'on' if d['aof_enabled'] else 'off'}"
    )
