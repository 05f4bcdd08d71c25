"""Test fixtures: a real Redis-protocol server for the whole session, a fresh namespace per test.

By default the session starts the embedded Valkey (the same code path users get) in a temporary
P2E_HOME. With P2E_TEST_REDIS_URL set (CI does, for 127.0.0.1:6379) the store tests run against
that server instead, so the store is proven on stock Redis too. Each test writes under its own
namespace and deletes it afterwards, so an existing server's data is left alone.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
import redis

from p2e.store import EventLog
from p2e.store.server import ensure_embedded, stop_embedded


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that touches the store is marked `store`, so CI can rerun them on Redis."""
    for item in items:
        if "store_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.store)


@pytest.fixture(scope="session")
def store_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("p2e-home")


@pytest.fixture(scope="session")
def store_url(store_home: Path) -> Iterator[str]:
    url = os.environ.get("P2E_TEST_REDIS_URL")
    if url:
        redis.Redis.from_url(url).ping()  # fail loudly if CI's Redis is not there
        yield url
        return
    info = ensure_embedded(store_home)
    yield info.url
    stop_embedded(store_home)


@pytest.fixture
def namespace(store_url: str) -> Iterator[str]:
    ns = f"p2etest-{uuid.uuid4().hex[:10]}"
    yield ns
    r = redis.Redis.from_url(store_url)
    keys = list(r.scan_iter(match=f"{ns}:*", count=1000))
    for i in range(0, len(keys), 500):
        r.unlink(*keys[i : i + 500])
    r.close()


@pytest.fixture
def log(store_url: str, namespace: str) -> Iterator[EventLog]:
    el = EventLog(store_url, namespace)
    yield el
    el.close()


@pytest.fixture
def store_env(
    store_url: str, namespace: str, store_home: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """Environment that points the CLI (in-process or a subprocess) at the test store. A Ray
    that the CLI starts runs no dashboard (P2E_DASHBOARD=0): a few seconds less per start on 2
    cores; tests/test_dashboard.py checks the default."""
    env = {
        "P2E_REDIS_URL": store_url,
        "P2E_NAMESPACE": namespace,
        "P2E_HOME": str(store_home),
        "P2E_DASHBOARD": "0",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


from openai_server import OpenAIServer  # noqa: E402  (cheap: it imports aiohttp only when started)


@pytest.fixture(scope="session")
def _openai_server_session() -> Iterator[OpenAIServer]:
    """One OpenAI-compatible test server for the session; each test gets it reset."""
    with OpenAIServer() as server:
        yield server


@pytest.fixture
def openai_server(_openai_server_session: OpenAIServer) -> Iterator[OpenAIServer]:
    """The test server (tests/openai_server.py), empty: no scripted replies, requests or responder."""
    server = _openai_server_session
    server.reset()
    yield server
    server.reset()


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray instance for the whole test session; test-only tool modules importable."""
    import ray

    tests_dir = str(Path(__file__).parent)
    ray.init(
        address="local",  # a new instance: never join another session's cluster (ray_current_cluster)
        num_cpus=2,
        include_dashboard=False,
        namespace="p2e",
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": tests_dir + os.pathsep + os.environ.get("PYTHONPATH", "")}},
    )
    yield
    ray.shutdown()


@pytest.fixture
def ledger_tools() -> Iterator[ModuleType]:
    """The ledger tools, registered in the global registry for this test only (teams load them
    with `tool_modules: [p2e.tools.ledger]`; other tests expect the built-ins alone). The
    module's first import registers them, so what was there before is noted first."""
    from p2e.tools import REGISTRY

    before = set(REGISTRY.names())
    import p2e.tools.ledger as lt

    for name in lt.LEDGER_TOOLS:  # (an earlier test took them out again)
        if name not in REGISTRY:
            REGISTRY.register(getattr(lt, name))
    yield lt
    for name in set(REGISTRY.names()) - before:
        REGISTRY._tools.pop(name, None)


Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run the `p2e` command in this process: `cli("conversation", "list") -> (exit code, out, err)`."""
    from p2e.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        try:
            main(list(args))
            code = 0
        except SystemExit as e:
            code = int(e.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return run
