"""The Ray dashboard of a command that starts or joins Ray: on or off, and the line saying where.

A Ray that p2e starts for `rollout run` runs its dashboard on 127.0.0.1 (`--no-dashboard` or
P2E_DASHBOARD=0: none); `p2e chat` starts without one (P2E_DASHBOARD=1: with). The command says
once, on stderr, where it is, and with Ray's token authentication on, how to pass the token
(docs/cluster.md, "Ray's token authentication").
"""

from __future__ import annotations

import logging

import typer

TOKEN_HINT = (
    "token auth: the page asks for the token once, `ray get-auth-token` prints it; "
    "an HTTP client sends `Authorization: Bearer <token>`"
)


def ray_options(address: str | None, dashboard: bool) -> dict[str, object]:
    """Options for a Ray started (or joined) for one command: Ray's start-up lines left out (this
    module prints the one that matters), its warnings kept; a local one also keeps its actors'
    output in its logs and runs the dashboard if `dashboard`."""
    quiet: dict[str, object] = {"logging_level": logging.WARNING}
    if address is not None:
        return quiet
    return {**quiet, "include_dashboard": dashboard, "log_to_driver": False}


def wanted(default: bool) -> bool:
    """P2E_DASHBOARD=1 or 0, else the command's `default`."""
    from actors.actorset import dashboard_setting

    return dashboard_setting(default)


def announce() -> None:
    """Print where the dashboard of the Ray this command started or joined is, if it has one."""
    from actors.actorset import dashboard

    d = dashboard()
    if d is not None:
        typer.echo(f"Ray dashboard: {d.url}" + (f" ({TOKEN_HINT})" if d.token_auth else ""), err=True)
