"""Rollouts in the store: what was asked (the spec), how far it got, and a row per episode.

Keys: `ns:rollouts` and `ns:rollout:*`, laid out in `p2e/store/keys.py`.

A row is written only when its episode is done or has failed for good, so "resume" means: run
every planned episode without a `done` row.

Secrets never reach these keys: a row's texts (`answer`, `error`: a model or a tool may echo a
key) and the record's spec and note go through the redactor (p2e/redact.py) on their way in,
and a row read back is redacted again (a row stored before a key was known, or by an older p2e).
"""

from __future__ import annotations

import builtins
import json
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Literal

from pydantic import BaseModel, ValidationError, field_validator

from p2e.errors import CorruptData, NotFound, one_line
from p2e.prefix import first, match_pattern
from p2e.redact import default_redactor
from p2e.rollouts.streamed import Streamed
from p2e.runtime.steps import EndedBy
from p2e.store import EventLog
from p2e.store.replies import as_list

RolloutStatus = Literal["running", "interrupted", "stopped", "done"]
"""`stopped`: it passed `run.max_failures` (its `note` says why); `--resume` runs the rest."""
LEASE_S = 15
"""A running rollout's driver renews its lease this often x3; past it, the rollout reads as
`interrupted` (the driver was killed: nothing else would have said so)."""
PAGE = 1000
"""Rows read from the store per round trip when streaming them."""


class Row(BaseModel):
    """One episode's outcome: the unit of every summary, comparison and export."""

    rollout: str
    episode: str
    team: str
    variant: str
    scenario: str
    repeat: int
    seed: int
    status: Literal["done", "failed"]
    error: str | None = None
    answer: str | None = None
    primary: float | None = None
    scores: dict[str, float | None] = {}
    """Evaluator id -> value (an episode score, or the mean of its step scores); None: it failed."""
    steps: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    wall_s: float = 0.0
    conversation: str = ""
    branch: str = "main"
    attempts: int = 1
    abandoned: list[str] = []
    """Conversations of earlier attempts that died with their actor or node (kept, not scored)."""
    ledger_deltas: dict[str, str] = {}
    """Wallet -> net change from the episode's own payments, as signed decimal text."""
    node: str = ""
    """The Ray node whose supervisor ran the episode."""
    finished: float = 0.0
    round: int | None = None
    """The round of an adaptive rollout the episode ran in (1, 2, ...); None: not adaptive."""
    turns: int = 1
    """User turns sent in the episode's dialogue (its message and the scripted turns that ran)."""
    ended_by: EndedBy = ""
    """Who ended the dialogue: `script`, `user`, `limit` (max_turns) or `error`; empty in rows
    written before p2e said."""
    end_reason: str = ""
    """Why: `turn 2: the answer to turn 1 did not match 'x'`, `turn 3 failed`, the simulated
    user's verdict line (`GOAL MET: ...`), ..."""
    goal_met: bool | None = None
    """The simulated user's verdict (also the `goal_met` score); None: no simulated user."""

    @field_validator("answer", "error")
    @classmethod
    def _redacted(cls, v: str | None) -> str | None:
        """Model and tool text: every view and export of a row starts from here."""
        return None if v is None else default_redactor().text(v)


class Standing(BaseModel):
    """A variant's place when a round of an adaptive rollout was decided: its primary score over
    every row it had so far, and whether it goes on."""

    variant: str
    rank: int
    """1 = the leader."""
    n: int
    """Episodes whose score counted (see `adaptive.failed_score`)."""
    failures: int
    mean: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    """The 95% percentile-bootstrap interval of the mean (None below two scores)."""
    kept: bool
    tied: bool = False
    """Stopped with a mean equal to the cutoff's: the tie was broken by `tie_break`."""
    tie_break: str = ""
    """What ranked it below the cutoff on a tie: `more unscored` episodes, or `spec order`."""
    separated: bool = False
    """Stopped, and its interval lies wholly below the leader's: a clear loss, not only a lower
    point estimate."""
    reason: str = ""
    """Why it was stopped (empty when kept)."""


class RoundRecord(BaseModel):
    """One decided round of an adaptive rollout."""

    round: int
    variants: list[str]
    """The variants that ran this round (spec order)."""
    units: int
    """Scenario x repeat pairs in this round's chunk."""
    episodes: int
    """Episodes planned for the round: variants x teams x units."""
    cutoff: float | None = None
    """The mean of the last variant kept."""
    leader: str
    standings: list[Standing]
    """Every variant of the round, best first."""

    @property
    def kept(self) -> list[str]:
        return [s.variant for s in self.standings if s.kept]

    @property
    def stopped(self) -> list[Standing]:
        return [s for s in self.standings if not s.kept]


class AdaptiveRecord(BaseModel):
    """What an adaptive rollout planned and what it decided so far."""

    method: str = "halving"
    keep: float
    finalists: int
    rounds: int
    """Rounds planned."""
    plan: list[dict[str, int]] = []
    """Per round: `round`, `units`, `variants` (how many run it), `episodes`."""
    grid_episodes: int
    """The full grid's episodes (what a plain rollout of the spec would run)."""
    decided: list[RoundRecord] = []
    survivors: list[str] = []
    """Once the last round is decided: the variants kept after it, best first (`finalists` of
    them when the rounds sufficed to get there)."""

    @property
    def winner(self) -> str | None:
        """The best variant of the last round, once every round is decided."""
        return self.survivors[0] if self.survivors and len(self.decided) == self.rounds else None


class RolloutInfo(BaseModel):
    id: str
    name: str
    spec_path: str
    spec: dict
    created: float
    updated: float
    status: RolloutStatus = "running"
    episodes: int = 0
    note: str = ""
    """Why it stopped, when it did (`stopped`); cleared by a resume."""
    ledger: dict = {}
    """With a `ledger:` section: balances before and after, and the bounty's payout."""
    adaptive: AdaptiveRecord | None = None
    """With an `adaptive:` section: the rounds planned and decided (`episodes` is then the
    adaptive plan's total, not the full grid's)."""


def _stored(info: RolloutInfo) -> str:
    """The record as stored: a key-shaped string in the spec (a mock rule's text, a scenario) or
    the note masked. (Inline provider keys are replaced by where they came from before this,
    in `p2e.rollouts.run.plan`.)"""
    r = default_redactor()
    return info.model_copy(update={"spec": r.value(info.spec), "note": r.text(info.note)}).model_dump_json()


class RolloutStore:
    def __init__(self, log: EventLog):
        self.log = log
        self.r = log.r
        self._index = log.keys.rollouts
        self._info_key = log.keys.rollout
        self.rows_key = log.keys.rollout_rows
        self._attempts_key = log.keys.rollout_attempts
        self._lease_key = log.keys.rollout_lease

    def hold(self, rid: str) -> None:
        """Renew the running driver's lease (every `LEASE_S / 3` while it runs): a rollout whose
        lease ran out is read as `interrupted`, since its driver died without saying so."""
        self.r.set(self._lease_key(rid), str(os.getpid()), ex=LEASE_S)

    def release(self, rid: str) -> None:
        self.r.delete(self._lease_key(rid))

    def create(self, info: RolloutInfo) -> None:
        p = self.r.pipeline(transaction=True)
        p.set(self._info_key(info.id), _stored(info))
        p.zadd(self._index, {info.id: info.created})
        p.execute()

    def update(self, rid: str, **fields: object) -> RolloutInfo:
        info = self._read(rid).model_copy(update={**fields, "updated": time.time()})
        self.r.set(self._info_key(rid), _stored(info))
        return info

    def get(self, rid: str) -> RolloutInfo:
        """The record, with a `running` rollout whose driver's lease ran out read as
        `interrupted`."""
        info = self._read(rid)
        if info.status == "running" and not self.r.exists(self._lease_key(rid)):
            return info.model_copy(update={"status": "interrupted"})  # its driver is gone
        return info

    def _read(self, rid: str) -> RolloutInfo:
        raw = self.r.get(self._info_key(rid))
        if raw is None:
            known = self.ids()[-5:]
            hint = f"; recent rollouts: {', '.join(known)}" if known else "; no rollout has run yet"
            raise NotFound(f"no rollout {rid!r}{hint} (see `p2e rollout list`)")
        try:
            return RolloutInfo.model_validate_json(raw)
        except ValidationError as e:
            raise CorruptData(self._info_key(rid), f"does not hold a rollout: {one_line(e)}") from None

    def ids(self) -> list[str]:
        return [i.decode() for i in as_list(self.r.zrange(self._index, 0, -1))]

    def matching(self, prefix: str) -> list[str]:
        """Ids that begin with `prefix` (a few: a server-side scan of the index, see `p2e.prefix`);
        just `prefix` when it is an id."""
        if self.r.exists(self._info_key(prefix)):
            return [prefix]
        found = self.r.zscan_iter(self._index, match=match_pattern(prefix), count=1000)
        return first(m.decode(errors="replace") for m, _ in found)

    def list(self) -> list[RolloutInfo]:
        return [self.get(i) for i in self.ids()]

    def next_attempt(self, rid: str, episode: str) -> int:
        return int(self.r.hincrby(self._attempts_key(rid), episode, 1))

    def put_row(self, row: Row) -> None:
        r = default_redactor()  # (a row made by model_copy skipped its validators)
        texts = {"answer": row.answer and r.text(row.answer), "error": row.error and r.text(row.error)}
        self.r.hset(self.rows_key(row.rollout), row.episode, row.model_copy(update=texts).model_dump_json())

    def count(self, rid: str) -> int:
        """How many episodes of the rollout have a row."""
        return int(self.r.hlen(self.rows_key(rid)))

    def iter_rows(self, rid: str) -> Iterator[Row]:
        """The rollout's rows in the store's order, read a page (`PAGE`) at a time: what every
        summary and export streams, so that none holds a rollout's rows at once."""
        self.get(rid)
        key = self.rows_key(rid)
        for eid, raw in self.r.hscan_iter(key, count=PAGE):
            yield _row(key, eid, raw)

    def rows(self, rid: str) -> builtins.list[Row]:  # (`list` here is the method above)
        """Every row at once, sorted by variant, scenario, repeat and team (`iter_rows` streams
        them)."""
        out = builtins.list(self.iter_rows(rid))
        out.sort(key=lambda r: (r.variant, r.scenario, r.repeat, r.team))
        return out

    def done_rounds(self, rid: str) -> Counter[int | None]:
        """How many episodes have a `done` row, by round (None: not adaptive); read a page at a
        time, holding no row."""
        out: Counter[int | None] = Counter()
        for _, raw in self.r.hscan_iter(self.rows_key(rid), count=PAGE):
            row = _fields(raw)
            if row.get("status") == "done":
                out[row.get("round")] += 1
        return out

    def done_among(self, rid: str, episodes: Sequence[str]) -> set[str]:
        """Those of `episodes` that have a `done` row (failed ones run again on resume)."""
        if not episodes:
            return set()
        raws = as_list(self.r.hmget(self.rows_key(rid), builtins.list(episodes)))
        return {e for e, raw in zip(episodes, raws, strict=True) if _fields(raw).get("status") == "done"}


class StoredRows(Streamed[Row]):
    """A rollout's rows as `RolloutResult.rows` has them: read from the store when iterated, a
    page at a time, in the store's order (`sorted(...)` them for another); `len` asks the store.
    Indexing reads up to the row asked for; a slice reads them all."""

    def __init__(self, store: RolloutStore, rid: str):
        self.store, self.rid = store, rid

    def __len__(self) -> int:
        return self.store.count(self.rid)

    def __iter__(self) -> Iterator[Row]:
        return self.store.iter_rows(self.rid)


def _row(key: str, eid: bytes, raw: bytes) -> Row:
    try:
        return Row.model_validate_json(raw)
    except ValidationError as e:
        raise CorruptData(key, f"entry {eid.decode()!r} is not a row: {one_line(e)}") from None


def _fields(raw: bytes | None) -> dict:
    """A stored row's fields, without validating the row ({} if there is none, or it is not
    one)."""
    if raw is None:
        return {}
    try:
        out = json.loads(raw)
    except ValueError:
        return {}
    return out if isinstance(out, dict) else {}
