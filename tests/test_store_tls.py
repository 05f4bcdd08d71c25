"""A store every node reaches (issue 16): managed Redis speaks TLS and wants a password, a local
one may listen on a unix socket. Every store path (the event log, the group commit's own RESP
client, the ledger, `p2e store status`) takes `rediss://` and `unix://` URLs, and a wrong
password, a client without TLS or an untrusted certificate is refused in one line that says
what to fix, with the password masked.

The server is a stock `redis-server` started here with TLS on (a CA and server certificate made
by the test), `requirepass`, and a unix socket.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import uvloop
from conftest import Cli
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from p2e.errors import InvalidArgument, StoreUnavailable
from p2e.events import UserMessage
from p2e.ledger import EmbeddedLedger, units
from p2e.store import connect
from p2e.store.aio import GroupCommit
from p2e.store.resp import Pipe

PASSWORD = "tls-test-Secret-42"


@dataclass
class Server:
    port: int
    socket: Path
    ca: Path

    def tls(self, password: str = PASSWORD, query: str = "", db: int = 0) -> str:
        return f"rediss://:{password}@127.0.0.1:{self.port}/{db}?ssl_ca_certs={self.ca}{query}"

    def unix(self, password: str = PASSWORD, db: int = 0) -> str:
        return f"unix://{self.socket}?password={password}&db={db}"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_certificates(d: Path) -> Path:
    """A self-signed CA, and a server certificate it signed for 127.0.0.1 and localhost."""
    now = datetime.datetime.now(datetime.UTC)

    def cert(subject: str, key: ec.EllipticCurvePrivateKey, signer: ec.EllipticCurvePrivateKey, ca: bool):
        b = (
            x509.CertificateBuilder()
            .subject_name(_name(subject))
            .issuer_name(_name("p2e test CA"))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return b.sign(signer, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    (d / "ca.pem").write_bytes(cert("p2e test CA", ca_key, ca_key, ca=True))
    (d / "server.pem").write_bytes(cert("localhost", key, ca_key, ca=False))
    (d / "server.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return d / "ca.pem"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server on PATH (apt-get install redis-server)")
    d = tmp_path_factory.mktemp("tls")
    ca = make_certificates(d)
    srv = Server(port=free_port(), socket=d / "redis.sock", ca=ca)
    args = [
        binary, "--port", "0", "--bind", "127.0.0.1", "--tls-port", str(srv.port),
        "--tls-cert-file", str(d / "server.pem"), "--tls-key-file", str(d / "server.key"),
        "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no", "--requirepass", PASSWORD,
        "--unixsocket", str(srv.socket), "--unixsocketperm", "700",
        "--save", "", "--appendonly", "no", "--dir", str(d),
    ]  # fmt: skip
    with open(d / "redis.log", "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        probe = redis.Redis(unix_socket_path=str(srv.socket), password=PASSWORD)
        deadline = time.monotonic() + 15
        while True:
            try:
                probe.ping()
                break
            except redis.ConnectionError:
                log = (d / "redis.log").read_text(errors="replace")
                if proc.poll() is not None and "TLS" in log and "not supported" in log:
                    pytest.skip(f"this redis-server is built without TLS: {log.strip()[-200:]}")
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start: {log[-2000:]}") from None
                time.sleep(0.05)
        probe.close()
        yield srv
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def group_commit(url: str, ns: str, cid: str, text: str, expected: int, uv: bool = False) -> None:
    """Append through the supervisor's path (the group commit), on asyncio or uvloop."""

    async def go() -> None:
        w = GroupCommit(url, ns)
        try:
            await w.append(cid, "main", [UserMessage(text=text, ts=1.0)], expected=expected)
            assert await w.command("GET", f"{ns}:probe") is None  # a plain command rides along
        finally:
            await w.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop if uv else None) as runner:
        runner.run(go())


def refused(call: object) -> str:
    """The one-line error a user sees from `call`."""
    with pytest.raises(StoreUnavailable) as e:
        call()  # type: ignore[operator]
    message = str(e.value)
    assert "\n" not in message and PASSWORD not in message and "wrong-one" not in message
    return message


# --- what works ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tls", "unix"])
def test_every_store_path_works_over_tls_and_a_unix_socket(server: Server, kind: str) -> None:
    url = server.tls(db=3) if kind == "tls" else server.unix(db=3)
    ns = f"tls-{kind}"
    log = connect(url, ns)
    cid = log.create_conversation("boss", "c").id
    log.append_to(cid, "main", [UserMessage(text="sync", ts=1.0)])
    group_commit(url, ns, cid, "asyncio", expected=1)
    group_commit(url, ns, cid, "uvloop", expected=2, uv=True)
    assert [e.text for e in log.history(cid)] == ["sync", "asyncio", "uvloop"]  # type: ignore[union-attr]
    assert log.r.connection_pool.connection_kwargs["db"] == 3
    log.close()

    # the password in the user part works as well as ?password=, on both schemes
    other = f"rediss://:{PASSWORD}@localhost:{server.port}/3?ssl_ca_certs={server.ca}"
    if kind == "unix":
        other = f"unix://:{PASSWORD}@{server.socket}?db=3"
    assert len(connect(other, ns).history(cid)) == 3

    ledger = EmbeddedLedger(url, ns)  # its own EVALSHA connections, made from the same URL
    try:
        ledger.initialize()
        ledger.open_wallet("alice")
        ledger.mint("alice", units(5), reason="start", command_id="m")
        assert ledger.snapshot() == {"alice": units(5)}
    finally:
        ledger.close()


def test_store_status_reports_a_managed_redis(
    server: Server, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("P2E_REDIS_URL", server.tls())
    code, out, err = cli("store", "status")
    assert code == 0, err
    assert "rediss://:***@127.0.0.1" in out and "(from P2E_REDIS_URL)" in out and "redis 7" in out
    assert PASSWORD not in out + err


def test_an_untrusted_certificate_works_only_with_ssl_cert_reqs_none(server: Server) -> None:
    untrusted = f"rediss://:{PASSWORD}@127.0.0.1:{server.port}/0"
    for message in (
        refused(lambda: connect(untrusted, "tls-x")),
        refused(lambda: group_commit(untrusted, "tls-x", "c", "x", 1)),
    ):
        assert "CERTIFICATE_VERIFY_FAILED" in message and "add ?ssl_ca_certs=/path/to/ca.pem" in message
    unchecked = untrusted + "?ssl_cert_reqs=none"
    log = connect(unchecked, "tls-none")
    cid = log.create_conversation("boss", "c").id
    group_commit(unchecked, "tls-none", cid, "unchecked", expected=0)
    assert [e.text for e in log.history(cid)] == ["unchecked"]  # type: ignore[union-attr]


# --- what is refused, in one line ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tls", "unix"])
def test_a_wrong_password_is_refused_clearly_and_masked(server: Server, kind: str) -> None:
    url = server.tls("wrong-one") if kind == "tls" else server.unix("wrong-one")
    for message in (
        refused(lambda: connect(url, "tls-x")),
        refused(lambda: group_commit(url, "tls-x", "c", "x", 1)),
    ):
        assert "***" in message and "check the user name and password in P2E_REDIS_URL" in message
        assert str(server.port if kind == "tls" else server.socket) in message


def test_a_client_without_tls_is_refused_with_a_hint(server: Server) -> None:
    plain = f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"
    for message in (
        refused(lambda: connect(plain, "tls-x")),
        refused(lambda: group_commit(plain, "tls-x", "c", "x", 1)),
    ):
        assert message.startswith(f"cannot reach the store at redis://:***@127.0.0.1:{server.port}/0")
        assert "use rediss://" in message and "check that the server runs" in message


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+unix:///tmp/x.sock", "must specify one of the following schemes"),
        ("unix://?password=hunter2", "names no socket file"),
        ("rediss://:hunter2@host:6380/0?ssl_cert_reqs=maybe", "use ssl_cert_reqs=required"),
        ("rediss://:hunter2@host:6380/0?ssl_ca_certs=/no/such/ca.pem", "ssl_ca_certs /no/such/ca.pem"),
        ("redis://:hunter2@host:6379/0?sslmode=on", "unknown option 'sslmode'"),
    ],
)
def test_a_url_that_cannot_work_is_refused_up_front(
    url: str, says: str, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    for make in (lambda: connect(url, "tls-x"), lambda: Pipe(url)):
        with pytest.raises(InvalidArgument) as e:
            make()
        assert says in str(e.value) and "hunter2" not in str(e.value) and "\n" not in str(e.value)
    monkeypatch.setenv("P2E_REDIS_URL", url)
    for command in (("conversation", "list"), ("store", "status")):
        code, out, err = cli(*command)
        assert code == 2 and says in " ".join(err.split()), (command, out, err)
        assert "Traceback" not in out + err and "hunter2" not in out + err
