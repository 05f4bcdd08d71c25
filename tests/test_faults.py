"""Faults in the middle of a paying rollout: money moves once per episode, whatever is retried.

`experiments/payment_sweep.yaml` with a model that takes 150 ms a call, so that payments are in
flight when the fault hits: the driver killed with SIGKILL or stopped with Ctrl-C (then
resumed), a supervisor killed (its episodes retried), the store killed (then resumed).
Afterwards the rollout's accounting, the rows' ledger deltas plus the bounty's payout, must
equal what the journal says, to the unit, and each episode's advance must have been paid
exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import paying
import pytest
import ray
from conftest import Cli
from paying import write_paying_spec

from p2e.api import run_rollout
from p2e.rollouts.run import RolloutResult
from p2e.rollouts.store import LEASE_S, RolloutStore
from p2e.store import EventLog
from p2e.store.server import ensure_embedded, stop_embedded

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def paying_spec(tmp_path: Path) -> Path:
    """The payment sweep, 4 repeats (24 episodes), its mock models slowed to 150 ms a call."""
    return write_paying_spec(tmp_path, repeats=4, run={"in_flight": 6, "supervisors": 2, "retries": 3})


def assert_accounted(result: RolloutResult, log: EventLog) -> None:
    """Rows + payout == journal, to the unit; each episode paid its fee exactly once."""
    paying.assert_accounted(result.rows, result.info.ledger["payout"], log, episodes=24, balance=100)


def start_rollout(
    spec: Path, env: dict[str, str], cwd: Path, store: RolloutStore, new_session: bool = False
) -> tuple[subprocess.Popen[str], str]:
    """`p2e rollout run SPEC` in a subprocess, returned once 4 of its episodes have rows (the
    others are in flight): the process and the rollout id."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2e.cli", "rollout", "run", str(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
        start_new_session=new_session,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        ids = store.ids()
        if ids and store.count(ids[0]) >= 4:
            return proc, ids[0]
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no 4 rows within 180 s: {proc.communicate(timeout=10)[1][-3000:]}")


@pytest.mark.slow
def test_a_driver_killed_mid_payment_sweep_resumes_and_pays_once(
    ray_session: None,
    store_env: dict[str, str],
    tmp_path: Path,
    paying_spec: Path,
    log: EventLog,
    cli: Cli,
) -> None:
    store = RolloutStore(log)
    proc, rid = start_rollout(paying_spec, {**os.environ, **store_env}, tmp_path, store, new_session=True)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started, without a word
    proc.wait(timeout=30)
    assert store.count(rid) < 24

    deadline = time.monotonic() + LEASE_S + 10
    while store.get(rid).status != "interrupted" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert store.get(rid).status == "interrupted"  # not `running`: its driver is gone
    code, out, _ = cli("rollout", "show", rid)
    assert code == 0 and f"--resume {rid}" in out

    result = run_rollout(
        paying_spec, store_url=store_env["P2E_REDIS_URL"], namespace=store_env["P2E_NAMESPACE"], resume=rid
    )
    assert result.info.status == "done"
    orphans = [name for r in result.rows for name in r.abandoned]
    assert orphans, "the kill cut off no episode in flight"
    for name in orphans:
        assert log.conversation(name).note.startswith("abandoned")
    code, out, _ = cli("conversation", "show", orphans[0])
    assert code == 0 and "note: abandoned" in out
    code, out, _ = cli("rollout", "show", rid, "--rows")
    assert code == 0 and f"{len(orphans)} abandoned attempts" in out
    assert_accounted(result, log)


@pytest.mark.slow
def test_ctrl_c_mid_payment_sweep_then_resume_pays_once(
    ray_session: None, store_env: dict[str, str], tmp_path: Path, paying_spec: Path, log: EventLog
) -> None:
    store = RolloutStore(log)
    proc, rid = start_rollout(paying_spec, {**os.environ, **store_env}, tmp_path, store)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 130 and f"--resume {rid}" in out, err[-2000:]
    assert "Traceback" not in out + err
    assert store.get(rid).status == "interrupted" and store.count(rid) < 24
    result = run_rollout(
        paying_spec, store_url=store_env["P2E_REDIS_URL"], namespace=store_env["P2E_NAMESPACE"], resume=rid
    )
    assert result.info.status == "done"
    assert_accounted(result, log)


@pytest.mark.slow
def test_a_supervisor_killed_mid_payment_sweep_pays_once(
    ray_session: None, store_url: str, namespace: str, paying_spec: Path, log: EventLog
) -> None:
    rows: list[str] = []
    killed: list[str] = []
    rid: list[str] = []

    def killer() -> None:
        deadline = time.monotonic() + 120
        while len(rows) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        name = f"{namespace}:{rid[0]}:supervisor:0"
        ray.kill(ray.get_actor(name, namespace="p2e"), no_restart=False)
        killed.append(name)

    t = threading.Thread(target=killer, daemon=True)

    def on_start(info: object, *_: object) -> None:
        rid.append(info.id)  # type: ignore[attr-defined]
        t.start()

    result = run_rollout(
        paying_spec,
        store_url=store_url,
        namespace=namespace,
        on_start=on_start,
        on_row=lambda r: rows.append(r.episode),
    )
    t.join(5)
    assert killed
    retried = [r for r in result.rows if r.abandoned]
    assert retried, "the kill hit no episode in flight"
    assert_accounted(result, log)
    assert Decimal(result.info.ledger["payout"]["paid"]["planner"]) == 15


@pytest.mark.slow
def test_the_store_killed_mid_payment_sweep_gives_one_clear_line_and_resume_finishes(
    ray_session: None, namespace: str, tmp_path: Path, paying_spec: Path
) -> None:
    """The embedded store (its own, in a fresh P2E_HOME) is killed with SIGKILL while the
    rollout pays: the driver stops with one line naming the store and the resume command, no
    traceback; once the store is started again, `--resume` finishes and the money adds up."""
    home = tmp_path / "home"
    server = ensure_embedded(home)
    env = {k: v for k, v in os.environ.items() if k != "P2E_REDIS_URL"}
    env |= {"P2E_HOME": str(home), "P2E_NAMESPACE": namespace}
    log = EventLog(server.url, namespace)
    proc, rid = start_rollout(paying_spec, env, tmp_path, RolloutStore(log))
    try:
        log.close()
        os.kill(server.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, (out[-2000:], err[-2000:])
    assert "Traceback" not in out + err and "ConnectionError" not in out + err
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(lines) == 1, err[-3000:]
    assert f"stopped answering during rollout {rid}" in lines[0] and f"--resume {rid}" in lines[0]

    server = ensure_embedded(home)  # started again: it reloads its append-only file
    try:
        log = EventLog(server.url, namespace)
        store = RolloutStore(log)
        deadline = time.monotonic() + LEASE_S + 10
        while store.get(rid).status == "running" and time.monotonic() < deadline:
            time.sleep(0.5)  # the dead driver's lease runs out
        assert store.get(rid).status == "interrupted"
        result = run_rollout(paying_spec, store_url=server.url, namespace=namespace, resume=rid)
        assert result.info.status == "done"
        assert_accounted(result, log)
        log.close()
    finally:
        stop_embedded(home)
