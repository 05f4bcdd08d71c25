"""Where a recording goes (spawned viewer, running viewer, file) and the thread that feeds it.

Commands that can record take three flags and turn them into `RerunOptions`; `observe(...)`
then follows the store in a background thread and logs to Rerun until the block ends:

```python
opts = RerunOptions.from_flags(rerun=True, rerun_save="out.rrd")
with observe(opts, log, conversations=[chat.id]) as obs:   # a no-op when opts is empty
    chat.send("Weather in Paris?")
    obs.rollout_rows(rows, rollout="r1")                      # rows and ledger snapshots too
```
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from p2e.errors import InvalidArgument
from p2e.obs.follow import StoreFollower, Update
from p2e.obs.rows import RolloutRow
from p2e.obs.viewer import check_viewer
from p2e.store import EventLog

if TYPE_CHECKING:
    import rerun as rr
    import rerun.blueprint as rrb

    from p2e.obs.recorder import Detail, Recorder

log = logging.getLogger("p2e.obs")

APP_ID = "p2e"
FORGET_S = 120.0
POLL_S, POLL_ALL_S = 0.1, 0.25
"""Seconds between polls: following named conversations, and following every new one."""
"""Following every conversation, one that has not moved for this long is let go (memory)."""
DEFAULT_PORT = 9876
_URL = re.compile(r"^rerun(\+https?)?://[^/]+/proxy$")


@dataclass(frozen=True)
class RerunOptions:
    """Where to send a recording. Several may be combined (watch live and keep a file)."""

    spawn: bool = False
    connect: str | None = None
    save: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.spawn or self.connect is not None or self.save is not None

    @classmethod
    def from_flags(
        cls, rerun: bool = False, rerun_connect: str | None = None, rerun_save: str | Path | None = None
    ) -> RerunOptions:
        """Validate the `--rerun`, `--rerun-connect URL`, `--rerun-save FILE.rrd` flags.

        A bare `HOST:PORT` (or a port) for `--rerun-connect` means that viewer's gRPC proxy."""
        url = None
        if rerun_connect is not None:
            url = rerun_connect.strip()
            if re.fullmatch(r"\d+", url):
                url = f"127.0.0.1:{url}"
            if "://" not in url:
                url = f"rerun+http://{url}/proxy"
            if not _URL.match(url):
                raise InvalidArgument(
                    f"--rerun-connect {rerun_connect!r} is not a viewer URL; use "
                    "rerun+http://HOST:9876/proxy (or just HOST:9876)"
                )
        save = None
        if rerun_save is not None:
            save = Path(rerun_save).expanduser()
            if save.suffix != ".rrd":
                raise InvalidArgument(f"--rerun-save {rerun_save}: a recording file must end in .rrd")
            if save.is_dir():
                raise InvalidArgument(f"--rerun-save {rerun_save} is a directory; name a .rrd file")
        return cls(spawn=rerun, connect=url, save=save)

    def with_default_save(self, path: Path) -> RerunOptions:
        """These options, saving to `path` unless a file was named (rollouts keep a recording
        beside their results by default)."""
        return self if self.save is not None else replace(self, save=path)


def start_recording(
    opts: RerunOptions,
    name: str,
    *,
    blueprint: rrb.Blueprint | None = None,
    recording_id: str | None = None,
    port: int = DEFAULT_PORT,
) -> rr.RecordingStream:
    """A recording stream sending where `opts` says; the viewer is started if asked (after
    checking that it can be). `name` is what the viewer lists the recording as."""
    import rerun as rr

    if not opts.enabled:
        raise InvalidArgument(
            "no Rerun output chosen: pass --rerun, --rerun-connect URL or --rerun-save F.rrd"
        )
    sinks: list[Any] = []
    if opts.spawn:
        exe = check_viewer()
        rr.spawn(port=port, connect=False, executable_path=exe, hide_welcome_screen=True)
        sinks.append(rr.GrpcSink(f"rerun+http://127.0.0.1:{port}/proxy"))
    if opts.connect is not None and not (opts.spawn and opts.connect.endswith(f":{port}/proxy")):
        sinks.append(rr.GrpcSink(opts.connect))
    if opts.save is not None:
        opts.save.parent.mkdir(parents=True, exist_ok=True)
        sinks.append(rr.FileSink(opts.save))
    rec = rr.RecordingStream(APP_ID, recording_id=recording_id or uuid.uuid4().hex)
    rec.set_sinks(*sinks, default_blueprint=blueprint)
    rec.send_recording_name(name)
    return rec


def finish_recording(rec: rr.RecordingStream) -> None:
    """Flush everything and close the sinks (a file gets its footer and is complete)."""
    rec.flush()
    rec.disconnect()


OBSERVER_NICE = 10
"""How much lower than its host's the observer thread runs (Linux, best effort). Observers are
never on the hot path: when the CPU is short, the work that observers watch goes first and the
observer catches up afterwards (its lag grows; nothing is lost, the store keeps everything)."""


def lower_priority(nice: int = OBSERVER_NICE) -> bool:
    """Lower the calling thread's CPU priority (threads it starts inherit it). False where the
    platform cannot (it is an optimisation, never a requirement)."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return False
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
        return True
    except OSError:
        return False


class Observation:
    """A `Recorder` fed by a `StoreFollower` polling in a background thread.

    The thread lowers its own priority, then opens the recording, so the Rerun SDK's threads
    (batching, encoding, writing) run at that priority too. Rows and ledger snapshots can be
    logged from the caller's thread meanwhile. `close()` polls one last time, so everything
    stored before it is in the recording. `on_updates` sees each poll's updates (metrics, tests).
    """

    def __init__(
        self,
        follower: StoreFollower | None,
        recorder: Callable[[], Recorder] | None,
        *,
        interval: float = 0.1,
        nice: int = OBSERVER_NICE,
        on_updates: Callable[[list[Update]], None] | None = None,
    ):
        self.follower = follower
        self._make = recorder
        self.recorder: Recorder | None = None
        self.interval = interval
        self.nice = nice
        self.on_updates = on_updates
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.polls = 0

    @property
    def active(self) -> bool:
        return self._make is not None

    def start(self) -> Observation:
        """Start following (or, without a follower, just open the recording here)."""
        if self.follower is None:
            self.recorder = self._make() if self._make else None
            return self
        self._thread = threading.Thread(target=self._run, name="p2e-observer", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self.error is not None:
            raise self.error
        return self

    def _run(self) -> None:
        assert self.follower is not None
        try:
            lower_priority(self.nice)
            self.recorder = self._make() if self._make else None
        except BaseException as e:  # e.g. no display for --rerun: raised again in start()
            self.error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            for updates in self.follower.follow(self.interval, self._stop.is_set):
                self.polls += 1
                self._take(updates)
        except Exception as e:  # an observer must never take its host down: say so, stop observing
            self.error = e
            log.warning("the observer stopped: %s", e, exc_info=True)

    def _take(self, updates: list[Update]) -> None:
        if self.recorder is not None:
            self.recorder.updates(updates)
        if self.on_updates is not None:
            self.on_updates(updates)

    def rollout_rows(self, rows: Iterable[RolloutRow | BaseModel | Mapping[str, Any]], rollout: str) -> None:
        if self.recorder is not None:
            self.recorder.rollout_rows(rows, rollout)

    def ledger(self, balances: Mapping[str, int | float | Decimal | str], ts: float | None = None) -> None:
        if self.recorder is not None:
            self.recorder.ledger(balances, ts)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            if self.error is None and self.follower is not None:
                self._take(self.follower.poll())  # what was stored since the last poll
        if self.recorder is not None:
            self.recorder.flush()  # the last summaries, over every row
            finish_recording(self.recorder.rec)

    def __enter__(self) -> Observation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def observe(
    opts: RerunOptions,
    log_: EventLog | None = None,
    *,
    conversations: Sequence[str] | None = None,
    branch: str | None = None,
    new_only: bool = False,
    follow: bool = True,
    name: str = "p2e",
    rollout: str | None = None,
    ledger: bool = False,
    interval: float | None = None,
    detail: Detail | None = None,
) -> Iterator[Observation]:
    """Record to Rerun for the duration of the block (nothing at all when `opts` is empty).

    `follow=False` records only what the caller logs (rows, ledger) and reads no store. The
    follower gets its own connection, so the caller's client is never shared across threads.
    `detail` defaults to `full` for named conversations and `compact` when following every
    (new) conversation, as a rollout does; `interval` (seconds between polls) to 0.1 and 0.25:
    longer polls bring bigger batches per conversation, and Rerun's cost is per call.
    """
    if not opts.enabled:
        yield Observation(None, None)
        return
    from p2e.obs.recorder import Recorder, blueprint

    convs: list[tuple[str, str]] = []
    follower = None
    if follow:
        if log_ is None:
            raise InvalidArgument("observe(follow=True) needs the store (an EventLog)")
        own = EventLog(log_.url, log_.keys.ns)
        forget = FORGET_S if conversations is None else None
        follower = StoreFollower(own, conversations, branch=branch, new_only=new_only, forget_s=forget)
        for c in follower.convs.values():
            convs.append((c.info.name, branch or c.info.active))
    layout = blueprint(convs, rollout, ledger)
    level: Detail = detail or ("full" if conversations is not None else "compact")

    def make() -> Recorder:
        return Recorder(start_recording(opts, name, blueprint=layout), detail=level)

    every = interval or (POLL_S if conversations is not None else POLL_ALL_S)
    obs = Observation(follower, make, interval=every)
    try:
        obs.start()
        yield obs
    finally:
        obs.close()
        if follower is not None:
            follower.log.close()


def record_conversation(log_: EventLog, conv: str, file: Path, branch: str | None = None) -> int:
    """Write a conversation as it is now (every branch, or one) to a .rrd file; returns the
    number of events recorded."""
    from p2e.obs.recorder import Recorder, blueprint

    follower = StoreFollower(log_, [conv], branch=branch)
    info = next(iter(follower.convs.values())).info
    names = [branch] if branch else [b.name for b in log_.branches(info.id)]
    layout = blueprint([(info.name, b) for b in names])
    rec = start_recording(RerunOptions(save=file), f"conversation {info.name}", blueprint=layout)
    recorder = Recorder(rec)
    recorder.updates(follower.poll())
    finish_recording(rec)
    return recorder.events


def record_rows(rows: Iterable[RolloutRow | BaseModel | Mapping[str, Any]], rollout: str, file: Path) -> int:
    """Write rollout rows (leaderboard, matrix, metrics) to a .rrd file; returns the row count."""
    from p2e.obs.recorder import Recorder, blueprint

    rec = start_recording(RerunOptions(save=file), f"rollout {rollout}", blueprint=blueprint((), rollout))
    recorder = Recorder(rec)
    recorder.rollout_rows(rows, rollout)
    recorder.flush()
    finish_recording(rec)
    return recorder.rows
