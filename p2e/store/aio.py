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
from importlib.resources import files
from typing import Any

import redis

from p2e.errors import StoreUnavailable
from p2e.events import Event
from p2e.store.keys import Keys
from p2e.store.log import append_call, append_error, append_outcome
from p2e.store.resp import Pipe

PIPELINE_MAX = 512


Op = tuple[list[str] | None, list[object], "asyncio.Future[Any]"]
"""One queued operation: (append-script KEYS, ARGV, future), or (None, a plain command, future)."""


class GroupCommit:
    def __init__(self, url: str, namespace: str = "p2e"):
        self.url = url
        self.keys = Keys(namespace)
        self.r = Pipe(url, connect_timeout=5, timeout=30)
        self._lua = files("p2e.store").joinpath("lua", "append.lua").read_text()
        self._sha: str | None = None
        self._queue: list[Op] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.appends = 0

    async def append(
        self, cid: str, branch: str, events: Sequence[Event], expected: int | None = None
    ) -> int:
        """Append atomically (as `EventLog.append_to`); resolves once the server has it."""
        keys, args = append_call(self.keys, cid, branch, events, expected)
        try:
            result = await self._enqueue(keys, args)
        except redis.ResponseError as e:
            raise append_error(e, cid, branch) from e
        return append_outcome(result, cid, branch, expected)[0]

    async def command(self, *args: object) -> Any:
        """Any other command, sent in the same pipelined round trip as the queued appends (so a
        read on every turn costs no extra round trip and no extra connection)."""
        return await self._enqueue(None, list(args))

    def _enqueue(self, keys: list[str] | None, args: list[object]) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((keys, args, fut))
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._writer())
        return fut

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.r.aclose()

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch, self._queue = self._queue[:PIPELINE_MAX], self._queue[PIPELINE_MAX:]
                try:
                    results = await self._send(batch)
                except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
                    err = StoreUnavailable(self.url, e)
                    for _, _, f in batch:
                        if not f.done():
                            f.set_exception(err)
                    continue
                self.batches += 1
                self.appends += len(batch)
                for (_, _, f), res in zip(batch, results, strict=True):
                    if f.done():
                        continue
                    if isinstance(res, Exception):
                        f.set_exception(res)
                    else:
                        f.set_result(res)

    async def _send(self, batch: list[Op]) -> list[object]:
        if self._sha is None:
            self._sha = await self._load()
        results = await self._pipeline(batch)
        retry = [i for i, r in enumerate(results) if isinstance(r, redis.exceptions.NoScriptError)]
        if retry:  # the server lost its script cache (restart, SCRIPT FLUSH): load and resend those
            self._sha = await self._load()
            again = await self._pipeline([batch[i] for i in retry])
            for i, r in zip(retry, again, strict=True):
                results[i] = r
        return results

    async def _load(self) -> str:
        (sha,) = await self.r.run([["SCRIPT", "LOAD", self._lua]])
        if isinstance(sha, Exception):
            raise sha
        return sha.decode()

    async def _pipeline(self, batch: list[Op]) -> list[object]:
        sha = self._sha
        assert sha is not None
        return await self.r.run(
            [args if keys is None else ["EVALSHA", sha, len(keys), *keys, *args] for keys, args, _ in batch]
        )
