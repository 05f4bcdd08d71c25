"""cluster.yaml is a configuration `ray up` accepts, and sets up what p2e needs on a cluster."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parent.parent
CONFIG = yaml.safe_load((ROOT / "cluster.yaml").read_text())


def _commands(*fields: str) -> list[str]:
    return [c for f in fields for c in CONFIG.get(f, [])]


def test_ray_accepts_it_as_ray_up_prepares_it() -> None:
    validate_config(CONFIG)  # Ray's own schema check, as `ray up` runs it
    prepared = prepare_config(CONFIG)  # merged with the provider's defaults, as `ray up` does
    validate_config(prepared)
    head = prepared["available_node_types"][prepared["head_node_type"]]
    workers = [t for n, t in prepared["available_node_types"].items() if n != prepared["head_node_type"]]
    assert "node_config" in head and workers and workers[0]["max_workers"] > workers[0]["min_workers"]
    # the defaults' docker block must not turn on a container that would skip our setup
    assert not prepared.get("docker", {}).get("image")
    # our commands survive the merge with the provider's defaults
    assert prepared["setup_commands"] == CONFIG["setup_commands"]


def test_every_node_runs_a_python_p2e_supports() -> None:
    needed = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    minimum = tuple(int(x) for x in re.fullmatch(r">=\s*(\d+)\.(\d+)", needed).groups())  # type: ignore[union-attr]
    setup = _commands("setup_commands")
    versions = [tuple(int(x) for x in m) for c in setup for m in re.findall(r"--python (\d+)\.(\d+)", c)]
    assert versions and all(v >= minimum for v in versions), (needed, setup)
    # p2e is installed into that env, and the env's bin is what `ray start` and jobs find first
    assert any("pip install" in c and "p2e-env/bin/python" in c and "/home/ubuntu/p2e" in c for c in setup)
    assert any("p2e-env/bin:$PATH" in c and ".bashrc" in c for c in setup)
    # never the image's python3 (3.10 on Ubuntu 22.04)
    assert not any(re.search(r"(^|\s)python3 -m pip", c) for c in setup)


def test_the_head_runs_a_locked_store_that_every_job_finds() -> None:
    assert "/home/ubuntu/p2e" in CONFIG["file_mounts"]
    head = " ".join(_commands("head_setup_commands"))
    assert "redis-server" in head and "appendonly yes" in head
    assert "requirepass" in head and "umask 077" in head  # a password only this user reads
    assert "P2E_REDIS_URL=redis://:$(cat ~/.p2e-redis-password)@" in head and ":6379" in head
    assert "> ~/.p2e-store-env" in head and "'. ~/.p2e-store-env' >> ~/.bashrc" in head  # shells too
    start = " ".join(_commands("head_start_ray_commands"))
    assert start.index(". ~/.p2e-store-env") < start.index("ray start --head")  # jobs inherit it
    assert "--port=6380" in start  # Ray's GCS port must not be the store's
    assert all("6380" in c for c in CONFIG["worker_start_ray_commands"] if "--address" in c)


def test_every_node_and_client_shares_ray_s_auth_token() -> None:
    assert CONFIG["file_mounts"].get("/home/ubuntu/.ray/auth_token") == "~/.ray/auth_token"
    commands = _commands("head_start_ray_commands", "worker_start_ray_commands")
    starts = [c for c in commands if "ray start" in c]
    assert starts and all("RAY_AUTH_MODE=token" in c for c in starts)


@pytest.mark.parametrize(
    "field",
    ["setup_commands", "head_setup_commands", "head_start_ray_commands", "worker_start_ray_commands"],
)
def test_commands_are_valid_shell(field: str) -> None:
    for command in CONFIG[field]:
        proc = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
        assert proc.returncode == 0, (command, proc.stderr)
