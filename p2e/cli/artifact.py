"""`p2e artifact list | show | diff`: every event as an addressable artifact."""

from __future__ import annotations

import json

import typer
from rich.syntax import Syntax

from p2e import artifacts
from p2e.cli import ids
from p2e.cli._common import console, open_log
from p2e.cli.fit import Col, FitTable
from p2e.cli.render import summary
from p2e.cli.terminal import styled, visible
from p2e.events import EVENT_KINDS

app = typer.Typer(help="Artifacts: events addressed as CONVERSATION/BRANCH/SEQ.", no_args_is_help=True)


@app.command("list")
def list_(
    conv: str = typer.Argument(
        ..., metavar="CONV", help=f"conversation name or id ({ids.PREFIX})", callback=ids.on_conversation
    ),
    branch: str | None = typer.Option(None, "--branch", "-b", help="only this branch's history"),
    kind: str | None = typer.Option(None, "--kind", "-k", help=f"one of: {', '.join(EVENT_KINDS)}"),
    agent: str | None = typer.Option(None, "--agent", "-a", help="only this agent's events"),
) -> None:
    """List artifacts of a conversation (every branch), or of one branch's history.

    Example: p2e artifact list demo --kind tool_result
    """
    if kind is not None and kind not in EVENT_KINDS:
        raise typer.BadParameter(
            f"unknown kind {kind!r}; use one of: {', '.join(EVENT_KINDS)}", param_hint="--kind"
        )
    log = open_log()
    items = artifacts.list_artifacts(log, conv, ids.branch(log, conv, branch), kind, agent)
    cols = (Col("ref", "id"), Col("kind", drop=1), Col("agent", drop=2), Col("what", "text"))
    rows = [(a.ref, a.kind, a.agent or "", summary(a.event)) for a in items]
    console.print(FitTable(cols, rows))
    console.print(f"{len(items)} artifacts")


@app.command()
def show(
    ref: str = typer.Argument(
        ..., metavar="REF", help=f"CONVERSATION/BRANCH/SEQ, e.g. demo/main/4 (each part: {ids.PREFIX})"
    ),
    raw: bool = typer.Option(False, "--json", help="print the artifact as JSON"),
) -> None:
    """Show one artifact: its event, where it is stored, and what it answers."""
    log = open_log()
    a = artifacts.get(log, ids.ref(log, ref))
    if raw:
        console.print_json(a.model_dump_json())
        return
    console.print(styled((a.ref, "bold"), f"  {a.kind}  agent {a.agent or '-'}"))
    if a.answers:
        console.print(f"answers {a.answers}")
    body = a.event.model_dump(mode="json", exclude={"seq"})
    console.print(Syntax(visible(json.dumps(body, indent=2, ensure_ascii=False)), "json", word_wrap=True))


@app.command()
def diff(
    a: str = typer.Argument(..., metavar="REF_A", help="first artifact ref"),
    b: str = typer.Argument(..., metavar="REF_B", help="second artifact ref"),
) -> None:
    """Show a unified diff of two artifacts' content.

    Example: p2e artifact diff demo/main/6 demo/b1/6
    """
    log = open_log()
    text = artifacts.diff(artifacts.get(log, ids.ref(log, a)), artifacts.get(log, ids.ref(log, b)))
    console.print(Syntax(visible(text), "diff") if text else "no differences")
