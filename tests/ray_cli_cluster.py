"""A Ray cluster of several nodes on this machine, started with the `ray` CLI as a user starts one,
with Ray's token authentication on.

Each node is a `ray start --block` in its own session, with its own ports (every port that has a
fixed default is given a free one), under a temporary dir of its own: nothing collides with the
test session's Ray, and stopping the cluster never runs `ray stop` (which stops every Ray on the
machine). A node is killed as a machine fails: SIGKILL to its process group.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

RAY = str(Path(sys.executable).parent / "ray")
WORKER_PORTS = 60
"""Worker ports per node (one per worker process: the actors, the job's supervisor and driver)."""
FAST_FAILURE = {"RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "4"}
"""The GCS declares a silent node dead after ~2 s instead of ~15 s (the defaults are 3 s x 5)."""


def free_ports(n: int) -> list[int]:
    """`n` distinct ports free on 127.0.0.1 now (held open together, so none is given twice)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def free_range(n: int, taken: set[int]) -> int:
    """The first port of `n` consecutive ports below Linux's ephemeral range that are all free."""
    for _ in range(200):
        start = secrets.randbelow(30000 - 20000 - n) + 20000
        ports = range(start, start + n)
        if taken.isdisjoint(ports) and all(_bindable(p) for p in ports):
            taken.update(ports)
            return start
    raise RuntimeError(f"no {n} consecutive free ports between 20000 and 30000")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class Node:
    name: str
    ports: dict[str, int]
    proc: subprocess.Popen[bytes] | None = None
    id: str = ""
    """Ray's node id, known once the node has registered."""

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['metrics-export-port']}/metrics"


@dataclass
class CliCluster:
    """`workers` worker nodes and a head with the dashboard; one CPU each."""

    workers: int = 2
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rc", dir="/tmp")))
    token: str = field(default_factory=lambda: secrets.token_hex(32))  # as `ray get-auth-token --generate`
    nodes: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.token_path = self.root / "auth_token"
        self.token_path.write_text(self.token)
        self.token_path.chmod(0o600)
        # the Ray session dir lives under here: unix socket paths must stay under 107 characters
        self.temp_dir = self.root / "ray"
        names = ["head"] + [f"worker{i}" for i in range(1, self.workers + 1)]
        keys = [
            "node-manager-port",
            "object-manager-port",
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "runtime-env-agent-port",
            "metrics-export-port",
        ]
        head_keys = ["port", "dashboard-port", "ray-client-server-port"]
        ports = iter(free_ports(len(keys) * len(names) + len(head_keys)))
        taken: set[int] = set()
        for name in names:
            p = {k: next(ports) for k in keys + (head_keys if name == "head" else [])}
            p["min-worker-port"] = free_range(WORKER_PORTS, taken)
            p["max-worker-port"] = p["min-worker-port"] + WORKER_PORTS - 1
            self.nodes.append(Node(name, p))

    @property
    def head(self) -> Node:
        return self.nodes[0]

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.head.ports['port']}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.head.ports['dashboard-port']}"

    def env(self) -> dict[str, str]:
        """The environment of a client of this cluster (and of its nodes): the token, no other Ray."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        return env | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path)}

    def start(self, timeout: float = 90) -> None:
        for node in self.nodes:
            args = [RAY, "start", "--block", "--num-cpus=1", "--node-ip-address=127.0.0.1"]
            args += ["--disable-usage-stats", f"--temp-dir={self.temp_dir}"]
            args += [f"--{k}={v}" for k, v in node.ports.items()]
            if node is self.head:
                args += ["--head", "--include-dashboard=true", "--dashboard-host=127.0.0.1"]
            else:
                args += [f"--address={self.gcs_address}"]
            log = (self.root / f"{node.name}.log").open("wb")
            env = self.env() | (FAST_FAILURE if node is self.head else {})
            node.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
            log.close()
            # one node at a time: on a small machine, nodes registering at once time out
            n = len([x for x in self.nodes if x.proc is not None])
            self._wait(lambda n=n: len(self.alive()) == n, timeout, f"{n} alive nodes")
        by_port = {n.ports["node-manager-port"]: n for n in self.nodes}
        for summary in self.alive():
            by_port[summary["raylet"]["nodeManagerPort"]].id = summary["raylet"]["nodeId"]

    def _wait(self, ready: object, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if ready():  # type: ignore[operator]
                    return
            dead = [n.name for n in self.nodes if n.proc is not None and n.proc.poll() is not None]
            if dead:
                raise RuntimeError(f"ray start of {dead} exited: {self.logs()}")
            time.sleep(0.5)
        raise TimeoutError(f"no {what} within {timeout} s: {self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(self.root.glob("*.log")))

    def get(self, path: str, token: bool = True) -> tuple[int, object]:
        """GET a dashboard REST path, with the token as a user's HTTP client sends it (or without)."""
        headers = {"Authorization": f"Bearer {self.token}"} if token else {}
        request = urllib.request.Request(self.dashboard_url + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def alive(self) -> list[dict]:
        """The dashboard's summary of each alive node."""
        status, body = self.get("/nodes?view=summary")
        if status != 200:
            return []
        return [n for n in body["data"]["summary"] if n["raylet"]["state"] == "ALIVE"]  # type: ignore[index]

    def actors(self, class_name: str) -> list[dict]:
        """Alive actors of a class, through the state API (as `ray list actors` reads them)."""
        query = f"?filter_keys=class_name&filter_predicates=%3D&filter_values={class_name}&limit=1000"
        status, body = self.get("/api/v0/actors" + query)
        assert status == 200, body
        return [a for a in body["data"]["result"]["result"] if a["state"] == "ALIVE"]  # type: ignore[index]

    def kill(self, node: Node) -> None:
        """The node fails: its `ray start` and every process of its group die at once."""
        assert node.proc is not None
        os.killpg(node.proc.pid, signal.SIGKILL)
        node.proc.wait(timeout=30)

    def stop(self) -> None:
        """Kill every process of this cluster: the nodes' groups, then whatever any of them
        started in a session of its own (workers, the job's driver), found by the temp dir in
        its command line or environment."""
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.proc.pid, signal.SIGKILL)
                node.proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while (left := self._processes()) and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        shutil.rmtree(self.root, ignore_errors=True)

    def _processes(self) -> list[int]:
        mark = str(self.root).encode()
        out = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            with contextlib.suppress(OSError):
                if mark in (entry / "cmdline").read_bytes() or mark in (entry / "environ").read_bytes():
                    out.append(int(entry.name))
        return out


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample a node's metrics agent exports: name -> [(labels, value)]."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name].append((s.labels, s.value))
    return out
