"""`p2e view ROLLOUT|CONV|FILE.rrd` opens a recording; `p2e observe` records as things happen."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from p2e.cli import ids
from p2e.cli._common import console, finite, open_log
from p2e.cli.rerun_flags import RERUN, RERUN_CONNECT, RERUN_SAVE
from p2e.cli.terminal import styled
from p2e.errors import InvalidArgument
from p2e.obs.observer import Observation, RerunOptions, observe, record_conversation, record_rows
from p2e.obs.viewer import RECORDING_SUFFIXES, check_viewer, open_viewer, resolve_target
from p2e.store import EventLog

if TYPE_CHECKING:
    from p2e.rollouts.store import Row


def view(
    target: str = typer.Argument(
        ..., metavar="ROLLOUT|CONV|FILE.rrd", help=f"a recording, conversation or rollout ({ids.PREFIX})"
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
    p = Path(target).expanduser()
    if not (p.suffix in RECORDING_SUFFIXES or p.is_file()):
        target = ids.conversation_or_rollout(open_log(), target)
    t = resolve_target(target, open_log)
    if t.kind == "file" and out is not None:
        raise InvalidArgument(f"{target} is a recording already; open it without --out")
    if out is None:
        check_viewer(web)  # before any work: no display means nothing to show it on
    file = out or t.path
    if t.kind == "conversation":
        n = record_conversation(open_log(), t.name, file, branch)
        console.print(styled("recorded conversation ", (t.name, "bold"), f" ({n} events) to {file}"))
    elif t.kind == "rollout" and (out is not None or not t.exists):
        rows = _rollout_rows(open_log(), t.name)
        n = record_rows(rows, t.name, file)
        console.print(styled("recorded rollout ", (t.name, "bold"), f" ({n} episodes) to {file}"))
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


def _rollout_rows(log: EventLog, rid: str) -> list[Row]:
    """A rollout's rows, read by the rollout module (the one place that knows their layout)."""
    from p2e.rollouts.store import RolloutStore

    return list(RolloutStore(log).rows(rid))


def observe_cmd(
    conversations: list[str] = typer.Argument(
        None, metavar="[CONV]...", help=f"conversations to follow ({ids.PREFIX})"
    ),
    rollout: str | None = typer.Option(
        None,
        "--rollout",
        metavar="ROLLOUT",
        help=f"follow a running rollout's new episodes ({ids.PREFIX})",
        callback=ids.on_rollout,
    ),
    existing: bool = typer.Option(
        False, "--existing", help="without CONV: also record the conversations already in the store"
    ),
    seconds: float | None = typer.Option(
        None, "--for", metavar="SECONDS", min=0, callback=finite, help="stop after this long"
    ),
    until_done: bool = typer.Option(
        False,
        "--until-done",
        help="stop once every named conversation is done (answered, finished or failed), "
        "or the --rollout has ended",
    ),
    rerun: bool = RERUN,
    rerun_connect: str | None = RERUN_CONNECT,
    rerun_save: Path | None = RERUN_SAVE,
) -> None:
    """Record conversations to Rerun as they happen, from anywhere that reaches the store.

    Without CONV it follows every conversation created from now on (a rollout, a chat in
    another terminal); it runs until Ctrl-C (or SIGTERM), --for SECONDS, or --until-done. A
    conversation is done when its checked-out branch has finished or failed, or its root agent
    has answered and nothing is outstanding; a rollout when its record says it is no longer
    running. However it stops, the recording is closed, so a --rerun-save file is complete.

    Examples: p2e observe --rerun | p2e observe demo --rerun-save demo.rrd --until-done |
    p2e observe --rollout 3f2a9c1b7d04 --rerun-save sweep.rrd --until-done
    """
    opts = RerunOptions.from_flags(rerun, rerun_connect, rerun_save)
    if not opts.enabled:
        raise InvalidArgument("say where to record: --rerun, --rerun-connect URL or --rerun-save FILE.rrd")
    if rollout is not None and conversations:
        raise InvalidArgument("follow conversations (CONV...) or a --rollout, not both")
    if until_done and not conversations and rollout is None:
        raise InvalidArgument("--until-done needs what to wait for: CONV... or --rollout ROLLOUT")
    log = open_log()
    conversations = [ids.conversation(log, c) for c in conversations or ()]
    ended = _rollout_ended(log, rollout) if rollout is not None else None
    names = conversations or None
    deadline = None if seconds is None else time.monotonic() + seconds
    with (
        _signals_stop(),
        observe(
            opts,
            log,
            conversations=names,
            new_only=not names and not existing,
            name=f"p2e observe {rollout}" if rollout else "p2e observe",
            rollout=rollout,
        ) as obs,
    ):
        what = ", ".join(conversations or ()) or (f"rollout {rollout}" if rollout else "new conversations")
        try:  # the line is printed inside: a signal that follows it at once is caught below
            console.print(f"recording {what} to Rerun; Ctrl-C to stop")
            while deadline is None or time.monotonic() < deadline:
                if obs.error is not None:
                    raise obs.error
                if until_done and _done(obs, ended):
                    break
                time.sleep(0.1)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the recording is closed below all the same
            pass
        if rollout is not None:
            obs.rollout_rows(_rollout_rows(log, rollout), rollout)  # the leaderboard, as it stands
    events = obs.recorder.events if obs.recorder else 0
    where = f" to {opts.save}" if opts.save else ""
    console.print(f"recorded {events} events{where}")


def _done(obs: Observation, rollout_ended: Callable[[], bool] | None) -> bool:
    if rollout_ended is not None:
        return rollout_ended()
    return obs.follower is not None and obs.follower.all_done()


def _rollout_ended(log: EventLog, rid: str, every_s: float = 1.0) -> Callable[[], bool]:
    """Whether the rollout's record says it is over (done, or interrupted), asked at most
    every `every_s` seconds; an unknown rollout is an error now."""
    from p2e.rollouts.store import RolloutStore

    store = RolloutStore(log)
    store.get(rid)
    asked = [0.0]

    def ended() -> bool:
        now = time.monotonic()
        if now - asked[0] < every_s:
            return False
        asked[0] = now
        return store.get(rid).status != "running"

    return ended


@contextlib.contextmanager
def _signals_stop() -> Iterator[None]:
    """SIGTERM stops the command as Ctrl-C does (a KeyboardInterrupt in the main loop), so the
    recording is closed and a .rrd file is complete; a second signal while it closes is ignored
    (it would cut the file short)."""
    seen: list[int] = []

    def stop(signum: int, frame: object) -> None:
        if not seen:
            seen.append(signum)
            raise KeyboardInterrupt

    old: dict[int, Any] = {}
    with contextlib.suppress(ValueError):  # not the main thread: no handlers, nothing to restore
        old = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
