"""Group commit for async hosts (the supervisor): many conversations, one round trip per batch.

Every append is awaited (write-ahead: nothing acts on an event before it is stored), but the
appends of all conversations hosted by one process are sent together: one writer task takes
whatever is queued and sends it as one pipeline of append scripts. With one conversation that is
one round trip per append; with hundreds, the cost of a round trip is shared.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import redis

from p2e.errors import StoreError, StoreUnavailable
from p2e.events import Event
from p2e.store.keys import TREE_COUNTER, Keys
from p2e.store.log import (
    ConversationInfo,
    append_call,
    append_error,
    append_outcome,
    create_call,
    create_error,
    lua_script,
)
from p2e.store.resp import Pipe, encode

PIPELINE_MAX = 512


SCRIPTS = ("append", "create")

Op = tuple[str | None, list[str], Any, "asyncio.Future[Any]"]
"""One queued operation: (script, KEYS, ARGV, future), or (None, [], a plain command already
encoded as RESP bytes, future)."""


class GroupCommit:
    def __init__(self, url: str, namespace: str = "p2e"):
        self.url = url
        self.keys = Keys(namespace)
        self.r = Pipe(url, connect_timeout=5, timeout=30)
        self._lua = {name: lua_script(name) for name in SCRIPTS}
        self._sha: dict[str, str] = {}
        self._queue: list[Op] = []
        self._sending: list[Op] = []
        """The batch on the wire (failed by `close` if it never gets an answer)."""
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.appends = 0

    async def append(
        self, cid: str, branch: str, events: Sequence[Event], expected: int | None = None
    ) -> int:
        """Append atomically (as `EventLog.append_to`); resolves once the server has it."""
        return await self._append(self._append_op(cid, branch, events, expected), cid, branch, expected)

    def _append_op(
        self, cid: str, branch: str, events: Sequence[Event], expected: int | None
    ) -> asyncio.Future[Any]:
        keys, args = append_call(self.keys, cid, branch, events, expected)
        return self._enqueue("append", keys, args)

    async def _append(self, op: asyncio.Future[Any], cid: str, branch: str, expected: int | None) -> int:
        try:
            result = await op
        except redis.ResponseError as e:
            raise append_error(e, cid, branch) from e
        return append_outcome(result, cid, branch, expected)[0]

    async def create(self, info: ConversationInfo, first: Sequence[Event]) -> None:
        """Create a conversation (as `EventLog.create_conversation`) and append its first events,
        in one round trip: the two scripts are queued back to back, so they run in order."""
        keys, args = create_call(self.keys, info)
        created = self._enqueue("create", keys, args)
        appended = self._append_op(info.id, info.active, first, 0)
        try:
            await created
        except redis.ResponseError as e:
            with contextlib.suppress(Exception):
                await appended  # failed too (no branch): collect it, report the cause
            raise create_error(e) from e
        await self._append(appended, info.id, info.active, 0)

    async def command(self, *args: object) -> Any:
        """Any other command, sent in the same pipelined round trip as the queued appends (so a
        read on every turn costs no extra round trip and no extra connection). An argument the
        store cannot take raises `TypeError` here, before it can fail the rest of a batch."""
        return await self._enqueue(None, [], encode(args))

    async def tree_node(self, cid: str) -> int:
        """The number of a new guided-search node of conversation `cid` (its tree's counter)."""
        return int(await self.command("HINCRBY", self.keys.tree(cid), TREE_COUNTER, 1))

    async def save_tree(self, cid: str, nodes: dict[str, str]) -> None:
        """Store guided-search nodes of conversation `cid`: branch name -> node (JSON)."""
        await self.command("HSET", self.keys.tree(cid), *(x for kv in nodes.items() for x in kv))

    def _enqueue(self, script: str | None, keys: list[str], args: Any) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((script, keys, args, fut))
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._writer())
        return fut

    async def close(self) -> None:
        """Stop the writer. A write still queued or in flight fails with `StoreError` (one in
        flight may or may not have been stored): its caller hears of it instead of waiting."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        closed = StoreError(
            "the group commit was closed with this write pending; it may or may not be stored"
        )
        _fail([*self._sending, *self._queue], closed)
        self._sending, self._queue = [], []
        await self.r.aclose()

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch, self._queue = self._queue[:PIPELINE_MAX], self._queue[PIPELINE_MAX:]
                self._sending = batch
                try:
                    results = await self._send(batch)
                except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
                    _fail(batch, StoreUnavailable(self.url, e))
                    continue
                except Exception as e:  # a bug or a bad argument: the callers get it, not a hang
                    _fail(batch, e)
                    continue
                # (cancelled by `close`, the batch stays in `_sending` for `close` to fail)
                self._sending = []
                self.batches += 1
                self.appends += len(batch)
                for (*_, f), res in zip(batch, results, strict=True):
                    if f.done():
                        continue
                    if isinstance(res, Exception):
                        f.set_exception(res)
                    else:
                        f.set_result(res)

    async def _send(self, batch: list[Op]) -> list[object]:
        if len(self._sha) < len(SCRIPTS):
            await self._load()
        results = await self._pipeline(batch)
        retry = [i for i, r in enumerate(results) if isinstance(r, redis.exceptions.NoScriptError)]
        if retry:  # the server lost its script cache (restart, SCRIPT FLUSH): load and resend those
            await self._load()
            again = await self._pipeline([batch[i] for i in retry])
            for i, r in zip(retry, again, strict=True):
                results[i] = r
        return results

    async def _load(self) -> None:
        shas = await self.r.run([["SCRIPT", "LOAD", self._lua[name]] for name in SCRIPTS])
        for name, sha in zip(SCRIPTS, shas, strict=True):
            if isinstance(sha, Exception):
                raise sha
            self._sha[name] = sha.decode()

    async def _pipeline(self, batch: list[Op]) -> list[object]:
        sha = self._sha
        return await self.r.run(
            [
                args if script is None else ["EVALSHA", sha[script], len(keys), *keys, *args]
                for script, keys, args, _ in batch
            ]
        )


def _fail(batch: list[Op], error: BaseException) -> None:
    for *_, f in batch:
        if not f.done():
            f.set_exception(error)
