"""A Ray that p2e starts itself (no --address) listens on the loopback only: nothing of it
(GCS, raylet, workers and actors, dashboard, agents, metrics exporter) is reachable from
another machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

psutil = pytest.importorskip("psutil")

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}

SCRIPT = """
import json, sys
import psutil
import p2e.api

rt = p2e.api.init(agents=sys.argv[1], store_url=sys.argv[2], namespace=sys.argv[3], num_cpus=1)
try:
    assert rt.chat("lead", "hello").send("hi").status == "idle"  # the actors are up and answer
    me = psutil.Process()
    found = []
    for p in [me, *me.children(recursive=True)]:  # gcs, raylet, dashboard, agents, workers
        try:
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    found.append([c.laddr.ip, c.laddr.port, p.name()])
        except psutil.Error:
            pass
    print(json.dumps(found))
finally:
    rt.shutdown()
"""


def test_a_local_ray_listens_on_the_loopback_only(store_url: str, namespace: str, tmp_path: Path) -> None:
    agents = tmp_path / "agents.yaml"
    agents.write_text(
        "agents:\n  lead: {model: mock/echo, placement: actor}\n"
        "providers:\n  mock:\n    rules: {echo: {default: hello}}\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # start one, never join
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(agents), store_url, namespace],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    listening = json.loads(out.stdout.strip().splitlines()[-1])
    names = {name for _, _, name in listening}
    assert {"gcs_server", "raylet"} <= names and len(listening) >= 5, listening
    assert [x for x in listening if x[0] not in LOOPBACK] == []
