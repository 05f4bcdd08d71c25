"""`p2e view ROLLOUT|CONV|FILE.rrd` opens a recording; `p2e observe` records as things happen."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from p2e.cli._common import console, open_log
from p2e.cli.rerun_flags import RERUN, RERUN_CONNECT, RERUN_SAVE
from p2e.errors import InvalidArgument
from p2e.obs.recording import RerunOptions, observe, record_conversation, record_rows
from p2e.obs.viewer import check_viewer, open_viewer, resolve_target
from p2e.store import EventLog


def view(
    target: str = typer.Argument(
        ..., metavar="ROLLOUT|CONV|FILE.rrd", help="a recording, conversation or rollout"
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", metavar="FILE.rrd", help="write the recording to FILE.rrd and do not open it"
    ),
    branch: str | None = typer.Option(None, "--branch", "-b", help="a conversation's branch (default: all)"),
    web: bool = typer.Option(
        False, "--web", help="serve the web viewer instead of a window (no display needed)"
    ),
    port: int = typer.Option(9090, "--port", help="with --web: the HTTP port of the web viewer"),
) -> None:
    """Open a recording in the Rerun viewer.

    A .rrd file opens as is. A conversation is recorded from the store first (every branch, or
    --branch), as is a rollout without a saved recording. Without a display, use --out to write
    the file (open it where there is a screen) or --web to serve the viewer over HTTP.

    Examples: p2e view demo | p2e view run.rrd | p2e view demo --out demo.rrd | p2e view demo --web
    """
    if out is not None and out.suffix != ".rrd":
        raise InvalidArgument(f"--out {out}: a recording file must end in .rrd")
    t = resolve_target(target, open_log)
    if t.kind == "file" and out is not None:
        raise InvalidArgument(f"{target} is a recording already; open it without --out")
    if out is None:
        check_viewer(web)  # before any work: no display means nothing to show it on
    file = out or t.path
    if t.kind == "conversation":
        n = record_conversation(open_log(), t.name, file, branch)
        console.print(f"recorded conversation [bold]{t.name}[/] ({n} events) to {file}")
    elif t.kind == "rollout" and (out is not None or not t.exists):
        rows = _rollout_rows(open_log(), t.name)
        n = record_rows(rows, t.name, file)
        console.print(f"recorded rollout [bold]{t.name}[/] ({n} episodes) to {file}")
    if out is not None:
        return
    proc = open_viewer(file, web=web, port=port)
    if not web:
        console.print(f"opened {file} in the Rerun viewer")
        return
    url = f"http://localhost:{port}?url=rerun%2Bhttp%3A%2F%2Flocalhost%3A9876%2Fproxy"
    console.print(f"serving the web viewer for {file} at {url} (Ctrl-C to stop)", soft_wrap=True)
    try:
        proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait()


def _rollout_rows(log: EventLog, rid: str) -> list[object]:
    """A rollout's rows, read by the rollout module (the one place that knows their layout)."""
    from p2e.rollouts.store import RolloutStore

    return list(RolloutStore(log).rows(rid))


def observe_cmd(
    conversations: list[str] = typer.Argument(None, metavar="[CONV]...", help="conversations to follow"),
    existing: bool = typer.Option(
        False, "--existing", help="without CONV: also record the conversations already in the store"
    ),
    seconds: float | None = typer.Option(None, "--for", metavar="SECONDS", help="stop after this long"),
    until_done: bool = typer.Option(
        False, "--until-done", help="stop once every named conversation has finished or failed"
    ),
    rerun: bool = RERUN,
    rerun_connect: str | None = RERUN_CONNECT,
    rerun_save: Path | None = RERUN_SAVE,
) -> None:
    """Record conversations to Rerun as they happen, from anywhere that reaches the store.

    Without CONV it follows every conversation created from now on (a rollout, a chat in
    another terminal); it runs until Ctrl-C, --for SECONDS, or --until-done.

    Examples: p2e observe --rerun | p2e observe demo --rerun-save demo.rrd --until-done
    """
    opts = RerunOptions.from_flags(rerun, rerun_connect, rerun_save)
    if not opts.enabled:
        raise InvalidArgument("say where to record: --rerun, --rerun-connect URL or --rerun-save FILE.rrd")
    if until_done and not conversations:
        raise InvalidArgument("--until-done needs the conversations to wait for (CONV...)")
    log = open_log()
    names = conversations or None
    deadline = None if seconds is None else time.monotonic() + seconds
    with observe(
        opts, log, conversations=names, new_only=not names and not existing, name="p2e observe"
    ) as obs:
        what = ", ".join(conversations) if conversations else "new conversations"
        console.print(f"recording {what} to Rerun; Ctrl-C to stop")
        try:
            while deadline is None or time.monotonic() < deadline:
                if obs.error is not None:
                    raise obs.error
                if until_done and obs.follower is not None and obs.follower.all_done():
                    break
                time.sleep(0.1)
        except KeyboardInterrupt:
            pass
    events = obs.recorder.events if obs.recorder else 0
    where = f" to {opts.save}" if opts.save else ""
    console.print(f"recorded {events} events{where}")
