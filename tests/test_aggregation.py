"""Every view of a rollout tells the same numbers: the summary (`p2e rollout show`,
`RolloutResult.summary()`), Rerun's leaderboard, the bounty's payout and the exports read back
(pyarrow, JSONL, SQL) agree on each variant's mean, interval, n and failures; a failed episode
has no score anywhere, and the export's columns work unquoted in SQL."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import Cli
from test_obs_rerun import read_rrd

from p2e.api import run_rollout
from p2e.evals.store import ScoreStore
from p2e.events import Limits
from p2e.ledger import LedgerConfig
from p2e.obs import record_rows
from p2e.rollouts.export import score_column, write_jsonl, write_parquet
from p2e.rollouts.money import RolloutMoney
from p2e.rollouts.plan import Episode
from p2e.rollouts.run import RolloutResult
from p2e.rollouts.stats import summarize
from p2e.rollouts.store import RolloutInfo, RolloutStore, Row
from p2e.store import EventLog

ROOT = Path(__file__).resolve().parents[1]


def _row(
    i: int, variant: str, scenario: str, primary: float | None, status: str = "done", **kw: object
) -> Row:
    return Row(
        rollout="agg",
        episode=f"e{i}",
        team="desk",
        variant=variant,
        scenario=scenario,
        repeat=i,
        seed=i,
        status=status,  # type: ignore[arg-type]
        primary=primary,
        scores={"contains": primary, "judge.v2": None if primary is None else primary / 2},
        tokens=100 + i,
        cost_usd=0.001 * i,
        wall_s=0.5,
        **kw,  # type: ignore[arg-type]
    )


def rows() -> list[Row]:
    """Two variants; `good` has an episode whose evaluation failed (done, no score), `bad` a
    failed episode stored as today's main stored one: scored 0.0 although it failed."""
    out = [
        _row(0, "good", "s1", 1.0),
        _row(1, "good", "s2", 0.75),
        _row(2, "good", "s3", 0.5),
        _row(3, "good", "s1", None),
        _row(4, "bad", "s1", 0.5),
        _row(5, "bad", "s2", 0.25),
        _row(6, "bad", "s3", 0.0),
        _row(7, "bad", "s2", 0.0, "failed", error="budget: over max_tokens"),
    ]
    return out


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def test_every_view_tells_the_same_numbers(tmp_path: Path, log: EventLog, cli: Cli, store_env: dict) -> None:
    data = rows()
    summary = {s.variant: s for s in summarize(data)}
    assert (summary["good"].n, summary["good"].failures, summary["good"].mean) == (3, 0, 0.75)
    assert (summary["bad"].n, summary["bad"].failures, summary["bad"].mean) == (3, 1, 0.25)
    means = {v: s.mean for v, s in summary.items()}

    # the Python API
    now = time.time()
    info = RolloutInfo(id="agg", name="agg", spec_path="agg.yaml", spec={}, created=now, updated=now)
    assert {s.variant: s for s in RolloutResult(info, data).summary()} == summary

    # `p2e rollout show`
    store = RolloutStore(log)
    store.create(info)
    for r in data:
        store.put_row(r)
    code, out, err = cli("rollout", "show", "agg")
    assert code == 0, err
    for v, s in summary.items():
        line = next(x for x in out.splitlines() if f"│ {v} " in x)
        cells = [c.strip() for c in line.split("│")[1:-1]]
        assert cells[1:5] == [
            str(s.n),
            str(s.failures),
            _num(s.mean),
            f"[{_num(s.ci_low)}, {_num(s.ci_high)}]",
        ]

    # Rerun's leaderboard: the bars (by name) and the ranked table
    rrd = tmp_path / "agg.rrd"
    record_rows(data, "agg", rrd)
    got = read_rrd(rrd)
    bars = got["rollouts/agg/leaderboard"][-1]["BarChart:values"]
    values = bars.get("buffer", bars) if isinstance(bars, dict) else bars
    if isinstance(values, tuple):
        values = values[1]
    assert [pytest.approx(x) for x in values] == [means["bad"], means["good"]]
    table = got["rollouts/agg/leaderboard/table"][-1]["TextDocument:text"]
    for rank, v in enumerate(("good", "bad"), 1):
        s = summary[v]
        ci = f"[{_num(s.ci_low)}, {_num(s.ci_high)}]"
        assert f"| {rank} | {v} | {_num(s.mean)} | {ci} | {s.n} | {s.episodes} | {s.failures} |" in table
    grid = got["rollouts/agg/matrix"][-1]["TextDocument:text"]
    assert "| bad | 0.50 (n=1) | 0.25 (n=1) | 0.00 (n=1) |" in grid  # the failed one is no score

    # the payout ranks the variants by the same means
    config = LedgerConfig(sponsor="sponsor", bounty=10, arbiter="judge")
    episodes = [
        Episode(
            id=f"x{v}",
            team="desk",
            variant=v,
            scenario="s1",
            repeat=0,
            seed=0,
            root=f"{v}-agent",
            graph={f"{v}-agent": ()},
            overrides={},
            message="hi",
            limits=Limits(),
        )
        for v in ("good", "bad")
    ]
    money = RolloutMoney(log, config, "agg", episodes)
    try:
        money.setup()
        settled = money.settle(data)
    finally:
        money.close()
    assert settled["payout"]["scores"] == means
    assert settled["payout"]["winners"] == ["good"]

    # the exports read back: pyarrow, pandas-free group by, JSONL, and SQL with unquoted names
    write_parquet(data, tmp_path / "agg.parquet")
    write_jsonl(data, tmp_path / "agg.jsonl")
    table_back = pq.read_table(tmp_path / "agg.parquet")
    records = table_back.to_pylist()
    assert [json.loads(x) for x in (tmp_path / "agg.jsonl").read_text().splitlines()] == records
    for v, s in summary.items():
        mine = [r for r in records if r["variant"] == v]
        scores = [r["primary_score"] for r in mine if r["primary_score"] is not None]
        assert (len(scores), sum(r["status"] == "failed" for r in mine)) == (s.n, s.failures)
        assert sum(scores) / len(scores) == pytest.approx(s.mean)
    db = sqlite3.connect(":memory:")
    cols = table_back.column_names
    db.execute(f"CREATE TABLE agg ({', '.join(cols)})")  # every name unquoted
    db.executemany(
        f"INSERT INTO agg VALUES ({', '.join('?' * len(cols))})", [tuple(r.values()) for r in records]
    )
    sql = (
        "SELECT variant, avg(primary_score), count(primary_score), sum(status = 'failed') "
        "FROM agg GROUP BY variant"
    )
    for variant, mean, n, failed in db.execute(sql):
        s = summary[variant]
        assert (mean, n, failed) == (pytest.approx(s.mean), s.n, s.failures)


def test_a_failed_episode_has_no_score_in_any_export(tmp_path: Path) -> None:
    data = rows()
    write_parquet(data, tmp_path / "r.parquet")
    write_jsonl(data, tmp_path / "r.jsonl")
    for records in (
        pq.read_table(tmp_path / "r.parquet").to_pylist(),
        [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()],
    ):
        (failed,) = [r for r in records if r["status"] == "failed"]
        scores = {k: v for k, v in failed.items() if k.startswith("score_") or k == "primary_score"}
        assert scores == {"primary_score": None, "score_contains": None, score_column("judge.v2"): None}
        assert records[0]["primary_score"] == 1.0 and records[0]["score_contains"] == 1.0


def test_export_columns_are_sql_names_with_types_from_the_row(tmp_path: Path) -> None:
    ids = ["contains", "Contains", "judge.v2", "judge-v2", "judge_v2", "judge__v2", "2nd", "_x"]
    columns = [score_column(i) for i in ids]
    assert len(set(columns)) == len(ids)  # no two evaluators share a column
    assert columns[0] == "score_contains" and columns[4] == "score_judge_v2" and columns[6] == "score_2nd"
    assert all(re.fullmatch(r"[a-z_][a-z0-9_]*", c) for c in columns)
    assert [score_column(i) for i in ids] == columns  # deterministic

    plain = [r.model_copy(update={"scores": {i: 0.5 for i in ids}}) for r in rows()[:2]]
    write_parquet(plain, tmp_path / "r.parquet")
    schema = pq.read_schema(tmp_path / "r.parquet")
    assert schema.field("round").type == pa.int64()  # every value null, still an integer column
    assert schema.field("primary_score").type == pa.float64()
    assert schema.field("repeat").type == pa.int64() and schema.field("error").type == pa.string()
    assert "primary" not in schema.names and not [n for n in schema.names if "." in n]
    assert all(schema.field(c).type == pa.float64() for c in columns)
    db = sqlite3.connect(":memory:")
    db.execute(f"CREATE TABLE r ({', '.join(schema.names)})")
    db.execute(f"SELECT {', '.join(schema.names)} FROM r")  # every name works unquoted


MAX_STEPS_SPEC = {
    "name": "failing",
    "agents": str(ROOT / "experiments" / "agents.yaml"),
    "teams": [{"id": "desk", "root": "planner"}],
    "scenarios": [{"id": "paris", "message": "What is the weather in Paris?", "reference": "snow"}],
    "repeats": 2,
    "limits": {"max_steps": 2},
    "evaluators": [{"id": "max_steps", "per": "episode", "params": {"limit": 10}}],
}


def test_a_failed_episode_of_a_rollout_has_no_score(
    ray_session: None, store_url: str, namespace: str, tmp_path: Path
) -> None:
    """An episode stopped by its step limit still gets scores from its evaluators (here
    `max_steps`, which would give it 1.0); its row keeps them null, so it counts as failed only."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(MAX_STEPS_SPEC))
    result = run_rollout(spec, store_url=store_url, namespace=namespace)
    assert len(result.rows) == 2 and all(r.status == "failed" for r in result.rows)
    assert all(r.primary is None and r.scores == {"max_steps": None} for r in result.rows)
    log = EventLog(store_url, namespace)
    try:  # the evaluator did score it (1.0: two steps, under ten); only the row leaves it out
        stored = ScoreStore(log).all(result.rows[0].conversation)
    finally:
        log.close()
    assert [(s.evaluator, s.value) for s in stored if s.target.is_episode] == [("max_steps", 1.0)]
    (s,) = result.summary()
    assert (s.n, s.failures, s.mean) == (0, 2, None)
