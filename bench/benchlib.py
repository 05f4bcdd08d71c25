"""What every benchmark here needs: a server to run against and a clean namespace afterwards.

The scripts run as `python bench/NAME.py`, so this module is importable as `benchlib`.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import psutil
import redis

from p2e.store.server import ensure_embedded, stop_embedded

EMBEDDED = "embedded valkey (p2e.store.server.ensure_embedded, temp P2E home, AOF everysec, no password)"
REPO = Path(__file__).resolve().parents[1]
SHARED_BENCH = REPO.parent / "shared" / "bench"
"""The machine's floor scripts (`ray_redis_floor.py`, `redis_floor.py`), beside the repository."""


class Server(NamedTuple):
    url: str
    source: str
    """`--url`, or the embedded Valkey started for the run."""
    pid: int | None
    """The server's process when it runs on this machine (for its CPU figures), else None."""
    home: Path
    """A temporary directory for the run (the embedded server's P2E home), removed afterwards."""


@contextlib.contextmanager
def server(url: str | None, prefix: str = "p2e-bench-") -> Iterator[Server]:
    """The server at `url`, or an embedded Valkey in a temporary P2E home, stopped afterwards.
    The embedded one runs without its password for the sitting: the floor scripts connect with
    host and port only, and p2e and its floor must run against the same server."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        if url:
            r = redis.Redis.from_url(url)
            pid = int(r.info("server").get("process_id", 0)) or None
            r.close()
            yield Server(url, "--url", pid if pid and psutil.pid_exists(pid) else None, home)
            return
        info = ensure_embedded(home)
        locked = redis.Redis.from_url(info.url)
        open_url = f"redis://127.0.0.1:{info.port}"
        try:
            locked.config_set("requirepass", "")
            yield Server(open_url, EMBEDDED, info.pid, home)
        finally:
            with contextlib.suppress(redis.RedisError):
                redis.Redis.from_url(f"redis://127.0.0.1:{info.port}").config_set(
                    "requirepass", info.password
                )
            locked.close()
            stop_embedded(home)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def server_info(r: redis.Redis) -> dict[str, object]:
    """Which server and how durable: its name and version, `appendonly`, `appendfsync`."""
    info = r.info("server")
    cfg: dict[str, object] = {}
    for k in ("appendonly", "appendfsync"):
        try:
            cfg.update(r.config_get(k))
        except redis.ResponseError:
            cfg[k] = "?"
    name = "valkey" if "valkey_version" in info else "redis"
    return {"server": f"{name} {info.get('valkey_version') or info.get('redis_version')}", **cfg}


def ns_keys(r: redis.Redis, ns: str) -> list[bytes]:
    return list(r.scan_iter(match=f"{ns}:*", count=10_000))


def delete_ns(r: redis.Redis | str, ns: str) -> int:
    """Delete every key of a benchmark's namespace; how many there were."""
    client = redis.Redis.from_url(r) if isinstance(r, str) else r
    keys = ns_keys(client, ns)
    for i in range(0, len(keys), 1_000):
        client.unlink(*keys[i : i + 1_000])
    if isinstance(r, str):
        client.close()
    return len(keys)


def ray_header(bench: str, **fields: object) -> dict[str, object]:
    """The fields every Ray benchmark's JSON starts with: what ran, on what, how loaded."""
    import ray  # (only the Ray benchmarks pay for importing it)

    return {
        "bench": bench,
        **fields,
        "python": platform.python_version(),
        "ray": ray.__version__,
        "cpus": os.cpu_count(),
        "load_avg_start": os.getloadavg(),
    }
