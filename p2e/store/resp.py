"""A lean asyncio pipeline client for the group commit: one connection, batches of commands
written at once, replies parsed by hiredis in C.

Why not redis-py's asyncio pipeline: on the supervisor's hot path (a few appends per step) its
per-batch Python (connection checkout, command packing, response dispatch) cost more CPU than
the round trip itself. This client does only what the group commit needs: send N commands, get
N replies in order, reconnect after a failure. It connects over TCP, TLS (`rediss://`) or a unix
socket, to the address, credentials and certificate checks that redis-py reads from the same URL
(`p2e.store.url`). Replies are what redis-py returns without
`decode_responses`: bytes, ints, lists, None; server errors come back as `redis.ResponseError`
values (not raised), as from a pipeline with `raise_on_error=False`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any, cast

import hiredis
import redis

from p2e.store.url import address

CRLF = b"\r\n"


def _error(message: str) -> redis.ResponseError:
    """A server error as redis-py names it (the group commit reloads scripts on NOSCRIPT)."""
    if message.startswith("NOSCRIPT"):
        return redis.exceptions.NoScriptError(message)
    return redis.ResponseError(message)


def encode(command: tuple[object, ...] | list[object]) -> bytes:
    """One command as a RESP array of bulk strings (hiredis packs it in C, faster than Python:
    bench/README.md, "Figures behind choices in the code"). Arguments are bytes, str, int or
    float (float as `repr`); anything else raises a `TypeError` that names it."""
    try:
        # hiredis's stub: `Tuple[X]` (one item) where it means `Tuple[X, ...]`, and no return type
        packed: bytes = hiredis.pack_command(tuple(command))  # type: ignore[arg-type]
        return packed
    except TypeError:
        bad = next(a for a in command if not isinstance(a, bytes | str | int | float) or isinstance(a, bool))
        raise TypeError(
            f"cannot send {type(bad).__name__} {bad!r} to the store: use bytes, str or a number"
        ) from None


def pack(commands: Sequence[list[object] | bytes]) -> bytes:
    """Every command, as one buffer (a command given as bytes is already encoded)."""
    return b"".join([c if isinstance(c, bytes) else encode(c) for c in commands])


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader(replyError=_error)
        self.waiting: deque[tuple[int, list[Any], asyncio.Future[list[Any]]]] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport, though not always an `asyncio.Transport` subclass (uvloop's is not)
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while self.waiting:
            n, replies, fut = self.waiting[0]
            while len(replies) < n:
                reply = self.reader.gets()
                if reply is False:
                    return
                replies.append(reply)
            self.waiting.popleft()
            if not fut.done():
                fut.set_result(replies)

    def connection_lost(self, exc: Exception | None) -> None:
        if isinstance(exc, redis.RedisError):  # dropped on purpose (a timeout): say why
            self.lost = exc
        else:
            self.lost = redis.ConnectionError(
                f"connection to the store lost: {exc or 'closed by the server'}"
            )
        while self.waiting:
            _, _, fut = self.waiting.popleft()
            if not fut.done():
                fut.set_exception(self.lost)


class Pipe:
    """One connection to the server at `url`; `run(commands)` pipelines them in one write."""

    def __init__(self, url: str, connect_timeout: float = 5.0, timeout: float = 30.0):
        self.address = address(url)  # redis://, rediss:// (TLS) or unix://, as redis-py reads them
        self.connect_timeout, self.timeout = connect_timeout, timeout
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None

    async def _open(self) -> _Protocol:
        a, loop = self.address, asyncio.get_running_loop()
        if a.path is not None:
            opening = loop.create_unix_connection(_Protocol, a.path)
        else:
            opening = loop.create_connection(_Protocol, a.host, a.port, ssl=a.tls)
        try:
            _, proto = await asyncio.wait_for(opening, self.connect_timeout)
        except (OSError, TimeoutError) as e:  # ssl.SSLError (an untrusted certificate) is an OSError
            raise redis.ConnectionError(f"cannot connect to the store at {a.where}: {e}") from e
        return proto

    async def _connection(self) -> _Protocol:
        proto = self._proto
        if proto is not None and proto.lost is None:
            return proto
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._proto is not None and self._proto.lost is None:
                return self._proto
            proto = await self._open()
            a = self.address
            hello: list[list[object]] = []
            if a.password is not None:
                auth: list[object] = ["AUTH", a.password]
                if a.username:
                    auth.insert(1, a.username)
                hello.append(auth)
            if a.db:
                hello.append(["SELECT", a.db])
            self._proto = proto
            if hello:
                for reply in await self._send(proto, hello):
                    if isinstance(reply, Exception):
                        if proto.transport:
                            proto.transport.close()
                        self._proto = None
                        raise redis.ConnectionError(f"the store refused the connection: {reply}")
            return proto

    async def run(self, commands: Sequence[list[object] | bytes]) -> list[Any]:
        """Send every command in one write; the replies, in order (errors as values)."""
        if not commands:
            return []
        return await self._send(await self._connection(), commands)

    async def _send(self, proto: _Protocol, commands: Sequence[list[object] | bytes]) -> list[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[Any]] = loop.create_future()
        proto.waiting.append((len(commands), [], fut))
        assert proto.transport is not None
        proto.transport.write(pack(commands))
        timer = loop.call_later(self.timeout, self._expire, proto, fut)
        try:
            return await fut
        finally:
            timer.cancel()

    def _expire(self, proto: _Protocol, fut: asyncio.Future[list[Any]]) -> None:
        """No answer in time: late replies would be read as the next batch's, so the connection
        goes (every batch waiting on it fails; the next one reconnects)."""
        if not fut.done():
            self._drop(proto, redis.TimeoutError(f"the store did not answer within {self.timeout:g}s"))

    def _drop(self, proto: _Protocol, why: Exception) -> None:
        if proto.transport is not None:
            proto.transport.abort()
        proto.connection_lost(why)
        if self._proto is proto:
            self._proto = None

    async def aclose(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
        self._proto = None
