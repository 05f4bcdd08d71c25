"""Finding and opening recordings: what `p2e view` does, and the checks `--rerun` needs.

The Rerun viewer is a native window (the `rerun` binary installed with rerun-sdk). On a machine
without a display (a cluster node, CI, an SSH session) it cannot open, so every path that would
start it checks first and says what to do instead: save a file and open it elsewhere, connect to
a viewer that runs elsewhere, or serve the web viewer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from p2e.errors import NotFound, P2EError
from p2e.settings import settings
from p2e.store import EventLog
from p2e.store.server import p2e_home

RECORDING_SUFFIXES = (".rrd", ".rbl")
Kind = Literal["file", "conversation", "rollout"]


class ViewerUnavailable(P2EError):
    """The Rerun viewer cannot be started here."""


def recordings_dir() -> Path:
    """Where p2e keeps recordings it makes by default: `$P2E_HOME/recordings`."""
    return p2e_home() / "recordings"


def recording_path(kind: Literal["conversation", "rollout"], name: str) -> Path:
    """The default file of a conversation's or a rollout's recording (rollouts save theirs
    here unless told otherwise; `p2e view NAME` looks here first)."""
    return recordings_dir() / f"{kind}-{name}.rrd"


def viewer_binary() -> str:
    """The `rerun` executable: $P2E_RERUN_VIEWER, else the one beside this Python, else PATH."""
    exe = settings().rerun_viewer
    if exe:
        if not (Path(exe).is_file() and os.access(exe, os.X_OK)):
            raise ViewerUnavailable(f"P2E_RERUN_VIEWER={exe} is not an executable file; fix or unset it")
        return exe
    beside = Path(sys.executable).parent / "rerun"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("rerun")
    if found:
        return found
    raise ViewerUnavailable(
        "the Rerun viewer (`rerun`) is not installed in this environment; "
        "`pip install rerun-sdk` provides it (it is one of p2e's dependencies)"
    )


def has_display(env: Mapping[str, str] | None = None, platform: str | None = None) -> bool:
    """Whether a native window can open: on Linux and BSD that takes X11 or Wayland."""
    env = os.environ if env is None else env
    platform = platform or sys.platform
    if platform.startswith(("linux", "freebsd", "openbsd")):
        return bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))
    return True


NO_DISPLAY_HINT = (
    "no display to open the Rerun viewer on (DISPLAY and WAYLAND_DISPLAY are unset). "
    "Save a recording instead (--rerun-save FILE.rrd, or `p2e view TARGET --out FILE.rrd`) and open it "
    "where there is a screen (`rerun FILE.rrd`), send to a viewer running elsewhere "
    "(--rerun-connect rerun+http://HOST:9876/proxy), or serve the web viewer (`p2e view TARGET --web`)"
)


def check_viewer(web: bool = False, env: Mapping[str, str] | None = None, platform: str | None = None) -> str:
    """The viewer binary, once it is known that it can show something here."""
    exe = viewer_binary()
    if not web and not has_display(env, platform):
        raise ViewerUnavailable(NO_DISPLAY_HINT)
    return exe


def viewer_command(exe: str, file: Path, web: bool = False, port: int = 9090) -> list[str]:
    if web:
        return [exe, "--serve-web", "--web-viewer-port", str(port), str(file)]
    return [exe, str(file)]


def open_viewer(file: Path, web: bool = False, port: int = 9090) -> subprocess.Popen[bytes]:
    """Start the viewer on `file`. The native viewer is detached (it outlives this command);
    the web server runs in the foreground's process group, so Ctrl-C stops it."""
    exe = check_viewer(web)
    cmd = viewer_command(exe, file, web, port)
    try:
        if web:
            return subprocess.Popen(cmd)
        quiet = subprocess.DEVNULL
        return subprocess.Popen(cmd, stdin=quiet, stdout=quiet, stderr=quiet, start_new_session=True)
    except OSError as e:
        raise ViewerUnavailable(f"could not start the Rerun viewer ({' '.join(cmd)}): {e}") from e


class ViewTarget(BaseModel):
    """What `p2e view TARGET` resolved to: a file to open, or a conversation/rollout in the store
    whose recording must be made (at `path`) first."""

    kind: Kind
    name: str
    path: Path
    exists: bool


def resolve_target(target: str, log: Callable[[], EventLog]) -> ViewTarget:
    """A recording file; else a conversation (name or id); else a rollout id. A rollout's saved
    recording is preferred; a conversation's is made fresh from the store (it may have grown)."""
    p = Path(target).expanduser()
    if p.suffix in RECORDING_SUFFIXES or p.is_file():
        if not p.is_file():
            raise NotFound(f"no recording file {target}; check the path (recordings end in .rrd)")
        if p.suffix not in RECORDING_SUFFIXES:
            raise NotFound(f"{target} is not a Rerun recording (.rrd or .rbl)")
        return ViewTarget(kind="file", name=p.stem, path=p.resolve(), exists=True)
    saved = recording_path("rollout", target)
    if saved.is_file():
        return ViewTarget(kind="rollout", name=target, path=saved, exists=True)
    store = log()
    try:
        info = store.conversation(target)
        return ViewTarget(
            kind="conversation", name=info.name, path=recording_path("conversation", info.name), exists=False
        )
    except NotFound:
        pass
    if _rollout_exists(store, target):
        return ViewTarget(kind="rollout", name=target, path=saved, exists=False)
    raise NotFound(
        f"no recording file, conversation or rollout named {target!r}; `p2e conversation list` shows "
        f"the conversations, and recordings are .rrd files (saved ones live in {recordings_dir()})"
    )


def _rollout_exists(log: EventLog, rid: str) -> bool:
    """Whether the store has rollout `rid` (read through the key layout, without importing the
    rollout module: observers must not depend on the runtime's modules)."""
    return log.exists(log.keys.rollout(rid))
