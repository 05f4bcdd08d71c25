"""A rollout's rows streamed from the store give the numbers the rows held in memory give, and
the driver holds none of them: `Tally` (the one aggregation, fed a row at a time), `StoredRows`
(`RolloutResult.rows`, read a page at a time) and the lazy plan the coordinator pulls from."""

from __future__ import annotations

import asyncio
import math
import random
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_coordinator import FakeFleet, episode

from p2e.rollouts.coordinator import Coordinator
from p2e.rollouts.export import table
from p2e.rollouts.run import RolloutResult, Todo
from p2e.rollouts.stats import VariantSummary, bootstrap_ci, compare, summarize
from p2e.rollouts.store import PAGE, RolloutInfo, RolloutStore, Row, StoredRows
from p2e.store import EventLog

SCORE = st.one_of(st.none(), st.floats(0, 1), st.sampled_from([0.0, 0.5, 1.0]))
ROW = st.fixed_dictionaries(
    {
        "team": st.sampled_from(["a", "b"]),
        "variant": st.sampled_from(["base", "v1", "v2"]),
        "scenario": st.sampled_from(["s1", "s2", "s3"]),
        "status": st.sampled_from(["done", "done", "failed"]),
        "primary": SCORE,
        "judge": SCORE,
        "tokens": st.integers(0, 10_000),
        "cost_usd": st.floats(0, 5),
        "wall_s": st.floats(0, 100),
        "round": st.one_of(st.none(), st.integers(1, 3)),
    }
)


def _rows(specs: list[dict], rid: str = "r") -> list[Row]:
    return [
        Row(
            rollout=rid,
            episode=f"e{i:05d}",
            team=d["team"],
            variant=d["variant"],
            scenario=d["scenario"],
            repeat=i,
            seed=i,
            status=d["status"],
            error=None if d["status"] == "done" else "boom",
            primary=d["primary"],
            scores={"judge": d["judge"]},
            tokens=d["tokens"],
            cost_usd=d["cost_usd"],
            wall_s=d["wall_s"],
            round=d["round"],
        )
        for i, d in enumerate(specs)
    ]


def in_memory(
    rows: list[Row], metric: str | None = None, by_team: bool | None = None
) -> list[VariantSummary]:
    """The summary as the rules say it, over every row held in a list (what `summarize` did
    before it streamed): grouped lists, the values' mean and bootstrap, exact sums."""
    several = len({r.team for r in rows}) > 1 if by_team is None else by_team
    groups: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        groups[f"{r.team}/{r.variant}" if several else r.variant].append(r)
    out = []
    for name in sorted(groups):
        rs = groups[name]
        values = sorted(
            v
            for r in rs
            if r.status == "done" and (v := r.primary if metric is None else r.scores.get(metric)) is not None
        )
        ci = bootstrap_ci(values)
        out.append(
            VariantSummary(
                variant=name,
                n=len(values),
                failures=sum(r.status == "failed" for r in rs),
                episodes=len(rs),
                mean=math.fsum(values) / len(values) if values else None,
                ci_low=ci[0] if ci else None,
                ci_high=ci[1] if ci else None,
                tokens=sum(r.tokens for r in rs),
                cost_usd=math.fsum(r.cost_usd for r in rs),
                mean_wall_s=math.fsum(r.wall_s for r in rs) / len(rs),
                rounds=sorted({r.round for r in rs if r.round is not None}),
            )
        )
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=st.lists(ROW, max_size=60), seed=st.integers(0, 2**16))
def test_the_summary_of_rows_in_any_order_is_the_in_memory_one(specs: list[dict], seed: int) -> None:
    rows = _rows(specs)
    shuffled = rows[:]
    random.Random(seed).shuffle(shuffled)
    for metric, by_team in ((None, None), ("judge", None), (None, False), (None, True)):
        want = in_memory(rows, metric, by_team)
        assert summarize(rows, metric, by_team=by_team) == want
        assert summarize(iter(shuffled), metric, by_team=by_team) == want  # a stream, another order
    assert compare(iter(shuffled), "base") == compare(rows, "base")


def test_streamed_from_the_store_the_result_is_the_same(log: EventLog, tmp_path: Path) -> None:
    rng = random.Random(7)
    specs = [
        {
            "team": rng.choice("ab"),
            "variant": rng.choice(["base", "v1", "v2"]),
            "scenario": rng.choice(["s1", "s2", "s3"]),
            "status": rng.choice(["done", "done", "failed"]),
            "primary": rng.choice([None, 0.0, 0.5, 1.0, rng.random()]),
            "judge": rng.choice([None, rng.random()]),
            "tokens": rng.randrange(10_000),
            "cost_usd": rng.random() / 3,
            "wall_s": rng.random() * 10,
            "round": None,
        }
        for _ in range(PAGE * 2 + 37)  # several pages
    ]
    rows = _rows(specs, "big")
    store = RolloutStore(log)
    store.create(RolloutInfo(id="big", name="big", spec_path="s.yaml", spec={}, created=0, updated=0))
    for r in rows:
        store.put_row(r)
    info = store.get("big")
    held = RolloutResult(info, rows, "base")
    lazy = RolloutResult(info, StoredRows(store, "big"), "base")
    assert not isinstance(lazy.rows, list) and len(lazy.rows) == len(rows)
    assert lazy.summary() == held.summary() == in_memory(rows)
    assert lazy.compare() == held.compare()
    assert {r.episode for r in lazy.rows} == {r.episode for r in rows}  # every row, once
    first = next(iter(lazy.rows))
    assert lazy.rows[0] == first and lazy.rows[-1] in rows and lazy.rows[:2][0] == first
    assert pq.read_table(lazy.to_parquet(tmp_path / "r.parquet")).num_rows == len(rows)
    assert sum(1 for _ in lazy.to_jsonl(tmp_path / "r.jsonl").open()) == len(rows)
    t = table(lazy.rows)  # what to_pandas() converts
    assert t.num_rows == len(rows) and t.column("score_judge").null_count == sum(
        r.status != "done" or r.scores["judge"] is None for r in rows
    )


def test_the_coordinator_pulls_a_lazy_plan_and_a_resume_skips_done_rows(log: EventLog) -> None:
    store = RolloutStore(log)
    store.create(RolloutInfo(id="r1", name="r", spec_path="s.yaml", spec={}, created=0, updated=0))
    built: list[str] = []

    def planned():  # type: ignore[no-untyped-def]
        for i in range(PAGE + 5):  # more than a page: done rows are looked up page by page
            e = episode(i)
            built.append(e.id)
            yield e

    fleet = FakeFleet(supervisors=2)
    todo = Todo(planned, store, "r1", check=False, count=PAGE + 5)
    asyncio.run(Coordinator("r1", store, fleet, primary=None, in_flight=4, retries=0).run(todo))
    assert store.count("r1") == PAGE + 5 and len(built) == PAGE + 5
    # a resume: two rows are gone (never ran), one failed: those three run again, nothing else
    ids = [episode(i).id for i in (3, PAGE + 1)]
    store.r.hdel(store.rows_key("r1"), *ids)
    failed = store.rows("r1")[10].model_copy(update={"status": "failed"})
    store.put_row(failed)
    again = Todo(planned, store, "r1", check=True)
    assert len(again) == 3 and sorted(e.id for e in again) == sorted([*ids, failed.episode])
    assert store.done_rounds("r1") == {None: PAGE + 2}
