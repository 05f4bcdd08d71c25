"""`p2e rollout run` as a user runs it (a subprocess starting its own Ray): the Ray dashboard is
on by default, its URL printed once on stderr, and it answers while the rollout runs;
`--no-dashboard` starts none; and Ray prints no warning, on stderr or in its actors' logs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).parent / "ray")
MARKER = re.compile(r"^(:\w+:.*)?$")
DASHBOARD_LINE = re.compile(r"^Ray dashboard: (http://127\.0\.0\.1:\d+)( \(token auth: .*\))?$")

GATE = '''
import asyncio
from pathlib import Path

from p2e.tools import REGISTRY, tool


@REGISTRY.register
@tool(timeout_s=300)
async def wait_for_file(path: str) -> str:
    """Hold the episode until the test creates `path`."""
    while not Path(path).exists():
        await asyncio.sleep(0.05)
    return "released"
'''


def warnings(text: str) -> list[str]:
    return [line for line in text.splitlines() if "warning" in line.lower()]


def user_env(store_env: dict[str, str], **extra: str) -> dict[str, str]:
    """The user's environment: the dashboard at its default (the fixtures turn it off), a Ray
    started, never joined."""
    env = {**os.environ, **store_env, **extra}
    for k in ("P2E_DASHBOARD", "RAY_ADDRESS"):
        env.pop(k, None)
    return env


def gated_spec(tmp_path: Path, flag: Path) -> Path:
    """One episode whose agent waits for `flag` (a tool of a module in tmp_path)."""
    (tmp_path / "dashboard_gate.py").write_text(GATE)
    (tmp_path / "mock").mkdir()
    rules = {
        "rules": [
            {"role": "user", "tool_calls": [{"name": "wait_for_file", "arguments": {"path": str(flag)}}]},
            {"role": "tool", "text": "{{ last }}"},
        ]
    }
    (tmp_path / "mock" / "gate.yaml").write_text(yaml.safe_dump(rules))
    spec = {
        "name": "gated",
        "agents": {
            "agents": {"lead": {"model": "mock/gate", "tools": ["wait_for_file"]}},
            "tool_modules": ["dashboard_gate"],
            "providers": {"mock": {"rules_dirs": [str(tmp_path / "mock")]}},
        },
        "teams": [{"id": "t", "root": "lead"}],
        "scenarios": [{"id": "s", "message": "go", "reference": "released"}],
        "evaluators": [{"id": "contains", "per": "episode"}],
        "primary": "contains",
    }
    path = tmp_path / "gated.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def get(url: str, token: str | None = None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def test_a_rollout_serves_the_dashboard_on_the_loopback_and_says_where(
    store_env: dict[str, str], tmp_path: Path
) -> None:
    flag = tmp_path / "release"
    spec = gated_spec(tmp_path, flag)
    env = user_env(store_env, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    with (tmp_path / "stdout").open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "p2e.cli", "rollout", "run", str(spec)],
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        try:
            assert proc.stderr is not None
            first = proc.stderr.readline().rstrip("\n")  # printed once the actors are up
            line = DASHBOARD_LINE.match(first)
            assert line, f"stderr's first line: {first!r}"  # (a Ray warning before it fails too)
            url, token_auth = line.group(1), line.group(2) is not None
            token = None
            if token_auth:  # as the line says: `ray get-auth-token` prints the token
                token = subprocess.run(
                    [RAY, "get-auth-token"], capture_output=True, text=True, env=env
                ).stdout
                assert get(f"{url}/api/version")[0] == 401
            status, body = get(f"{url}/api/version", token)  # the episode is held: the rollout runs
            assert status == 200 and "ray_version" in json.loads(body)
        finally:
            flag.touch()
            _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "1 episodes, 0 failed" in (tmp_path / "stdout").read_text()
    assert "Ray dashboard" not in err and warnings(err) == []


def test_no_dashboard_and_no_ray_warnings_in_a_payment_sweep(
    store_env: dict[str, str], tmp_path: Path
) -> None:
    """Its agents pay through their Wallet actors, from tool threads of an async actor: no
    "blocking ray.get" warning in the actors' logs; no token-auth warning on stderr."""
    spec = yaml.safe_load((ROOT / "experiments" / "payment_sweep.yaml").read_text())
    spec["agents"]["providers"]["mock"]["rules_dirs"] = [str(ROOT / "experiments" / "mock")]
    spec["repeats"] = 1
    path = tmp_path / "payment_sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    with tempfile.TemporaryDirectory(prefix="ray", dir="/tmp") as ray_tmp:  # short: Ray's sockets
        proc = subprocess.run(
            [sys.executable, "-m", "p2e.cli", "rollout", "run", str(path), "--no-dashboard"],
            capture_output=True,
            text=True,
            env=user_env(store_env, RAY_TMPDIR=ray_tmp),
            cwd=tmp_path,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        assert "6 episodes, 0 failed" in proc.stdout
        assert "Ray dashboard" not in proc.stderr and warnings(proc.stderr) == []
        actor_logs = list(Path(ray_tmp).glob("ray/session_*/logs/worker-*.err"))
        assert actor_logs
        # Ray writes an actor's warnings bare ("Using blocking ray.get inside async actor..."):
        # nothing but Ray's markers (:job_id:..., :actor_name:...) is there in a clean run
        printed = [line for f in actor_logs for line in f.read_text().splitlines() if not MARKER.match(line)]
        assert printed == []
