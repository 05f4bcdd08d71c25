"""Running a rollout: plan the episodes (or what a resume has left), set up its money, drive its
rounds, settle, and record every step in the store. Running the episodes themselves is the
executor's (`Executor`: `actors/rollout.py` on Ray, which `p2e.api.run_rollout` plugs in); this
module imports no Ray.

```python
import p2e

result = p2e.rollout("experiments/quickstart.yaml")
for s in result.summary():
    print(s.variant, s.mean, (s.ci_low, s.ci_high), s.n, s.failures)
result.to_parquet("quickstart.parquet")
```
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from p2e.errors import InvalidArgument, P2EError, StoreLost, StoreUnavailable
from p2e.ledger.amount import format_amount
from p2e.redact import without_secret_settings
from p2e.rollouts.adaptive import Halving, annotate
from p2e.rollouts.coordinator import Coordinator
from p2e.rollouts.export import table, write_jsonl, write_parquet
from p2e.rollouts.failures import FailureLimit, TooManyFailures
from p2e.rollouts.fleet import Fleet
from p2e.rollouts.money import RolloutMoney
from p2e.rollouts.plan import Episode, Episodes
from p2e.rollouts.spec import Resolved, load_spec
from p2e.rollouts.stats import Comparison, VariantSummary, compare, summarize
from p2e.rollouts.store import (
    LEASE_S,
    PAGE,
    AdaptiveRecord,
    RolloutInfo,
    RolloutStore,
    RoundRecord,
    Row,
    StoredRows,
)
from p2e.rollouts.streamed import Streamed
from p2e.store import EventLog, connect


def spec_hash(resolved: Resolved) -> str:
    """What `--resume` checks the spec file against. An inline key is not part of it: the hash
    is stored, and must neither reveal the key nor stop a resume after the key was rotated. Nor
    is `run.max_failures`: a guard, not what is measured (a resume may loosen it)."""
    text = resolved.spec.model_dump_json(exclude={"run": {"max_failures"}})
    raw = json.loads(text)
    kept = without_secret_settings(raw, "")
    if kept != raw:  # (a spec without one keeps the hash it always had)
        text = json.dumps(kept, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def record_spec(resolved: Resolved) -> dict[str, Any]:
    """The spec as the rollout record keeps it: an inline key (an inline `agents:` mapping's
    `providers.openai.api_key`) is replaced by where it came from; a resume reads the spec file
    again, key included."""
    spec = without_secret_settings(
        json.loads(resolved.spec.model_dump_json()), f"<inline key from {resolved.path}: not stored>"
    )
    return spec | {"hash": spec_hash(resolved)}


def new_rollout_id(name: str) -> str:
    return f"{name[:40]}-{uuid.uuid4().hex[:6]}"


class RolloutResult:
    """A rollout's rows, with its summary and exports. `rows` is read from the store as it is
    iterated (`StoredRows`, a page at a time), so a result of a million episodes holds none of
    them; the summary, the comparison and the exports stream them."""

    def __init__(self, info: RolloutInfo, rows: Sequence[Row], baseline: str | None = None):
        self.info = info
        self.id = info.id
        self.rows = rows
        self.baseline = baseline

    @property
    def rounds(self) -> list[RoundRecord]:
        """Adaptive rollouts: each decided round (who ran, the standings, who stopped and why)."""
        return list(self.info.adaptive.decided) if self.info.adaptive else []

    @property
    def winner(self) -> str | None:
        """Adaptive rollouts: the variant the last round ranked first."""
        return self.info.adaptive.winner if self.info.adaptive else None

    def summary(self) -> list[VariantSummary]:
        """One summary per variant; in an adaptive rollout each says the rounds it ran in and
        its `outcome` (winner, or stopped after which round)."""
        return annotate(summarize(self.rows), self.info.adaptive)

    def compare(self, baseline: str | None = None) -> list[Comparison]:
        base = baseline or self.baseline or (self.rows[0].variant if self.rows else "")
        return compare(self.rows, base)

    def to_jsonl(self, path: str | Path) -> Path:
        write_jsonl(self.rows, Path(path))
        return Path(path)

    def to_parquet(self, path: str | Path) -> Path:
        write_parquet(self.rows, Path(path))
        return Path(path)

    def to_pandas(self) -> Any:
        """The rows as the Parquet export has them (same columns, types and nulls)."""
        try:
            import pandas  # noqa: F401
        except ImportError:
            raise InvalidArgument("to_pandas() needs pandas: pip install pandas") from None
        return table(self.rows).to_pandas()


class Todo(Streamed[Episode]):
    """The episodes still to run, built as they are read: the planned ones (`planned()` yields
    them afresh on each read) less those with a `done` row, looked up a page at a time when
    `check` (a resume; a new rollout has no rows). `count`: how many that is, when known
    without reading them (else `len` reads them once, holding none)."""

    def __init__(
        self,
        planned: Callable[[], Iterable[Episode]],
        store: RolloutStore,
        rid: str,
        check: bool,
        count: int | None = None,
    ):
        self.planned, self.store, self.rid, self.check, self._len = planned, store, rid, check, count

    def __len__(self) -> int:
        if self._len is None:
            self._len = sum(1 for _ in self)
        return self._len

    def __iter__(self) -> Iterator[Episode]:
        it = iter(self.planned())
        while page := list(itertools.islice(it, PAGE)):
            done = self.store.done_among(self.rid, [e.id for e in page]) if self.check else set()
            yield from (e for e in page if e.id not in done)


def plan(
    resolved: Resolved,
    store: RolloutStore,
    resume: str | None,
    episodes: Sequence[Episode] | None = None,
    halving: Halving | None = None,
) -> tuple[RolloutInfo, Todo]:
    """The rollout record (new, or the one resumed) and the episodes still to run (of
    `episodes`, the spec's expansion, `Episodes` if not given: built as the coordinator pulls
    them). An adaptive rollout (`halving`) plans only the rounds whose variants are known so
    far."""
    episodes = Episodes(resolved) if episodes is None else episodes
    if halving is None and resolved.spec.adaptive is not None:
        halving = Halving(resolved, episodes)
    if resume is None:
        now = time.time()
        info = RolloutInfo(
            id=new_rollout_id(resolved.spec.name),
            name=resolved.spec.name,
            spec_path=resolved.path,
            spec=record_spec(resolved),
            created=now,
            updated=now,
            episodes=len(episodes) if halving is None else halving.total,
            adaptive=None if halving is None else halving.record(),
        )
        store.create(info)
    else:
        info = store.get(resume)
        if info.spec.get("hash") != spec_hash(resolved):
            raise InvalidArgument(
                f"rollout {resume!r} was run from a different spec ({info.spec_path}); resume it with "
                "the same spec, or start a new rollout"
            )
        info = store.update(resume, status="running", note="")
    check = resume is not None  # (a resume counts what is left by reading the plan once)
    if halving is None:
        return info, Todo(lambda: episodes, store, info.id, check, None if check else len(episodes))
    h, known = halving, _known_rounds(halving, info.adaptive)
    planned = sum(len(variants) * h.units[r - 1] * h.teams for r, variants in known)

    def rounds() -> Iterator[Episode]:
        for r, variants in known:
            yield from h.episodes_of(r, variants)

    return info, Todo(rounds, store, info.id, check, None if check else planned)


def _known_rounds(halving: Halving, record: AdaptiveRecord | None) -> list[tuple[int, list[str]]]:
    """(round, its variants) for every round whose variants are known: the decided ones and the
    next."""
    out = [(1, list(halving.order))]
    for rec in record.decided if record else []:
        if rec.round < halving.rounds:
            out.append((rec.round + 1, rec.kept))
    return out


Drive = Callable[[Coordinator | None], Coroutine[Any, Any, None]]
"""Runs a rollout's episodes through a coordinator (all of them, or round by round)."""


@dataclass(frozen=True)
class Launch:
    """What running a rollout's episodes needs, handed to the executor: it brings the workers up,
    makes the coordinator over them (`coordinator(fleet)`), calls `on_start`, runs `drive` and
    takes the workers down."""

    resolved: Resolved
    log: EventLog
    store: RolloutStore
    info: RolloutInfo
    to_run: int
    drive: Drive
    money: RolloutMoney | None
    on_start: Callable[[RolloutInfo, int, int], None] | None
    on_row: Callable[[Row], None] | None
    address: str | None
    store_url: str | None
    ray_options: dict[str, Any]

    @property
    def score_in_supervisors(self) -> bool:
        spec = self.resolved.spec
        return bool(spec.evaluators) and spec.run.scoring == "supervisor"

    def coordinator(self, fleet: Fleet) -> Coordinator:
        run = self.resolved.spec.run
        return Coordinator(
            self.info.id,
            self.store,
            fleet,
            primary=self.resolved.spec.primary_metric,
            score_in_supervisors=self.score_in_supervisors,
            ramp_s=run.ramp_s,
            in_flight=run.in_flight,
            retries=run.retries,
            failures=None if run.max_failures is None else FailureLimit(run.max_failures, self.to_run),
            on_row=self.on_row,
            ledger_deltas=self.money.deltas if self.money is not None else None,
        )


Executor = Callable[[Launch], None]


def run_rollout(
    spec: str | Path | Resolved,
    *,
    execute: Executor,
    address: str | None = None,
    resume: str | None = None,
    store_url: str | None = None,
    namespace: str | None = None,
    on_start: Callable[[RolloutInfo, int, int], None] | None = None,
    on_row: Callable[[Row], None] | None = None,
    on_round: Callable[[RoundRecord, AdaptiveRecord], None] | None = None,
    **ray_options: Any,
) -> RolloutResult:
    """Run (or resume) a rollout to the end, its episodes run by `execute`, and return its
    result (`p2e.api.run_rollout` runs them on Ray).

    `on_start(info, to_run, total)` (once the actors are up), `on_row(row)` and, in an adaptive
    rollout, `on_round(record, adaptive)` (each round decided) let a caller show progress.
    Ctrl-C stops the episodes in flight and marks the rollout `interrupted`; passing
    `run.max_failures` does too, marks it `stopped` with the reason in its note, and raises
    `TooManyFailures`. `resume=<id>` runs what is left, failed episodes included (an adaptive
    rollout: its decided rounds are read back, not redecided).
    """
    resolved = spec if isinstance(spec, Resolved) else load_spec(spec)
    log = connect(store_url, namespace)
    store = RolloutStore(log)
    episodes = Episodes(resolved)  # built one at a time as they run
    halving = Halving(resolved, episodes) if resolved.spec.adaptive is not None else None
    info, todo = plan(resolved, store, resume, episodes, halving)
    lease = Lease(store, info.id)  # from here on, this process drives the rollout
    money = None
    try:
        if resolved.spec.ledger is not None:
            # the first episode of each (team, variant): its agents are every episode's of it
            money = RolloutMoney(log, resolved.spec.ledger, info.id, episodes[: len(episodes.cells)])
            before = money.setup()  # idempotent: a resumed rollout funds nothing twice
            if "balances_before" not in info.ledger:
                info = store.update(
                    info.id, ledger={"balances_before": {w: format_amount(v) for w, v in before.items()}}
                )
        if halving is not None:
            to_run = info.episodes - store.done_rounds(info.id).total()
            drive = _rounds(halving, store, info.id, on_round)
        else:
            to_run = len(todo)

            async def drive(coordinator: Coordinator | None) -> None:  # (a Drive)
                assert coordinator is not None
                await coordinator.run(todo)

        if to_run:
            execute(
                Launch(
                    resolved,
                    log,
                    store,
                    info,
                    to_run,
                    drive,
                    money,
                    on_start,
                    on_row,
                    address,
                    store_url,
                    ray_options,
                )
            )
        else:
            if on_start is not None:
                on_start(info, 0, info.episodes)
            if halving is not None:  # every row is in, a decision may not be (stopped right before it)
                asyncio.run(drive(None))
        info = store.get(info.id)
        if money is not None:  # every episode has its row: pay the bounty (once)
            rows: Iterable[Row] = store.iter_rows(info.id)
            if info.adaptive is not None:  # to the halving's survivors, on all their rows
                survivors = set(info.adaptive.survivors)
                rows = (r for r in rows if r.variant in survivors)
            settled = money.settle(rows)
            info = store.update(info.id, ledger={**info.ledger, **settled})
    except (redis.ConnectionError, redis.TimeoutError, StoreUnavailable) as e:
        # nothing can be written now: the lease runs out, and the rollout reads as interrupted
        cause = e.__cause__ if isinstance(e, StoreUnavailable) and e.__cause__ else e
        raise StoreLost(log.url, info.id, resolved.path or "SPEC", cause) from None
    except TooManyFailures as e:
        with contextlib.suppress(redis.RedisError):
            store.update(info.id, status="stopped", note=e.reason)
        raise TooManyFailures(e.reason, info.id, resolved.path) from None
    except BaseException:
        with contextlib.suppress(redis.RedisError):
            store.update(info.id, status="interrupted")
        raise
    finally:
        lease.stop()
        if money is not None:
            money.close()
    info = store.update(info.id, status="done")
    baseline = resolved.variants[0].name if resolved.variants else None
    return RolloutResult(info, StoredRows(store, info.id), baseline)


class Lease:
    """Holds the rollout's driver lease while this process drives it (a daemon thread renews
    it), so a driver killed without a word leaves a rollout that reads as `interrupted`."""

    def __init__(self, store: RolloutStore, rid: str):
        self.store, self.rid = store, rid
        self._stop = threading.Event()
        store.hold(rid)
        self._thread = threading.Thread(target=self._renew, name=f"p2e-lease-{rid}", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(LEASE_S / 3):
            with contextlib.suppress(redis.RedisError):  # a store that is down: the lease lapses
                self.store.hold(self.rid)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(redis.RedisError):
            self.store.release(self.rid)


def _rounds(
    halving: Halving,
    store: RolloutStore,
    rid: str,
    on_round: Callable[[RoundRecord, AdaptiveRecord], None] | None,
) -> Drive:
    """Successive halving: each round's missing episodes, then its decision (stored before the
    next round starts; a decision already stored is read back)."""

    async def drive(coordinator: Coordinator | None) -> None:
        record = store.get(rid).adaptive
        assert record is not None
        decided = {rec.round: rec for rec in record.decided}
        variants = list(halving.order)
        for r in range(1, halving.rounds + 1):
            started = (await asyncio.to_thread(store.done_rounds, rid))[r]
            planned = len(variants) * halving.units[r - 1] * halving.teams
            episodes = functools.partial(halving.episodes_of, r, variants)
            todo = Todo(episodes, store, rid, True, None if started else planned)
            if await asyncio.to_thread(len, todo):
                if coordinator is None:
                    raise P2EError(f"rollout {rid}: round {r} has episodes to run and no coordinator")
                await coordinator.run(todo)
            rec = decided.get(r)
            if rec is None:
                rec = await asyncio.to_thread(halving.decide, r, variants, store.iter_rows(rid))
                if all(st.mean is None for st in rec.standings):  # nothing to rank them by
                    failed = sum(st.failures for st in rec.standings)
                    raise P2EError(
                        f"rollout {rid}: round {r} has no scored episode ({failed} failed), so no "
                        f"variant can be ranked; see `p2e rollout show {rid} --rows`, fix the cause "
                        "and resume (failed episodes run again)"
                    )
                decided[r] = rec
                last = r == halving.rounds
                record = record.model_copy(
                    update={"decided": [*record.decided, rec], "survivors": rec.kept if last else []}
                )
                await asyncio.to_thread(store.update, rid, adaptive=record)
                if on_round is not None:
                    on_round(rec, record)
            variants = rec.kept

    return drive
