"""`p2e observe` ends by itself when what it follows is done, and however it ends, the .rrd file it
wrote is complete: run as a user would, in a subprocess, against a conversation driven by the real
runtime (the local driver and the mock model)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from test_obs_rerun import AGENTS, read_rrd, texts, verify

from p2e.api import local_chat
from p2e.store import EventLog


def observe(store_env: dict[str, str], cwd: Path, *args: str) -> subprocess.Popen[str]:
    """`p2e observe ARGS...`, returned once it says it is recording."""
    env = {**os.environ, **store_env, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2e.cli", "observe", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("recording "), line + proc.communicate(timeout=30)[1]
    return proc


def finish(proc: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    """Its output once it has exited; killed if it has not within `timeout` (the test fails)."""
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_until_done_ends_once_the_root_has_answered(
    store_env: dict[str, str], log: EventLog, tmp_path: Path
) -> None:
    chat = local_chat("planner", "asked", agents=AGENTS, store_url=log.url, namespace=log.keys.ns)
    file = tmp_path / "asked.rrd"
    try:
        proc = observe(store_env, tmp_path, "asked", "--rerun-save", str(file), "--until-done")
        answer = chat.send("Weather in Paris?").answer  # delegates, then answers; no Finished event
    finally:
        chat.close()
    out, err = finish(proc, 120)  # it stops by itself: nothing else ends it
    assert proc.returncode == 0, err[-2000:]
    events = len(log.history(chat.id))
    assert f"recorded {events} events" in out
    verify(file)
    assert answer and answer in texts(read_rrd(file))


def test_sigterm_closes_the_recording(store_env: dict[str, str], log: EventLog, tmp_path: Path) -> None:
    chat = local_chat("planner", "stopped", agents=AGENTS, store_url=log.url, namespace=log.keys.ns)
    try:
        answer = chat.send("Weather in Lima?").answer
    finally:
        chat.close()
    file = tmp_path / "stopped.rrd"
    proc = observe(store_env, tmp_path, "stopped", "--rerun-save", str(file))  # runs until stopped
    proc.send_signal(signal.SIGTERM)
    out, err = finish(proc, 60)
    assert proc.returncode == 0, err[-2000:]
    assert f"recorded {len(log.history(chat.id))} events" in out  # the last poll made it in
    verify(file)
    assert answer and answer in texts(read_rrd(file))
