"""Store URLs: what P2E_REDIS_URL may be, checked once and read the same way by every client.

The schemes and query options are redis-py's `from_url` ones, which the sync clients (`EventLog`,
the ledger) use as they are: `redis://` (TCP), `rediss://` (TLS: `ssl_ca_certs`, `ssl_cert_reqs`,
`ssl_certfile`, `ssl_keyfile`, `ssl_check_hostname`, ...) and `unix://` (a socket file), each
with a password in the user part or as `?password=`. The group commit's own client
(`resp.Pipe`) reads the same parse, and gets its SSL context from redis-py, so a URL means the
same server, credentials and certificate checks on both paths.
"""

from __future__ import annotations

import os
import re
import ssl
from dataclasses import dataclass
from typing import Any

import redis
from redis.asyncio import connection as aio_connection
from redis.connection import SSLConnection, UnixDomainSocketConnection, parse_url

from p2e.errors import InvalidArgument
from p2e.redact import mask_url

EXAMPLES = (
    "redis://:PASSWORD@host:6379/0, rediss://:PASSWORD@host:6380/0?ssl_ca_certs=/path/to/ca.pem "
    "or unix:///path/to/redis.sock?password=PASSWORD"
)
FILES = ("ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile")
"""Options naming a file: a missing one is said up front (redis-py reports it, on connecting,
as 'No such file or directory' about the server's address)."""
_UNEXPECTED = re.compile(r"unexpected keyword argument '([^']+)'")


def options(url: str) -> dict[str, Any]:
    """redis-py's connection arguments for `url` (`connection_class` included), or
    InvalidArgument naming the problem for a URL that redis-py would refuse on first use."""
    shown = mask_url(url)
    try:
        opts: dict[str, Any] = parse_url(url)
    except ValueError as e:
        raise InvalidArgument(f"store URL {shown} cannot be used ({e}); e.g. {EXAMPLES}") from None
    if opts.get("connection_class") is UnixDomainSocketConnection and not opts.get("path"):
        raise InvalidArgument(f"store URL {shown} names no socket file; e.g. {EXAMPLES}")
    kwargs = {k: v for k, v in opts.items() if k != "connection_class"}
    try:
        opts.get("connection_class", redis.Connection)(**kwargs)  # checks them; connects nowhere
    except TypeError as e:
        bad = _UNEXPECTED.search(str(e))
        name = bad.group(1) if bad else str(e)
        raise InvalidArgument(
            f"store URL {shown} has an unknown option {name!r}; see docs/cluster.md for the ones "
            "a store URL takes"
        ) from None
    except redis.RedisError as e:  # a bad ssl_cert_reqs
        raise InvalidArgument(
            f"store URL {shown}: {e}; use ssl_cert_reqs=required (the default), optional or none"
        ) from None
    for name in FILES:
        path = opts.get(name)
        if isinstance(path, str) and not os.path.exists(path):
            raise InvalidArgument(f"store URL {shown}: {name} {path} does not exist; check the path")
    return opts


@dataclass(frozen=True)
class Address:
    """Where and how the group commit's client connects: a socket file, or host and port, with
    TLS when `tls` is set."""

    host: str
    port: int
    path: str | None
    tls: ssl.SSLContext | None
    username: str | None
    password: str | None
    db: int

    @property
    def where(self) -> str:
        return self.path or f"{self.host}:{self.port}"


def address(url: str) -> Address:
    """`url` for an asyncio client; the SSL context is built by redis-py's asyncio
    `SSLConnection` from the URL's `ssl_*` options, with its defaults (certificate and host
    name checked)."""
    opts = options(url)
    cls = opts.get("connection_class")
    tls = None
    if cls is SSLConnection:
        ssl_opts = {k: v for k, v in opts.items() if k.startswith("ssl_")}
        try:
            tls = aio_connection.SSLConnection(**ssl_opts).ssl_context.get()
        except TypeError as e:
            bad = _UNEXPECTED.search(str(e))
            raise InvalidArgument(
                f"store URL {mask_url(url)}: option {bad.group(1) if bad else e!r} is not "
                "supported by the asyncio client of the group commit; leave it out"
            ) from None
        except (ssl.SSLError, OSError) as e:  # a certificate or key file that does not load
            raise InvalidArgument(f"store URL {mask_url(url)}: its TLS files do not load ({e})") from None
    return Address(
        host=opts.get("host", "127.0.0.1"),
        port=int(opts.get("port", 6379)),
        path=opts.get("path") if cls is UnixDomainSocketConnection else None,
        tls=tls,
        username=opts.get("username"),
        password=opts.get("password"),
        db=int(opts.get("db", 0) or 0),
    )
