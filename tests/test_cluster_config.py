"""cluster.yaml is a configuration `ray up` accepts, and sets up what p2e needs on a cluster."""

from __future__ import annotations

from pathlib import Path

import yaml
from ray.autoscaler._private.util import validate_config

CONFIG = yaml.safe_load((Path(__file__).resolve().parent.parent / "cluster.yaml").read_text())


def test_ray_accepts_it() -> None:
    validate_config(CONFIG)  # Ray's own schema check, as `ray up` runs it
    head = CONFIG["available_node_types"][CONFIG["head_node_type"]]
    workers = [t for name, t in CONFIG["available_node_types"].items() if name != CONFIG["head_node_type"]]
    assert "node_config" in head and workers and workers[0]["max_workers"] > workers[0]["min_workers"]


def test_every_node_installs_p2e_and_the_head_runs_the_store() -> None:
    assert any("pip install" in c and "p2e" in c for c in CONFIG["setup_commands"])
    assert "/home/ubuntu/p2e" in CONFIG["file_mounts"]
    head = " ".join(CONFIG["head_setup_commands"])
    assert "redis-server" in head and "appendonly yes" in head
    start = " ".join(CONFIG["head_start_ray_commands"])
    assert "P2E_REDIS_URL=redis://" in start and ":6379" in start
    assert "--port=6380" in start  # Ray's GCS port must not be the store's
    assert all("6380" in c for c in CONFIG["worker_start_ray_commands"] if "--address" in c)
