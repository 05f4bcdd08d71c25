"""`p2e conversation ...`: list, show, stack, branches, tree, rewind, checkout, replay."""

from __future__ import annotations

import typer

from p2e.agents import load_team
from p2e.cli._common import AGENTS, console, finite, open_log
from p2e.cli.render import branch_tree, events_table, search_tree, stack_table, state_line, when
from p2e.cli.terminal import DataTable, styled
from p2e.conversation import Conversation, rebuild
from p2e.errors import CorruptData, SequenceOutOfRange
from p2e.runtime.guide import read_tree

app = typer.Typer(
    help="Inspect and steer conversations: history, interaction stack, branches.", no_args_is_help=True
)

CONV = typer.Argument(..., metavar="CONV", help="conversation name or id (see `p2e conversation list`)")
BRANCH = typer.Option(None, "--branch", "-b", help="branch name; default: the checked-out branch")


@app.command("list")
def list_() -> None:
    """List conversations with their root agent, branches and event counts."""
    rows = open_log().conversation_rows()
    convs = [r for r in rows if not isinstance(r, CorruptData)]
    broken = [r for r in rows if isinstance(r, CorruptData)]
    if not rows:
        console.print("no conversations yet; `make demo` records one")
        return
    table = DataTable()
    for col in ("name", "id", "root agent", "branches", "events", "checked out", "created"):
        table.add_column(col)
    for c in convs:
        table.add_row(c.name, c.id, c.root, str(c.branches), str(c.events), c.active, when(c.created))
    console.print(table)
    for e in broken:
        console.print(styled(("error:", "bold red"), f" {e}"))
    if broken:
        raise typer.Exit(1)


@app.command()
def show(
    conv: str = CONV,
    branch: str | None = BRANCH,
    start: int = typer.Option(0, "--from", help="first seq to show"),
    end: int | None = typer.Option(None, "--to", help="last seq to show (inclusive)"),
) -> None:
    """Show a branch's events; a delegate's events are indented under its caller.

    Example: p2e conversation show demo --from 2 --to 8
    """
    log = open_log()
    b = log.branch(conv, branch)
    for seq in (start, end):
        if seq is not None and not 0 <= seq < max(b.length, 1):
            raise SequenceOutOfRange(seq, b.length)
    events = log.read(b, 0, None if end is None else end + 1)
    console.print(events_table(events, f"{conv} / {b.name}", start=start))
    console.print(state_line(rebuild(log, b)))
    note = log.conversation(conv).note
    if note:  # e.g. an abandoned rollout attempt: it is never counted
        console.print(styled(f"note: {note}", style="yellow"), soft_wrap=True)


@app.command()
def stack(
    conv: str = CONV,
    branch: str | None = BRANCH,
    at: int | None = typer.Option(None, "--at", help="show the stack just after event SEQ"),
) -> None:
    """Show the interaction stack: the root at the bottom, each delegate above its caller."""
    log = open_log()
    b = log.branch(conv, branch)
    if at is not None and not 0 <= at < b.length:
        raise SequenceOutOfRange(at, b.length)
    state = rebuild(log, b, None if at is None else at + 1)
    where = f"after seq {at}" if at is not None else "at its head"
    console.print(stack_table(state, f"{conv} / {b.name} {where}"))
    console.print(state_line(state))


@app.command()
def branches(conv: str = CONV) -> None:
    """Show the branches as a tree of forks, with the checked-out one marked."""
    log = open_log()
    console.print(branch_tree(log.conversation(conv), log.branches(conv)))


@app.command()
def tree(conv: str = CONV) -> None:
    """Show the guided-search tree: every child a search forked (agents with `guide:`), its
    value and visits, and the path the conversation continued on.

    Each node is a branch: `p2e conversation show CONV -b g3` shows one child's events, and
    `p2e eval show CONV` its score.
    """
    log = open_log()
    nodes = read_tree(log, conv)
    if not nodes:
        console.print(f"{conv} has no guided-search nodes (no agent of it has a `guide:` policy)")
        return
    console.print(search_tree(log.conversation(conv), nodes))


@app.command()
def rewind(
    conv: str = CONV,
    seq: int = typer.Argument(..., metavar="SEQ", help="the last event to keep"),
    branch: str | None = BRANCH,
    name: str | None = typer.Option(None, "--name", "-n", help="name of the new branch (default b<N>)"),
) -> None:
    """Go back to just after event SEQ: fork a new branch there and check it out.

    Nothing is deleted: the old branch keeps its events, and `checkout` returns to it.
    Example: p2e conversation rewind demo 4
    """
    c = Conversation.open(open_log(), conv, branch).rewind(seq, name)
    console.print(
        styled(
            "checked out new branch ",
            (c.branch.name, "bold"),
            f" of {conv}: events 0..{seq} of {c.branch.parent}; {state_line(c.state)}",
        )
    )


@app.command()
def checkout(
    conv: str = CONV, branch: str = typer.Argument(..., metavar="BRANCH", help="branch to check out")
) -> None:
    """Make BRANCH the conversation's checked-out branch."""
    b = open_log().checkout(conv, branch)
    console.print(styled("checked out ", (b.name, "bold"), f" of {conv} ({b.length} events)"))


@app.command()
def replay(conv: str = CONV, branch: str | None = BRANCH, agents: str = AGENTS) -> None:
    """Re-run a branch with every model call answered from its recording, and say whether the
    new run matched it event by event (tools run again, so a clock may differ).

    Exits 0 when it matched, 1 when it did not. Example: p2e conversation replay demo
    """
    import asyncio

    from p2e.runtime.replay import replay_branch

    report = asyncio.run(replay_branch(open_log(), load_team(agents), conv, branch))
    for d in report.tool_outputs:
        console.print(
            f"  note: seq {d.seq}: the tool ran again and answered differently:\n    "
            f"recorded {d.recorded}\n    replayed {d.replayed}"
        )
    if report.matched:
        console.print(
            styled(
                ("matched", "bold green"),
                f": {report.source} re-ran as {report.replay}, {report.events} events",
            )
        )
        return
    console.print(styled(("differs", "bold red"), f": {report.source} re-ran as {report.replay}"))
    for d in report.differences[:20]:
        console.print(f"  seq {d.seq}:\n    recorded {d.recorded}\n    replayed {d.replayed}")
    raise typer.Exit(1)


@app.command()
def watch(
    conv: str = CONV,
    branch: str | None = BRANCH,
    once: bool = typer.Option(False, "--once", help="print one frame and exit (scripts, tests)"),
    last: int = typer.Option(
        12, "--last", "-n", min=1, max=10_000, help="how many of the last events to show"
    ),
    interval: float = typer.Option(
        0.25, "--interval", min=0.02, max=3600, callback=finite, help="seconds between polls of the store"
    ),
    until_idle: bool = typer.Option(False, "--until-idle", help="also stop once the root agent has answered"),
) -> None:
    """Follow a conversation live: the stack, the last messages and tool calls, the scores.

    Stops when the conversation finishes or fails (exit 1 if it failed), or on Ctrl-C.
    Example: p2e conversation watch demo --until-idle
    """
    from p2e.cli.watch import watch as follow

    code = follow(open_log(), conv, branch, once=once, last=last, interval=interval, until_idle=until_idle)
    if code:
        raise typer.Exit(code)
