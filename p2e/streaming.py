"""Streaming: a step's reply as its model writes it, for those who watch; never stored as an event.

Providers report the pieces of a reply (`ModelDelta`) to a callback; the agent's step folds them
into a `PartialReply` (the text and tool calls so far) and publishes it two ways:

- in-process, to a listener (`AgentRunner(listener=...)`): how `p2e.local_chat(...).send(text,
  on_delta=...)` and `p2e chat --local` get every piece at once;
- to the store, under one key per branch (`Keys.partial`: a string holding the partial's JSON,
  with a TTL), rewritten at most every `PUBLISH_S` and once when the call ends. Ray chats
  (`p2e.init().chat(...).send(text, on_delta=...)`, `p2e chat`) and `p2e conversation watch`
  poll it. One key per branch is enough: a branch has one model call at a time (the stack).

The stored `AgentReply` is the complete reply, exactly as without streaming; a partial is only
ever a view of a step in progress. Readers trust one only while it is ahead of the branch
(`PartialReply.live`: its `seq` not yet stored), so a step whose reply (or failure) is stored is
never shown from its partial. A failed call deletes its partial; one that dies with its process
expires (`TTL_S`); a retried call starts over (`ModelDelta.restart`, or a new attempt's text that
does not continue the old one) and `Deltas` tells the reader to drop what it showed.

What streams: every step but those of rollout episodes (nobody reads those live, and they run
by the thousand); a provider streams when it can (openai, unless `stream: false`; mock with
`stream_chunk_ms`), and the others just answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import redis
from pydantic import BaseModel

from p2e.llm.base import ModelDelta
from p2e.redact import default_redactor
from p2e.store import EventLog

log = logging.getLogger("p2e.streaming")

PUBLISH_S = 0.05
"""How often, at most, a streaming step rewrites its partial in the store."""
TTL_S = 60
"""How long a partial outlives its last write (a dead process's partial goes away by itself)."""


class PartialCall(BaseModel):
    name: str = ""
    arguments: str = ""
    """The argument text so far: JSON cut anywhere."""


class PartialReply(BaseModel):
    """A step's reply so far: what the store and the listeners are shown."""

    seq: int
    """Where the reply will be stored."""
    agent: str
    text: str = ""
    tool_calls: list[PartialCall] = []
    attempt: int = 0
    """Counts the provider's restarts: the text of a new attempt does not continue the old one."""
    done: bool = False
    """The model call ended; the reply is on its way to the store."""

    def add(self, delta: ModelDelta) -> None:
        if delta.restart:
            self.text, self.tool_calls, self.attempt = "", [], self.attempt + 1
            return
        self.text += delta.text
        if delta.tool is not None:
            while len(self.tool_calls) <= delta.tool:
                self.tool_calls.append(PartialCall())
            call = self.tool_calls[delta.tool]
            call.name += delta.name
            call.arguments += delta.arguments

    def live(self, length: int) -> bool:
        """Whether it shows a step still running on a branch of `length` events (its seq is not
        stored yet: not the reply, nor the failure that ended the step)."""
        return self.seq >= length


Listener = Callable[[PartialReply], None]


def read_partial(store: EventLog, conv: str, branch: str) -> PartialReply | None:
    """The partial reply published for the branch, if any (a conversation id, not a name)."""
    key = store.keys.partial(conv, branch)
    raw = store.get(key)
    return None if raw is None else PartialReply.model_validate_json(raw)


class Publisher:
    """Publishes one step's partial reply: to the listener at every piece, to the store at
    most every `PUBLISH_S` (one write at a time, so they land in order). Use as the provider's
    `on_delta`, then `await close(ok)`."""

    def __init__(
        self,
        store: EventLog | None,
        conv: str,
        branch: str,
        partial: PartialReply,
        listener: Listener | None = None,
        interval: float = PUBLISH_S,
    ):
        self.store, self.listener, self.interval = store, listener, interval
        self.key = store.keys.partial(conv, branch) if store is not None else ""
        self.partial = partial
        self._wake = asyncio.Event()
        self._closed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __call__(self, delta: ModelDelta) -> None:
        self.partial.add(delta)
        if self.listener is not None:
            self.listener(self.partial)
        if self.store is None:
            return
        self._wake.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while not self._closed.is_set():
            await self._wake.wait()
            self._wake.clear()
            if self._closed.is_set():
                return
            await self._write(self.partial.model_dump_json().encode())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), self.interval)

    async def close(self, ok: bool) -> None:
        """The call ended: publish the whole reply (`ok`), or take the partial away (it failed:
        what it showed is not a reply)."""
        self._closed.set()
        self._wake.set()
        if self._task is None:
            return  # nothing streamed: nothing to show or take back
        await self._task
        if ok:
            self.partial.done = True
            if self.listener is not None:
                self.listener(self.partial)
            await self._write(self.partial.model_dump_json().encode())
        else:
            await self._write(None)

    async def _write(self, raw: bytes | None) -> None:
        """Best effort: a store that fails here fails the step's own append soon enough."""
        assert self.store is not None
        r = self.store.r
        try:
            if raw is None:
                await asyncio.to_thread(r.delete, self.key)
            else:
                await asyncio.to_thread(r.set, self.key, default_redactor().data(raw), ex=TTL_S)
        except (redis.RedisError, ConnectionError) as e:
            log.warning("could not publish the partial reply at %s: %s", self.key, e)


class StreamDelta(BaseModel):
    """What a chat's `on_delta` gets: new text of the step stored at `seq`. `restart`: the step
    started over (a retried call); drop what was shown for it, `text` is its text from the start."""

    seq: int
    agent: str
    text: str
    restart: bool = False


OnText = Callable[[StreamDelta], None]


class Deltas:
    """Turns the partial replies seen (every piece in-process; some, by polling the store) into
    the text each adds, for a chat's `on_delta`. Partials of steps before `since` (left in the
    store by an earlier turn) are ignored."""

    def __init__(self, on_delta: OnText, since: int = 0):
        self.on_delta, self.since = on_delta, since
        self.seq, self.attempt, self.shown = -1, 0, ""

    def __call__(self, partial: PartialReply | None) -> None:
        if partial is None or partial.seq < max(self.since, self.seq):
            return
        p = partial
        if p.seq != self.seq:
            self.seq, self.attempt, self.shown = p.seq, p.attempt, ""
        elif p.attempt != self.attempt or not p.text.startswith(self.shown):
            self.attempt, self.shown = p.attempt, p.text
            self.on_delta(StreamDelta(seq=p.seq, agent=p.agent, text=p.text, restart=True))
            return
        new = p.text[len(self.shown) :]
        if new:
            self.shown = p.text
            self.on_delta(StreamDelta(seq=p.seq, agent=p.agent, text=new))
