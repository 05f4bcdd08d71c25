"""Sending an agent only the messages of a frame it has not seen yet (the delta protocol).

Without it, every step would carry the frame's whole transcript to the agent, so a step would
cost more the longer the conversation (the root frame grows with every user message). Instead:

- The host names each frame's message list it holds in memory with an id
  (`Transcript.ids`, `StepRequest.frame`). That list only ever grows, and the id is minted
  fresh for every list (a pushed frame, a rebuilt or copied transcript: a fork, a guided-search
  child, a restarted host), so whatever was sent under one id is a prefix of what is sent later.
- The agent side keeps a bounded LRU of id -> the frame's messages as last received
  (`FrameCache`; `frame_cache` frames, set in the agents file). A request with `base = n > 0`
  carries only the messages after the first n, which the agent takes from its cache.
- The host side remembers, per agent replica, how many messages of each id it has sent there
  (`SentFrames`, bounded the same way), and sends the rest.
- When the agent does not have them (a restarted actor, an evicted entry, another replica, a
  step retried by Ray on a fresh actor) it answers "need full" (`resolve` returns None) and the
  host sends the same step again with the whole frame. Forgetting on either side costs a resend,
  never a wrong transcript: the agent never guesses, it has the first n messages or it says so.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

from p2e.llm.base import Message
from p2e.runtime.steps import StepRequest

K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    """A dict that keeps its `size` most recently used entries (0: keeps nothing)."""

    def __init__(self, size: int):
        self.size = size
        self._d: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        v = self._d.get(key)
        if v is not None:
            self._d.move_to_end(key)
        return v

    def put(self, key: K, value: V) -> None:
        if self.size <= 0:
            return
        self._d[key] = value
        self._d.move_to_end(key)
        if len(self._d) > self.size:
            self._d.popitem(last=False)

    def pop(self, key: K) -> None:
        self._d.pop(key, None)

    def __len__(self) -> int:
        return len(self._d)


class FrameCache:
    """The agent's side: frames' messages by id, as last received."""

    def __init__(self, size: int):
        self._frames: LRU[str, tuple[Message, ...]] = LRU(size)
        self.hits = 0
        """Requests completed from the cache."""
        self.misses = 0
        """Requests sent back for lack of their earlier messages."""

    def resolve(self, req: StepRequest) -> StepRequest | None:
        """`req` with the frame's whole messages, or None when its first `base` are not here
        (the host must send them all)."""
        messages = req.messages
        if req.base:
            cached = self._frames.get(req.frame) if req.frame else None
            if cached is None or len(cached) < req.base:
                self.misses += 1
                return None
            self.hits += 1
            messages = cached[: req.base] + messages
            req = req.model_copy(update={"messages": messages, "base": 0})
        if req.frame:
            self._frames.put(req.frame, messages)
        return req


class SentFrames:
    """The host's side, for one agent replica: how many messages of each frame it holds."""

    def __init__(self, size: int):
        self._sent: LRU[str, int] = LRU(size)

    def delta(self, req: StepRequest) -> StepRequest:
        """`req` (the whole frame) as little as the replica needs: what it has not seen."""
        n = self._sent.get(req.frame) if req.frame else None
        if not n or n > len(req.messages):
            return req
        return req.model_copy(update={"messages": req.messages[n:], "base": n})

    def sent(self, req: StepRequest) -> None:
        """The replica answered `req` (the whole frame): it holds all its messages now."""
        if req.frame:
            self._sent.put(req.frame, len(req.messages))

    def forget(self, req: StepRequest) -> None:
        """The replica said it does not hold the frame (restarted, or evicted it)."""
        self._sent.pop(req.frame)
