"""Adaptive rollouts (successive halving) and what a variant's gain costs: the halving logic
without Ray, its driver over the store with a scripted coordinator, bad configurations, and a
whole adaptive rollout on Ray (run, interrupted, resumed)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import Cli
from test_rollouts import SPEC, spec_error, write_spec

from p2e.api import run_rollout
from p2e.rollouts.adaptive import Halving, annotate, deal, decide, outcomes
from p2e.rollouts.halving import Adaptive, auto_rounds, next_count, schedule
from p2e.rollouts.plan import Episode, expand
from p2e.rollouts.run import _rounds, plan
from p2e.rollouts.spec import load_spec
from p2e.rollouts.stats import compare, per_extra, summarize
from p2e.rollouts.store import AdaptiveRecord, RolloutStore, Row
from p2e.store import EventLog

ROOT = Path(__file__).resolve().parent.parent
HALVING = ROOT / "experiments" / "halving.yaml"
BEST = "v6"  # experiments/halving.yaml scripts v6 to be right on 21 of 24 sums; the next, v4, 16


def halving_spec() -> dict:
    return yaml.safe_load(HALVING.read_text())


def _row(variant: str, scenario: str, primary: float | None, status: str = "done", **kw: object) -> Row:
    return Row(
        rollout="r",
        episode=f"{variant}-{scenario}",
        team="t",
        variant=variant,
        scenario=scenario,
        repeat=0,
        seed=0,
        status=status,  # type: ignore[arg-type]
        primary=primary,
        **kw,  # type: ignore[arg-type]
    )


# --- the schedule ----------------------------------------------------------------------------------


def test_counts_halve_round_up_and_always_drop_one() -> None:
    assert schedule(Adaptive(), 8) == [8, 4, 2] and auto_rounds(8, 0.5, 1) == 3
    assert schedule(Adaptive(), 6) == [6, 3, 2]  # 3 * 0.5 rounds up to 2, then 1
    assert schedule(Adaptive(finalists=2), 8) == [8, 4]
    assert next_count(10, 0.3, 1) == 3  # 0.3 * 10 is 3.0000000000000004 in floats: not 4
    assert next_count(5, 0.9, 1) == 4  # ceil(4.5) = 5 would stop nobody: one stops anyway
    assert next_count(3, 0.1, 2) == 2  # never below the finalists
    assert next_count(2, 0.5, 2) == 2  # and nobody stops once there
    assert schedule(Adaptive(rounds=5), 8) == [8, 4, 2, 1, 1]  # more rounds: the finalist goes on
    assert schedule(Adaptive(rounds=2), 8) == [8, 4]


def test_dealing_is_seeded_equal_and_covers_scenarios_before_repeats() -> None:
    scenarios = [f"s{i}" for i in range(10)]
    a = deal(scenarios, 2, 3, seed=0)
    assert a == deal(list(reversed(scenarios)), 2, 3, seed=0)  # the order given does not matter
    assert sorted(a) == sorted((rep, s) for rep in range(2) for s in scenarios)  # each pair once
    sizes = [sum(r == k for r in a.values()) for k in (1, 2, 3)]
    assert sizes == [7, 7, 6]  # equal chunks, the larger first
    first = [u for u, r in a.items() if r == 1]
    assert {rep for rep, _ in first} == {0} and len({s for _, s in first}) == 7  # distinct scenarios
    assert deal(scenarios, 2, 3, seed=1) != a  # another seed, another order
    assert deal(scenarios, 1, 10, seed=0) != deal(scenarios, 1, 10, seed=2)


# --- a round's decision ----------------------------------------------------------------------------


def test_decision_ranks_by_mean_and_says_why_each_variant_stopped() -> None:
    rows = [
        *(_row("a", f"s{i}", 1.0 if i < 3 else 0.0, round=1) for i in range(4)),  # 0.75
        *(_row("b", f"s{i}", 1.0, round=1) for i in range(4)),  # 1.0
        *(_row("c", f"s{i}", 0.0, round=1) for i in range(4)),  # 0.0
        *(_row("d", f"s{i}", 1.0 if i < 2 else 0.0, round=1) for i in range(4)),  # 0.5
        _row("c", "late", 1.0, round=2),  # a later round's row does not count in round 1
    ]
    rec = decide(1, ["a", "b", "c", "d"], rows, keep=2, units=4, episodes=16)
    assert [s.variant for s in rec.standings] == ["b", "a", "d", "c"]
    assert rec.kept == ["b", "a"] and rec.leader == "b" and rec.cutoff == 0.75
    d, c = rec.stopped
    assert (d.rank, d.n, d.mean, d.kept, d.tied) == (3, 4, 0.5, False, False)
    assert d.ci_low is not None and d.ci_high is not None and d.ci_low <= 0.5 <= d.ci_high
    assert "round 1: mean 0.500" in d.reason and "the cutoff (rank 2) was 0.750" in d.reason
    assert "rank 3 of 4" in d.reason and "b 1.000" in d.reason
    assert c.mean == 0.0 and c.separated and "wholly below the leader's" in c.reason  # [0, 0] < [1, 1]
    assert not d.separated and "stopped on the point estimate" in d.reason


def test_ties_go_to_fewer_unscored_episodes_then_to_spec_order() -> None:
    rows = [
        *(_row(v, f"s{i}", 0.5, round=1) for v in ("x", "y", "z") for i in range(2)),
        _row("z", "s9", None, "failed", round=1),
    ]
    rec = decide(1, ["z", "y", "x"], rows, keep=1)
    assert [s.variant for s in rec.standings] == ["y", "x", "z"]  # z failed once; y is listed first
    x, z = rec.stopped
    assert x.tied and x.tie_break == "spec order" and "listed later in the spec" in x.reason
    assert z.tied and z.tie_break == "more unscored" and z.failures == 1
    # same means summed in another order still tie (no 0.1 + 0.2 != 0.3 surprises)
    rows = [_row("p", "a", 0.1, round=1), _row("p", "b", 0.2, round=1), _row("q", "a", 0.15, round=1)]
    rows += [_row("q", "b", 0.15, round=1)]
    assert decide(1, ["p", "q"], rows, keep=1).stopped[0].tied


def test_failed_episodes_are_left_out_unless_given_a_score() -> None:
    rows = [
        _row("flaky", "s1", 1.0, round=1),
        _row("flaky", "s2", None, "failed", round=1),
        _row("flaky", "s3", None, "failed", round=1),
        *(_row("steady", f"s{i}", 0.6, round=1) for i in (1, 2, 3)),
        *(_row("broken", f"s{i}", None, "failed", round=1) for i in (1, 2, 3)),
    ]
    rec = decide(1, ["flaky", "steady", "broken"], rows, keep=2)
    assert rec.kept == ["flaky", "steady"]  # as in every summary: 1.0 over its one scored episode
    broken = rec.stopped[0]
    assert broken.mean is None and broken.rank == 3 and "no scored episode (3 failed)" in broken.reason
    (s,) = [s for s in summarize(rows) if s.variant == "flaky"]
    assert s.mean == rec.standings[0].mean == 1.0  # the decision's mean is the summary's
    rec = decide(1, ["flaky", "steady", "broken"], rows, keep=2, failed_score=0.0)
    assert rec.kept == ["steady", "flaky"] and rec.standings[1].mean == pytest.approx(1 / 3)
    assert rec.standings[2].mean == 0.0 and rec.standings[2].n == 3


def test_outcomes_and_annotated_summaries() -> None:
    rows = [_row(v, f"s{i}", float(v == "a"), round=1) for v in "abcd" for i in range(2)]
    r1 = decide(1, list("abcd"), rows, keep=2)
    rows += [_row(v, f"t{i}", float(v == "a"), round=2) for v in r1.kept for i in range(2)]
    r2 = decide(2, r1.kept, rows, keep=1)
    record = AdaptiveRecord(keep=0.5, finalists=1, rounds=2, grid_episodes=16)
    half = record.model_copy(update={"decided": [r1]})
    assert outcomes(half) == {"c": "stopped after round 1", "d": "stopped after round 1"} | {
        "a": "in round 2",
        "b": "in round 2",
    }
    assert half.winner is None
    done = record.model_copy(update={"decided": [r1, r2], "survivors": r2.kept})
    assert done.winner == "a" and outcomes(done)["b"] == "stopped after round 2"
    summaries = {s.variant: s for s in annotate(summarize(rows), done)}
    assert summaries["a"].outcome == "winner" and summaries["a"].rounds == [1, 2]
    assert summaries["c"].outcome == "stopped after round 1" and summaries["c"].rounds == [1]


# --- the plan of a spec ------------------------------------------------------------------------------


def test_the_example_spec_plans_112_of_192_episodes(tmp_path: Path) -> None:
    resolved = load_spec(HALVING)
    episodes = expand(resolved)
    h = Halving(resolved, episodes)
    assert (h.rounds, h.grid, h.total) == (3, 192, 112) and h.total / h.grid <= 0.6
    assert [p["episodes"] for p in h.plan] == [64, 32, 16] and h.units == [8, 8, 8]
    assert {e.round for e in h.episodes} == {1, 2, 3} and [e.id for e in h.episodes] == [
        e.id for e in episodes
    ]
    by_unit = {(e.scenario, e.round) for e in h.episodes}
    assert len(by_unit) == 24  # every variant runs a scenario in the same round
    assert len(list(h.episodes_of(2, ["v1", "v6"]))) == 16
    # two teams: each runs every unit of its round (the episodes double, the rounds do not change)
    two = {**SPEC, "teams": [{"id": "a", "root": "planner"}, {"id": "b", "root": "writer"}]}
    two |= {
        "variants": [{"name": f"w{i}", "overrides": {"writer": {"temperature": i / 10}}} for i in range(4)]
    }
    two |= {"adaptive": {"keep": 0.5}, "repeats": 1}
    r = load_spec(write_spec(tmp_path, two))
    h2 = Halving(r, expand(r))
    assert h2.rounds == 2 and h2.plan == [
        {"round": 1, "units": 2, "variants": 4, "episodes": 16},
        {"round": 2, "units": 1, "variants": 2, "episodes": 4},
    ]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"keep": 0}, "adaptive.keep"),
        ({"keep": 1}, "adaptive.keep"),
        ({"keep": 1.5}, "less than 1"),
        ({"rounds": 0}, "rounds must be at least 1"),
        ({"rounds": "many"}, "adaptive.rounds"),
        ({"rounds": 25}, "only 24 scenario x repeat pairs"),
        ({"method": "bandit"}, "'halving'"),
        ({"kepe": 0.5}, "'adaptive.kepe'"),
        ({"finalists": 8}, "finalists 8 leaves nothing to stop among 8 variants"),
    ],
)
def test_bad_adaptive_settings_are_named(tmp_path: Path, change: dict, expected: str) -> None:
    spec = halving_spec()
    msg = spec_error(tmp_path, {**spec, "adaptive": {**spec["adaptive"], **change}})
    assert expected in msg and "spec.yaml" in msg


def test_bad_adaptive_specs_point_at_their_line(tmp_path: Path) -> None:
    base = {**SPEC, "repeats": 1}
    msg = spec_error(tmp_path, {**base, "variants": [{"name": "only"}], "adaptive": {}})
    assert "ranks variants against each other, and this spec has 1" in msg and ": line " in msg
    msg = spec_error(tmp_path, {**base, "evaluators": [], "adaptive": {"keep": 0.5}})
    assert "needs a primary score" in msg
    # auto rounds need 3 rounds for 8 variants, and 3 scenarios x 1 repeat suffice; 2 do not
    eight = [{"name": f"w{i}", "overrides": {"writer": {"temperature": i / 10}}} for i in range(8)]
    eight_ok = load_spec(write_spec(tmp_path, {**base, "variants": eight, "adaptive": {}}))
    assert Halving(eight_ok, expand(eight_ok)).rounds == 3
    text = yaml.safe_dump(
        {**base, "scenarios": SPEC["scenarios"][:2], "variants": eight, "adaptive": {"rounds": "auto"}},
        sort_keys=False,
    )
    msg = spec_error(tmp_path, text)
    line = next(i for i, x in enumerate(text.splitlines(), 1) if x.strip().startswith("rounds:"))
    assert "rounds: auto needs 3 rounds" in msg and "only 2 scenario x repeat pairs" in msg
    assert f"line {line}, field 'adaptive.rounds'" in msg


def test_cli_validate_and_plan_give_the_budget(cli: Cli) -> None:
    code, out, _ = cli("rollout", "validate", str(HALVING))
    assert code == 0 and "at most 112 episodes in 3 rounds" in out and "58.3% of the full grid's 192" in out
    code, out, _ = cli("rollout", "plan", str(HALVING))
    assert code == 0 and "at most 112 episodes, 58.3% of the full grid" in out
    assert "keep 0.5 per round, 3 rounds" in out


# --- what a gain costs (compare) ---------------------------------------------------------------------


def test_compare_gives_score_per_extra_token_and_dollar() -> None:
    def rows(variant: str, score: float, tokens: int, cost: float) -> list[Row]:
        return [
            _row(variant, f"s{i}", score, tokens=tokens, cost_usd=cost).model_copy(
                update={"episode": f"{variant}{i}"}
            )
            for i in range(4)
        ]

    all_rows = [
        *rows("base", 0.5, 1000, 0.01),
        *rows("guided", 0.8, 4000, 0.04),  # +0.3 for +3000 tokens, +$0.03
        *rows("cheap", 0.4, 500, 0.01),  # fewer tokens, same cost: no ratio
        *rows("same", 0.5, 1000, 0.01),
    ]
    by = {c.variant: c for c in compare(all_rows, "base")}
    g = by["guided"]
    assert g.extra_tokens == 3000 and g.extra_cost_usd == pytest.approx(0.03)
    assert g.score_per_1k_tokens == pytest.approx(0.1) and g.score_per_usd == pytest.approx(10.0)
    c = by["cheap"]
    assert c.extra_tokens == -500 and c.score_per_1k_tokens is None and c.score_per_usd is None
    assert by["same"].score_per_1k_tokens is None and by["same"].difference == 0
    assert per_extra(None, 10) is None and per_extra(-0.2, 2000, 1000) == pytest.approx(-0.1)
    # failed episodes' tokens count (they were paid for); the score pairs skip them
    all_rows.append(_row("guided", "s0", None, "failed", tokens=8000).model_copy(update={"episode": "gx"}))
    assert next(c for c in compare(all_rows, "base") if c.variant == "guided").extra_tokens == 3500


def test_cli_compare_shows_the_ratios_and_dashes(tmp_path: Path) -> None:
    from rich.console import Console

    from p2e.cli.rollout import comparison_table

    rows = [
        *(_row("base", f"s{i}", 0.5, tokens=100).model_copy(update={"episode": f"b{i}"}) for i in range(3)),
        *(_row("more", f"s{i}", 0.9, tokens=300).model_copy(update={"episode": f"m{i}"}) for i in range(3)),
        *(_row("less", f"s{i}", 0.9, tokens=50).model_copy(update={"episode": f"l{i}"}) for i in range(3)),
    ]
    console = Console(width=200, record=True)
    console.print(comparison_table(compare(rows, "base"), "base"))
    text = console.export_text()
    cells = {
        line.split("│")[1].strip(): [c.strip() for c in line.split("│")[6:-1]]
        for line in text.splitlines()
        if line.startswith("│")
    }
    # extra tokens/ep, score per 1k extra tokens, extra $/ep, score per extra $
    assert cells["more"] == ["+200", "+2", "+0.0000", "—"]  # +0.4 per 200 extra tokens = +2 per 1k
    assert cells["less"] == ["-50", "—", "+0.0000", "—"]  # no extra tokens nor dollars: nothing to divide


# --- the driver over the store, with a scripted coordinator (no Ray) -------------------------------


def _score(e: Episode) -> float:
    """Each variant right on a fixed share of the scenarios (v6 best), like the example spec."""
    share = {"v1": 45, "v2": 55, "v3": 40, "v4": 60, "v5": 50, "v6": 85, "v7": 65, "v8": 35}[e.variant]
    h = int(hashlib.sha256(f"{e.variant}/{e.scenario}".encode()).hexdigest(), 16) % 100
    return float(h < share)


class Scripted:
    """Stands in for the coordinator: writes each episode's row at once; stops after `stop_after`."""

    def __init__(
        self, store: RolloutStore, rid: str, score: Callable[[Episode], float], stop_after: int = -1
    ):
        self.store, self.rid, self.score, self.stop_after = store, rid, score, stop_after
        self.ran: list[Episode] = []

    async def run(self, episodes: list[Episode]) -> None:
        for e in episodes:
            if len(self.ran) == self.stop_after:
                raise KeyboardInterrupt
            self.ran.append(e)
            self.store.put_row(_episode_row(e, self.rid, self.score(e), round=e.round))


def _episode_row(e: Episode, rollout: str, primary: float | None, round: int | None = None) -> Row:
    """The row an episode would leave: failed when it has no score."""
    return Row(
        rollout=rollout,
        episode=e.id,
        team=e.team,
        variant=e.variant,
        scenario=e.scenario,
        repeat=e.repeat,
        seed=e.seed,
        status="done" if primary is not None else "failed",
        primary=primary,
        round=round,
    )


def test_driver_decides_each_round_and_resumes_to_the_same_decisions(log: EventLog) -> None:
    resolved = load_spec(HALVING)
    episodes = expand(resolved)
    h = Halving(resolved, episodes)
    store = RolloutStore(log)
    # uninterrupted
    info, todo = plan(resolved, store, None, episodes, h)
    assert info.episodes == 112 and len(todo) == 64  # only round 1's variants are known yet
    whole = Scripted(store, info.id, _score)
    seen = []
    asyncio.run(_rounds(h, store, info.id, lambda rec, record: seen.append(rec.round))(whole))  # type: ignore[arg-type]
    full = store.get(info.id).adaptive
    assert full is not None and seen == [1, 2, 3] and len(whole.ran) == 112
    assert full.winner == "v6" and full.survivors == ["v6"]
    assert [len(r.kept) for r in full.decided] == [4, 2, 1]
    rows = store.rows(info.id)
    assert {r.round for r in rows if r.variant == "v6"} == {1, 2, 3}
    # the same decisions replayed offline from a full grid's rows (no rounds on them)
    grid = [_episode_row(e, "g", _score(e)) for e in episodes]
    assert [r.model_dump() for r in h.replay(grid)] == [r.model_dump() for r in full.decided]
    # interrupted in round 2, then resumed: only the missing episodes run, the same decisions
    info2, _ = plan(resolved, store, None, episodes, h)
    first = Scripted(store, info2.id, _score, stop_after=64 + 10)
    with pytest.raises(KeyboardInterrupt):
        asyncio.run(_rounds(h, store, info2.id, None)(first))  # type: ignore[arg-type]
    part = store.get(info2.id).adaptive
    assert part is not None and len(part.decided) == 1 and part.winner is None
    _, todo = plan(resolved, store, info2.id, episodes, h)
    assert len(todo) == 32 - 10  # round 2's missing episodes: its variants are known
    second = Scripted(store, info2.id, _score)
    asyncio.run(_rounds(h, store, info2.id, None)(second))  # type: ignore[arg-type]
    resumed = store.get(info2.id).adaptive
    assert resumed is not None and len(second.ran) == 112 - 74
    assert not {e.id for e in first.ran} & {e.id for e in second.ran}
    assert [r.model_dump() for r in resumed.decided] == [r.model_dump() for r in full.decided]
    # every row is in but the last decision is not (stopped right before it): decided, nothing runs
    info3, _ = plan(resolved, store, None, episodes, h)
    for r in rows:
        store.put_row(r.model_copy(update={"rollout": info3.id}))
    asyncio.run(_rounds(h, store, info3.id, None)(None))
    again = store.get(info3.id).adaptive
    assert again is not None and [r.model_dump() for r in again.decided] == [
        r.model_dump() for r in full.decided
    ]


def test_a_round_without_any_score_stops_the_rollout(log: EventLog) -> None:
    from p2e.errors import P2EError

    resolved = load_spec(HALVING)
    episodes = expand(resolved)
    h = Halving(resolved, episodes)
    store = RolloutStore(log)
    info, _ = plan(resolved, store, None, episodes, h)

    with pytest.raises(P2EError, match=r"round 1 has no scored episode \(64 failed\)"):
        asyncio.run(_rounds(h, store, info.id, None)(Scripted(store, info.id, lambda e: None)))  # type: ignore[arg-type]
    assert store.get(info.id).adaptive.decided == []  # type: ignore[union-attr]


# --- a whole adaptive rollout on Ray ----------------------------------------------------------------


class Stop(Exception):
    pass


def test_adaptive_rollout_keeps_the_best_and_resumes_to_the_same_decisions(
    ray_session: None, store_env: dict[str, str], log: EventLog, cli: Cli
) -> None:
    url, ns = store_env["P2E_REDIS_URL"], store_env["P2E_NAMESPACE"]
    rounds: list[int] = []
    result = run_rollout(
        HALVING, store_url=url, namespace=ns, on_round=lambda rec, _: rounds.append(rec.round)
    )
    assert rounds == [1, 2, 3] and result.info.status == "done"
    assert len(result.rows) == 112 < 192 and all(r.status == "done" for r in result.rows)
    assert result.winner == BEST and result.info.adaptive is not None
    assert result.info.adaptive.survivors == [BEST]
    stopped = [s for rec in result.rounds for s in rec.stopped]
    assert sorted(s.variant for s in stopped) == sorted({f"v{i}" for i in range(1, 9)} - {BEST})
    assert all(s.reason and s.mean is not None and s.ci_low is not None for s in stopped)
    assert [len(rec.variants) for rec in result.rounds] == [8, 4, 2]
    for rec in result.rounds:  # each round's rows: its variants on its own scenarios
        rows = [r for r in result.rows if r.round == rec.round]
        assert {r.variant for r in rows} == set(rec.variants) and len(rows) == rec.episodes
    summary = {s.variant: s for s in result.summary()}
    assert summary[BEST].outcome == "winner" and summary[BEST].rounds == [1, 2, 3]
    assert summary[BEST].mean == pytest.approx(21 / 24)
    assert all(s.outcome.startswith("stopped after round") for v, s in summary.items() if v != BEST)  # type: ignore[union-attr]
    # `rollout show`: the rounds, who stopped when and why, the winner
    code, out, _ = cli("rollout", "show", result.id, "--rows")
    assert code == 0 and "112/112 episodes" in out and "stopped variants" in out
    assert f"winner {BEST}: mean 0.875" in out and "58.3% of the full grid's 192" in out
    # interrupted in round 2 (an error from a row callback stops it like Ctrl-C), then resumed
    seen: list[Row] = []

    def stop_in_round_two(row: Row) -> None:
        seen.append(row)
        if len(seen) == 64 + 12:
            raise Stop

    with pytest.raises(Stop):
        run_rollout(HALVING, store_url=url, namespace=ns, on_row=stop_in_round_two)
    store = RolloutStore(log)
    rid = store.ids()[-1]
    info = store.get(rid)
    assert info.status == "interrupted" and info.adaptive is not None and len(info.adaptive.decided) == 1
    before = {r.episode: r.conversation for r in store.rows(rid)}
    assert 64 + 12 <= len(before) < 112
    starts: list[tuple[int, int]] = []
    again = run_rollout(
        HALVING,
        store_url=url,
        namespace=ns,
        resume=rid,
        on_start=lambda i, todo, total: starts.append((todo, total)),
    )
    assert starts == [(112 - len(before), 112)]  # the bar counts what is left of the plan
    assert len(again.rows) == 112 and again.winner == BEST
    assert {r.episode: r.conversation for r in again.rows if r.episode in before} == before  # not rerun
    assert [r.model_dump() for r in again.rounds] == [r.model_dump() for r in result.rounds]
