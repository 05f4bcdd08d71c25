"""`p2e conversation ...`: list, show, stack, branches, tree, rewind, checkout, replay."""

from __future__ import annotations

import typer

from p2e.agents import load_team
from p2e.cli import ids
from p2e.cli._common import AGENTS, console, finite, open_log
from p2e.cli.fit import Col, FitTable
from p2e.cli.render import branch_tree, events_table, search_tree, stack_table, state_line, when
from p2e.cli.terminal import styled
from p2e.conversation import Conversation, rebuild
from p2e.errors import SequenceOutOfRange
from p2e.listing import STATUSES, list_conversations, parse_since
from p2e.runtime.guided_search import read_tree

app = typer.Typer(
    help="Inspect and steer conversations: history, interaction stack, branches.", no_args_is_help=True
)

CONV = typer.Argument(
    ...,
    metavar="CONV",
    help=f"conversation name or id, {ids.PREFIX} (see `p2e conversation list`)",
    callback=ids.on_conversation,
)
BRANCH = typer.Option(
    None, "--branch", "-b", help=f"branch name ({ids.PREFIX}); default: the checked-out branch"
)
LIST_COLUMNS = (
    Col("id", "id"),
    Col("name"),
    Col("status"),
    Col("created", drop=1),
    Col("events", "num", drop=2, justify="right"),
    Col("root agent", drop=3),
    Col("branches", "num", drop=4, justify="right"),
    Col("checked out", drop=5),
)


@app.command("list")
def list_(
    rollout: str | None = typer.Option(
        None,
        "--rollout",
        "-r",
        metavar="ID",
        help="only the episodes of this rollout",
        callback=ids.on_rollout,
    ),
    status: str | None = typer.Option(None, "--status", "-s", help=f"only these: {', '.join(STATUSES)}"),
    since: str | None = typer.Option(
        None,
        "--since",
        metavar="WHEN",
        help="only those created since: 30m, 2h, 7d ago, or a date (2025-01-31)",
    ),
    limit: int = typer.Option(20, "--limit", "-n", min=1, max=10_000, help="how many to show"),
    offset: int = typer.Option(0, "--offset", min=0, max=10**9, help="skip this many (the next page)"),
) -> None:
    """List conversations, newest first, a page at a time: id, name and status (on a wider
    terminal also when, events, root agent, branches and the checked-out branch).

    Ids are shown whole; every command takes any unique start of an id or name instead.
    `done` means idle after an answer, or finished.

    Examples: p2e conversation list --status failed --since 2h |
    p2e conversation list --rollout quickstart-1a2b --offset 20
    """
    page = list_conversations(
        open_log(),
        rollout=rollout,
        status=status,
        since=None if since is None else parse_since(since),
        limit=limit,
        offset=offset,
    )
    if not page.items and not page.broken:
        filtered = rollout or status or since or offset
        console.print(
            "no conversations match" if filtered else "no conversations yet; `make demo` records one"
        )
        return
    rows = [
        (
            c.info.id,
            c.info.name,
            c.status,
            when(c.info.created),
            str(c.info.events),
            c.info.root,
            str(c.info.branches),
            c.info.active,
        )
        for c in page.items
    ]
    console.print(FitTable(LIST_COLUMNS, rows))
    for e in page.broken:
        console.print(styled(("error:", "bold red"), f" {e}"), soft_wrap=True)
    shown = f"{offset + 1}-{offset + len(page.items)}" if page.items else "none"
    of = f" of {page.total}" if page.total is not None else ""
    if page.more:
        flags = [f"--{k} {v}" for k, v in (("rollout", rollout), ("status", status), ("since", since)) if v]
        flags += [f"--limit {limit}"] if limit != 20 else []
        nxt = " ".join(["p2e conversation list", *flags, f"--offset {offset + limit}"])
        console.print(f"{shown}{of}, newest first; next page: {nxt}", soft_wrap=True)
    elif offset:
        console.print(f"{shown}{of}, newest first; the last page")
    if page.broken:
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
    b = log.branch(conv, ids.branch(log, conv, branch))
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
    b = log.branch(conv, ids.branch(log, conv, branch))
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
    log = open_log()
    c = Conversation.open(log, conv, ids.branch(log, conv, branch)).rewind(seq, name)
    console.print(
        styled(
            "checked out new branch ",
            (c.branch.name, "bold"),
            f" of {conv}: events 0..{seq} of {c.branch.parent}; {state_line(c.state)}",
        )
    )


@app.command()
def checkout(
    conv: str = CONV,
    branch: str = typer.Argument(..., metavar="BRANCH", help=f"branch to check out ({ids.PREFIX})"),
) -> None:
    """Make BRANCH the conversation's checked-out branch."""
    log = open_log()
    b = log.checkout(conv, ids.branch(log, conv, branch) or branch)
    console.print(styled("checked out ", (b.name, "bold"), f" of {conv} ({b.length} events)"))


@app.command()
def replay(conv: str = CONV, branch: str | None = BRANCH, agents: str = AGENTS) -> None:
    """Re-run a branch with every model call answered from its recording, and say whether the
    new run matched it event by event (tools run again, so a clock may differ).

    Exits 0 when it matched, 1 when it did not. Example: p2e conversation replay demo
    """
    import asyncio

    from p2e.runtime.replay import replay_branch

    log = open_log()
    report = asyncio.run(replay_branch(log, load_team(agents), conv, ids.branch(log, conv, branch)))
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
    """Follow a conversation live: the stack, the last messages and tool calls, the scores, and
    the reply of the running step as its model writes it.

    Stops when the conversation finishes or fails (exit 1 if it failed), or on Ctrl-C.
    Example: p2e conversation watch demo --until-idle
    """
    from p2e.cli.watch import watch as follow

    log = open_log()
    code = follow(
        log,
        conv,
        ids.branch(log, conv, branch),
        once=once,
        last=last,
        interval=interval,
        until_idle=until_idle,
    )
    if code:
        raise typer.Exit(code)
