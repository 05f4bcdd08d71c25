"""Follow the store as it grows: new conversations, branches, events and scores, in order.

Observers (the Rerun recorder, `p2e conversation watch`) read the store; nothing on the hot path
tells them anything, so a slow or dead observer can never slow a conversation down. A poll costs
a fixed number of round trips whatever the number of conversations that moved (socket round
trips, not data, are what a Python client spends its time on):

1. one pipeline: the conversation count and the newest ids, plus each asked conversation's
   event counter, branch count and score count (kept up to date by the writers);
2. for the conversations whose numbers moved: their branch lists, then their branch records,
   then the new events of every branch that grew, each step one pipeline for all of them.

Conversations that moved in the last `hot_s` seconds (and have not finished) are asked on every
poll; the others are swept a slice at a time, so a namespace holding many old conversations costs
a bounded amount per poll. Each branch's events are folded through the machine as they arrive: a
consumer sees every event with the interaction stack before and after it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pydantic import ValidationError

from p2e.conversation import rebuild
from p2e.errors import CorruptData, EventRejected, InvalidArgument
from p2e.evals.score import Score
from p2e.events import Event
from p2e.machine import INITIAL, State, apply
from p2e.store import BranchInfo, ConversationInfo, EventLog
from p2e.store.replies import as_list

log = logging.getLogger("p2e.obs")

RANK_SLACK = 64
"""New conversation ids are read from the end of the creation-ordered index, this many ranks back
from the last count seen, so one stamped a little early by a host whose clock lags is not missed."""
RESYNC_S = 30.0
"""Every so often the whole index is read, for any id the ranks above did not catch."""
SWEEP_PER_POLL = 64
"""Cold conversations asked per poll (a rotating slice): with 0.1 s polls, 640 a second."""


class Step(NamedTuple):
    """One event with the machine state it was applied to and the state it produced."""

    event: Event
    before: State
    after: State


@dataclass
class BranchBatch:
    """New events of one branch, in seq order (a fork's inherited events are not repeated)."""

    conversation: ConversationInfo
    branch: BranchInfo
    steps: list[Step]


@dataclass
class ScoreBatch:
    """Scores of one conversation that are new or changed since the last poll."""

    conversation: ConversationInfo
    scores: list[Score]


Update = BranchBatch | ScoreBatch


@dataclass
class _Cursor:
    next_seq: int
    state: State
    broken: bool = False


@dataclass
class _Conv:
    info: ConversationInfo
    events: int = -1
    branches: int = -1
    scores: int = -1
    changed: float = 0.0
    cursors: dict[str, _Cursor] = field(default_factory=dict)
    score_raw: dict[bytes, bytes] = field(default_factory=dict)
    scores_read: float = 0.0
    unsettled: set[bytes] = field(default_factory=set)
    """Score fields last seen pending or running: their outcome is written over them later."""

    def done(self, branch: str | None = None) -> bool:
        """The conversation is done: its checked-out branch (or `branch`) has finished or
        failed, or the root agent has answered and nothing is outstanding (the user's turn;
        a later message starts another turn, but this one is done)."""
        cur = self.cursors.get(branch or self.info.active)
        if cur is None:
            return False
        s = cur.state
        if s.status in ("finished", "failed"):
            return True
        return s.status == "idle" and s.steps > 0 and s.violation is None

    @property
    def settled(self) -> bool:
        """Nothing is due from its agents: every branch has ended, or waits for the user after
        an answer. Settled conversations are asked about in sweeps only (a user's next message
        is seen a sweep later), which keeps a poll's cost to the conversations in flight."""
        return bool(self.cursors) and all(
            c.state.status in ("finished", "failed") or (c.state.status == "idle" and c.state.steps > 0)
            for c in self.cursors.values()
        )


class StoreFollower:
    """Polls the store for what changed since the last `poll()`.

    `conversations`: names or ids to follow; None follows every conversation of the namespace,
    including those created later (`new_only`: only those). `branch`: follow that one branch of
    the (single) conversation, with its inherited history from seq 0; otherwise every branch is
    followed from its fork point. `forget_s`: when following every conversation, stop asking
    about one that has not moved for that long (a long rollout would otherwise keep every
    episode it has seen in memory, and in each sweep).
    """

    def __init__(
        self,
        log_: EventLog,
        conversations: Sequence[str] | None = None,
        *,
        branch: str | None = None,
        new_only: bool = False,
        scores: bool = True,
        hot_s: float = 3.0,
        score_every_s: float = 0.5,
        forget_s: float | None = None,
    ):
        if branch is not None and (conversations is None or len(conversations) != 1):
            raise InvalidArgument("a branch can be followed only in one named conversation")
        self.log = log_
        self.keys = log_.keys
        self.branch = branch
        self.all = conversations is None
        self.scores = scores
        self.hot_s, self.score_every_s, self.forget_s = hot_s, score_every_s, forget_s
        self.convs: dict[str, _Conv] = {}
        self._ignored: set[str] = set()
        self._seen_card = 0
        self._resynced = 0.0
        self._sweep_at = 0
        if conversations is not None:
            for c in conversations:
                info = log_.conversation(c)
                if branch is not None:
                    log_.branch(info.id, branch)  # fail now, with the list of branches, if unknown
                self.convs[info.id] = _Conv(info)
        elif new_only:
            with log_.guard(self.keys.convs):
                self._ignored = {i.decode() for i in as_list(log_.r.zrange(self.keys.convs, 0, -1))}
            self._seen_card = len(self._ignored)
            self._resynced = time.time()

    # --- what consumers read -----------------------------------------------------------------

    def state(self, conv: str, branch: str) -> State | None:
        """The machine state after the last event seen on a branch (None: not seen yet)."""
        c = self.convs.get(conv) or next((x for x in self.convs.values() if x.info.name == conv), None)
        cur = c.cursors.get(branch) if c else None
        return cur.state if cur else None

    def all_done(self) -> bool:
        """Every followed conversation is done (`_Conv.done`; safe to call from another thread)."""
        convs = list(self.convs.values())
        return bool(convs) and all(c.done(self.branch) for c in convs)

    # --- polling -------------------------------------------------------------------------------

    def poll(self) -> list[Update]:
        now = time.time()
        ask = self._to_ask(now)
        k, resync = self.keys, False
        with self.log.guard():
            p = self.log.r.pipeline(transaction=False)
            if self.all:
                resync = now - self._resynced >= RESYNC_S
                p.zcard(k.convs)
                p.zrange(k.convs, 0 if resync else max(0, self._seen_card - RANK_SLACK), -1)
            for c in ask:
                p.hmget(k.conv(c.info.id), "events", "active")
                p.zcard(k.branches(c.info.id))
                p.hlen(k.scores(c.info.id))
            answers = p.execute()
        if self.all:
            card, ids = answers[:2]
            answers = answers[2:]
            self._seen_card = card
            if resync:
                self._resynced = now
            new = self._add(ids)
            ask += new
            if new:  # the new ones' counts, in one more round trip
                with self.log.guard():
                    p = self.log.r.pipeline(transaction=False)
                    for c in new:
                        p.hmget(k.conv(c.info.id), "events", "active")
                        p.zcard(k.branches(c.info.id))
                        p.hlen(k.scores(c.info.id))
                    answers += p.execute()
        moved: list[_Conv] = []
        rescore: list[_Conv] = []
        for i, c in enumerate(ask):
            (raw_events, active), n_branches, n_scores = answers[3 * i : 3 * i + 3]
            events = int(raw_events or 0)
            if active and active.decode() != c.info.active:  # checked out elsewhere (the CLI)
                c.info = c.info.model_copy(update={"active": active.decode()})
            grew = events != c.events or n_branches != c.branches
            if grew or n_scores != c.scores:
                c.changed = now
            if grew:
                c.events, c.branches = events, n_branches
                moved.append(c)
            due = (now - c.changed < self.hot_s or c.unsettled) and now - c.scores_read >= self.score_every_s
            if self.scores and (n_scores != c.scores or (due and n_scores)):
                c.scores = n_scores
                rescore.append(c)
        out: list[Update] = self._read_branches(moved) if moved else []
        if rescore:
            out += self._read_scores(rescore, now)
        return out

    def follow(
        self, interval: float = 0.1, stop: Callable[[], bool] = lambda: False
    ) -> Iterator[list[Update]]:
        """Poll every `interval` seconds until `stop()`; yields each poll's updates (maybe none,
        so a consumer can refresh a view or check its own exit condition)."""
        while not stop():
            t0 = time.monotonic()
            yield self.poll()
            time.sleep(max(0.0, interval - (time.monotonic() - t0)))

    def _to_ask(self, now: float) -> list[_Conv]:
        """The hot conversations, plus the next slice of the cold ones."""
        if self.all and self.forget_s is not None:
            for cid in [
                cid for cid, c in self.convs.items() if c.events >= 0 and now - c.changed > self.forget_s
            ]:
                del self.convs[cid]
                self._ignored.add(cid)
        hot, cold = [], []
        for c in self.convs.values():
            if c.events < 0 or c.unsettled or (now - c.changed < self.hot_s and not c.settled):
                hot.append(c)
            else:
                cold.append(c)
        if len(cold) <= SWEEP_PER_POLL:
            return hot + cold
        start = self._sweep_at % len(cold)
        self._sweep_at = start + SWEEP_PER_POLL
        return hot + (cold[start : start + SWEEP_PER_POLL] or cold[:SWEEP_PER_POLL])

    def _add(self, raw_ids: list[bytes]) -> list[_Conv]:
        """Start following conversations not seen before (their records in one round trip)."""
        ids = [i.decode(errors="replace") for i in raw_ids]
        fresh = [cid for cid in ids if cid not in self.convs and cid not in self._ignored]
        if not fresh:
            return []
        with self.log.guard():
            p = self.log.r.pipeline(transaction=False)
            for cid in fresh:
                p.hgetall(self.keys.conv(cid))
            raws = p.execute()
        out = []
        for cid, raw in zip(fresh, raws, strict=True):
            if not raw:  # listed, record not written yet: the next poll tries again
                continue
            try:
                c = self.convs[cid] = _Conv(self.log._conv_info(cid, raw, 0))
            except CorruptData as e:
                log.warning("not following %s: %s", cid, e)
                self._ignored.add(cid)
                continue
            out.append(c)
        return out

    def _read_branches(self, moved: list[_Conv]) -> list[Update]:
        """Branch lists, branch records and new events of `moved`: three pipelined round trips."""
        k, r = self.keys, self.log.r
        with self.log.guard():
            if self.branch is not None:
                names = [[self.branch] for _ in moved]
            else:
                p = r.pipeline(transaction=False)
                for c in moved:
                    p.zrange(k.branches(c.info.id), 0, -1)
                names = [[n.decode(errors="replace") for n in ns] for ns in p.execute()]
            p = r.pipeline(transaction=False)
            for c, ns in zip(moved, names, strict=True):
                for n in ns:
                    p.hgetall(k.branch(c.info.id, n))
            raws = iter(p.execute())
        todo: list[tuple[_Conv, BranchInfo, _Cursor, int, bool]] = []
        for c, ns in zip(moved, names, strict=True):
            for n in ns:
                raw = next(raws)
                if not raw:
                    continue
                b = self.log._branch_info(c.info.id, n, raw)
                cur = c.cursors.get(n)
                fresh = cur is None
                if cur is None:
                    start = 0 if self.branch is not None else b.fork_at
                    state = rebuild(self.log, b, start) if start else INITIAL
                    cur = c.cursors[n] = _Cursor(next_seq=start, state=state)
                todo.append((c, b, cur, cur.next_seq, fresh))
        reads = [
            (b, cl) for _, b, _, start, _ in todo for seg in b.segments if (cl := seg.clip(start, b.length))
        ]
        with self.log.guard():
            p = r.pipeline(transaction=False)
            for b, s in reads:
                p.lrange(k.events(b.conversation, s.branch), s.lo - s.offset, s.hi - s.offset - 1)
            parts = iter(p.execute())
        out: list[Update] = []
        for c, b, cur, start, fresh in todo:
            raws_b: list[bytes] = []
            for s in b.segments:
                if s.clip(start, b.length):
                    raws_b += next(parts)
            if not raws_b:
                if fresh and b.parent is not None and self.branch is None and start == b.length:
                    out.append(BranchBatch(c.info, b, []))  # a new fork, nothing of its own yet
                continue
            if len(raws_b) != b.length - start:
                raise CorruptData(k.events(b.conversation, b.name), f"expected {b.length - start} events")
            out.append(BranchBatch(c.info, b, self._fold(c, b, cur, self.log._decode(b, raws_b, start))))
            cur.next_seq = b.length
        return out

    def _fold(self, c: _Conv, b: BranchInfo, cur: _Cursor, events: list[Event]) -> list[Step]:
        steps = []
        for e in events:
            before = after = cur.state
            if not cur.broken:
                try:
                    after = apply(before, e)
                except EventRejected as err:  # show the events anyway; stop tracking the stack
                    cur.broken = True
                    log.warning("%s/%s: %s; the stack is no longer tracked", c.info.name, b.name, err)
            steps.append(Step(e, before, after))
            cur.state = after
        return steps

    def _read_scores(self, convs: list[_Conv], now: float) -> list[Update]:
        keys = [self.keys.scores(c.info.id) for c in convs]
        with self.log.guard(*keys):
            p = self.log.r.pipeline(transaction=False)
            for key in keys:
                p.hgetall(key)
            raws: list[dict[Any, Any]] = p.execute()
        out: list[Update] = []
        for c, key, raw in zip(convs, keys, raws, strict=True):
            c.scores_read = now
            fresh = []
            for f, v in raw.items():
                if c.score_raw.get(f) == v:
                    continue
                c.score_raw[f] = v
                try:
                    score = Score.model_validate_json(v)
                    fresh.append(score)
                    if score.status in ("pending", "running"):
                        c.unsettled.add(f)
                    else:
                        c.unsettled.discard(f)
                except ValidationError as e:
                    log.warning(
                        "%s: score %r does not parse (%s); skipped", key, f[:60], e.errors()[0]["msg"]
                    )
            if fresh:
                fresh.sort(
                    key=lambda s: (s.target.branch, -1 if s.target.seq is None else s.target.seq, s.evaluator)
                )
                out.append(ScoreBatch(c.info, fresh))
        return out
