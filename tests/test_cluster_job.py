"""The cluster path, as users run it: a paying rollout submitted as a Ray job to a three-node cluster
started with the `ray` CLI and Ray's token authentication, one worker node killed mid-way.

The job's logs and the dashboard's REST API are read with the token (and refused without it);
the node that dies hosts a supervisor with episodes in flight, so the retry path runs. When the
job has succeeded, every episode has one `done` row, the nodes' Prometheus metrics agree with the
rows, and the ledger adds up to the unit. Then `experiments/sweep.py` runs as a second job (a
Python driver finding the cluster through the job's RAY_ADDRESS). Last come two checks that
once failed (see the end of the test).
"""

from __future__ import annotations

import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from paying import assert_accounted, write_paying_spec
from ray.job_submission import JobStatus, JobSubmissionClient
from ray_cli_cluster import CliCluster, Node, scrape

from p2e.rollouts.store import RolloutStore
from p2e.store import EventLog

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = ROOT / "experiments"
P2E = str(Path(sys.executable).parent / "p2e")
REPEATS = 20
EPISODES = 2 * 3 * REPEATS  # variants x scenarios x repeats
BALANCE = 1000
"""Each agent's starting balance: the planner pays every advance (60 x 2 + 60 x 5 units)."""
PROGRESS = re.compile(r"\d+/\d+ episodes")


@pytest.fixture
def cluster() -> Iterator[CliCluster]:
    c = CliCluster(workers=2)
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture
def cluster_spec(tmp_path: Path) -> Path:
    """The payment sweep (as tests/test_faults.py's), its mock models slowed to 150 ms a call so
    that episodes are in flight on every node; three supervisors, one per node."""
    run = {"in_flight": 6, "supervisors": 3, "retries": 3}
    return write_paying_spec(tmp_path, repeats=REPEATS, run=run, balance=BALANCE)


def wait_for(what: str, ready: Callable[[], object], timeout: float, why: Callable[[], object]) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s: {why()}")
        time.sleep(0.2)


def node_to_kill(cluster: CliCluster, driver: str, hosts: set[str]) -> Node:
    """A worker node that hosts a supervisor (each has episodes in flight) and not the driver."""
    candidates = [n for n in cluster.nodes[1:] if n.id in hosts and n.id != driver]
    nodes = [(n.name, n.id) for n in cluster.nodes]
    assert candidates, f"no worker node hosts a supervisor: {hosts}, driver {driver}, nodes {nodes}"
    return candidates[0]


@pytest.mark.slow
def test_a_paying_rollout_as_a_ray_job_survives_a_node_and_adds_up(
    cluster: CliCluster, store_url: str, namespace: str, tmp_path: Path, cluster_spec: Path, log: EventLog
) -> None:
    # the token as an HTTP client sends it: Ray reads RAY_AUTH_MODE once per process, and this
    # one imported Ray (and may run the session's Ray) before the test set anything
    client = JobSubmissionClient(cluster.dashboard_url, headers={"Authorization": f"Bearer {cluster.token}"})
    env = {"P2E_REDIS_URL": store_url, "P2E_NAMESPACE": namespace, "P2E_HOME": str(tmp_path / "home")}
    job = client.submit_job(
        entrypoint=f"{P2E} rollout run {cluster_spec} --address auto",
        runtime_env={"env_vars": env},
    )
    store = RolloutStore(log)

    def failed() -> str:
        return f"{client.get_job_status(job)}: {client.get_job_logs(job)[-3000:]}"

    # some rows are in: every supervisor has episodes in flight
    wait_for("rollout", lambda: store.ids(), 120, failed)
    rid = store.ids()[0]
    wait_for("rows", lambda: store.count(rid) >= 4, 120, failed)
    assert client.get_job_status(job) == JobStatus.RUNNING

    # the dashboard's REST API answers with the token, and only with it
    code, body = cluster.get("/api/jobs/")
    assert code == 200 and [j["submission_id"] for j in body] == [job]  # type: ignore[union-attr]
    assert cluster.get("/api/jobs/", token=False)[0] == 401

    hosts = {a["node_id"] for a in cluster.actors("SupervisorActor")}  # as `ray list actors` shows them
    victim = node_to_kill(cluster, client.get_job_info(job).driver_node_id, hosts)
    before = store.count(rid)
    cluster.kill(victim)
    wait_for("dead node", lambda: len(cluster.alive()) == 2, 60, cluster.alive)
    assert before < EPISODES, "the rollout was over before the node died"

    running_logs = ""  # the logs as last read while episodes were still running
    deadline = time.monotonic() + 180
    while True:
        logs = client.get_job_logs(job)
        if store.count(rid) < EPISODES:  # (asked after reading: the logs are from before the end)
            running_logs = logs
        if (status := client.get_job_status(job)).is_terminal():
            break
        assert time.monotonic() < deadline, f"the job still runs after 180 s: {failed()}"
        time.sleep(1)
    logs = client.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    assert rid in logs

    # every episode once, none doubled, all done; the node's loss was retried
    rows = store.rows(rid)
    info = store.get(rid)
    assert info.status == "done" and info.episodes == EPISODES
    assert len(rows) == EPISODES and len({r.episode for r in rows}) == EPISODES
    assert all(r.status == "done" for r in rows), [r.error for r in rows]
    retried = [r for r in rows if r.attempts > 1 or r.abandoned]
    assert retried, "the node died with no episode in flight"
    assert victim.id not in {r.node for r in retried}
    assert len({r.node for r in rows}) >= 2  # the supervisors ran on more than one node
    assert_accounted(rows, info.ledger["payout"], log, episodes=EPISODES, balance=BALANCE)

    # the alive nodes' metrics agree with the rows they ran. The killed node's metrics agent
    # died with it, taking the counts of the episodes its supervisor had finished (their rows
    # name it): those are left out. Its retried episodes counted where they ran again.
    want: Counter[str] = Counter(f"{r.variant}/{r.status}" for r in rows if r.node != victim.id)
    got: dict[str, float] = {}

    def metrics_agree() -> bool:
        counted: dict[str, float] = defaultdict(float)
        for node in cluster.nodes:
            if node is victim:
                continue
            for labels, value in scrape(node.metrics_url).get("ray_p2e_episodes_total", []):
                if labels.get("rollout") == rid:
                    counted[f"{labels['variant']}/{labels['status']}"] += value
        got.clear()
        got.update(counted)
        return got == dict(want)

    wait_for("metrics equal to the rows", metrics_agree, 60, lambda: (got, dict(want)))

    # a Python driver as a job: experiments/sweep.py finds the cluster through the job's RAY_ADDRESS
    sweep = client.submit_job(
        entrypoint=f"cd {tmp_path} && {sys.executable} {EXPERIMENTS}/sweep.py {EXPERIMENTS}/quickstart.yaml",
        runtime_env={"env_vars": env},
    )
    wait_for(
        "the sweep job",
        lambda: client.get_job_status(sweep).is_terminal(),
        180,
        lambda: client.get_job_logs(sweep),
    )
    sweep_logs = client.get_job_logs(sweep)
    assert client.get_job_status(sweep) == JobStatus.SUCCEEDED, sweep_logs[-3000:]
    (sweep_rid,) = [i for i in store.ids() if i != rid]
    assert f"rollout {sweep_rid}: 24 episodes" in sweep_logs
    assert store.get(sweep_rid).status == "done" and (tmp_path / f"{sweep_rid}.parquet").is_file()

    # Checked last, so that a failure here leaves everything above proven:
    # - the supervisors are placed round-robin over the nodes (docs/cluster.md): one on each
    #   (Ray 2.60 ignores soft affinity for an actor that asks for no resource: spawn gives
    #   each one byte of memory);
    # - while episodes ran, the job's logs showed how far it was ("12/120 episodes ...").
    problems = []
    if len(hosts) != 3:
        problems.append(f"the 3 supervisors ran on {len(hosts)} nodes, not one on each")
    if not PROGRESS.search(running_logs):
        problems.append(f"no progress line in the running job's logs: {running_logs[-2000:]!r}")
    assert not problems, problems
