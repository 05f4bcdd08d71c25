"""The one aggregation of rollout rows: every number a user reads about variants (`p2e rollout
show/compare`, `RolloutResult.summary()`, Rerun's leaderboard and matrix, the bounty's payout,
the rounds of an adaptive rollout) comes from here, so no two views can disagree.

The rules, in one place:
- what an episode counts as (`counted`): its primary score (or a named evaluator's), and only
  when the episode is `done`; a failed episode is counted as failed, never averaged in (as 0 or
  anything else), and an episode whose evaluation failed is left out of the mean;
- a mean's interval (`mean_ci`): the 95% percentile bootstrap, seeded, so the same rows give the
  same interval in every view and every run.

Pure Python on purpose (no numpy in the core): rollouts have thousands of rows, not millions,
and 2,000 resamples of a few hundred values take milliseconds. Rows are anything with the
fields of `Scored` (the store's `Row`, the observer's `RolloutRow`), so that the observer can use
it without the store's row model.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from pydantic import BaseModel

RESAMPLES = 2000
LEVEL = 0.95


class Scored(Protocol):
    """What aggregation reads of a row."""

    @property
    def team(self) -> str: ...
    @property
    def variant(self) -> str: ...
    @property
    def scenario(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def primary(self) -> float | None: ...
    @property
    def scores(self) -> Mapping[str, float | None]: ...
    @property
    def tokens(self) -> int: ...
    @property
    def cost_usd(self) -> float: ...
    @property
    def wall_s(self) -> float: ...
    @property
    def round(self) -> int | None: ...


def counted(row: Scored, metric: str | None = None) -> float | None:
    """The value an episode counts with: its primary score (or evaluator `metric`'s), None when
    it failed or has none."""
    if row.status != "done":
        return None
    return row.primary if metric is None else row.scores.get(metric)


def bootstrap_ci(
    values: Sequence[float], level: float = LEVEL, resamples: int = RESAMPLES, seed: int = 0
) -> tuple[float, float] | None:
    """The percentile-bootstrap interval of the mean; None for fewer than two values."""
    n = len(values)
    if n < 2:
        return None
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    lo = means[int((1 - level) / 2 * resamples)]
    hi = means[min(resamples - 1, int((1 + level) / 2 * resamples))]
    return lo, hi


class MeanCI(BaseModel):
    """A mean with its 95% bootstrap interval (None below two values)."""

    n: int
    mean: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None


def mean_ci(values: Iterable[float]) -> MeanCI:
    """The mean of `values` and its interval: the only way a mean is taken here."""
    xs = list(values)
    ci = bootstrap_ci(xs)
    return MeanCI(
        n=len(xs),
        mean=sum(xs) / len(xs) if xs else None,
        ci_low=ci[0] if ci else None,
        ci_high=ci[1] if ci else None,
    )


class VariantSummary(BaseModel):
    variant: str
    n: int
    """Episodes with a primary score."""
    failures: int
    episodes: int = 0
    """Every episode of the variant: scored, failed, and done without a score."""
    mean: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    tokens: int = 0
    cost_usd: float = 0.0
    mean_wall_s: float | None = None
    rounds: list[int] = []
    """Adaptive rollouts: the rounds the variant ran in."""
    outcome: str | None = None
    """Adaptive rollouts: `winner`, `finalist`, `stopped after round r` (`adaptive.annotate`)."""


class Comparison(BaseModel):
    """A variant against the baseline over the scenarios both have scores for (each scenario's
    score averaged over its repeats first, so the pairs are scenario by scenario).

    What the difference costs: the extra tokens and dollars per episode, over the same paired
    scenarios (every episode of them counts, failed ones too: they were paid for), and the score
    gained per extra 1,000 tokens and per extra dollar. Those two ratios are None unless the
    variant spends more than the baseline (nothing extra to divide by), or without a
    difference."""

    variant: str
    baseline: str
    pairs: int
    difference: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    extra_tokens: float | None = None
    """Mean tokens per episode, variant minus baseline."""
    extra_cost_usd: float | None = None
    """Mean cost per episode, variant minus baseline."""
    score_per_1k_tokens: float | None = None
    """`difference` / (`extra_tokens` / 1000), when the variant spends more tokens."""
    score_per_usd: float | None = None
    """`difference` / `extra_cost_usd`, when the variant spends more money."""


def group(row: Scored, several_teams: bool) -> str:
    """The name a row is summarised under: its variant, or `team/variant` in a rollout of
    several teams."""
    return f"{row.team}/{row.variant}" if several_teams else row.variant


def summarize(
    rows: Iterable[Scored], metric: str | None = None, *, by_team: bool | None = None
) -> list[VariantSummary]:
    """One summary per variant (by name); per `team/variant` when the rollout has several teams
    (`by_team` None), or as `by_team` says. `metric`: an evaluator's score instead of the
    primary one."""
    rows = list(rows)
    several = len({r.team for r in rows}) > 1 if by_team is None else by_team
    by_variant: dict[str, list[Scored]] = defaultdict(list)
    for r in rows:
        by_variant[group(r, several)].append(r)
    out = []
    for variant in sorted(by_variant):
        rs = by_variant[variant]
        m = mean_ci(v for r in rs if (v := counted(r, metric)) is not None)
        walls = [r.wall_s for r in rs]
        out.append(
            VariantSummary(
                variant=variant,
                n=m.n,
                failures=sum(r.status == "failed" for r in rs),
                episodes=len(rs),
                mean=m.mean,
                ci_low=m.ci_low,
                ci_high=m.ci_high,
                tokens=sum(r.tokens for r in rs),
                cost_usd=sum(r.cost_usd for r in rs),
                mean_wall_s=sum(walls) / len(walls) if walls else None,
                rounds=sorted({r.round for r in rs if r.round is not None}),
            )
        )
    return out


def ranked(summaries: Iterable[VariantSummary], higher_is_better: bool = True) -> list[VariantSummary]:
    """Best first; variants without a score last; ties by name."""
    sign = -1.0 if higher_is_better else 1.0
    return sorted(summaries, key=lambda s: (s.mean is None, sign * (s.mean or 0.0), s.variant))


def variant_means(rows: Iterable[Scored], metric: str | None = None) -> dict[str, float | None]:
    """Variant -> mean score (teams pooled): what a payout ranks."""
    return {s.variant: s.mean for s in summarize(rows, metric, by_team=False)}


def matrix(rows: Iterable[Scored], metric: str | None = None) -> dict[tuple[str, str], MeanCI]:
    """(variant, scenario) -> the mean score of its episodes, counted as in `summarize`."""
    cells: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        cell = cells.setdefault((r.variant, r.scenario), [])
        if (v := counted(r, metric)) is not None:
            cell.append(v)
    return {k: mean_ci(v) for k, v in cells.items()}


def _per_scenario(rows: Iterable[Scored], variant: str) -> dict[tuple[str, str], float]:
    acc: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in rows:
        if r.variant == variant and (v := counted(r)) is not None:
            acc[(r.team, r.scenario)].append(v)
    return {k: sum(v) / len(v) for k, v in acc.items()}


def _spend(rows: Iterable[Scored], variant: str, keys: set[tuple[str, str]]) -> tuple[float, float]:
    """Mean tokens and cost per episode of `variant` over the (team, scenario) pairs `keys`,
    each pair's episodes averaged first (like the scores), every status counted."""
    acc: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    for r in rows:
        if r.variant == variant and (r.team, r.scenario) in keys:
            acc[(r.team, r.scenario)].append((r.tokens, r.cost_usd))
    tokens = [sum(t for t, _ in v) / len(v) for v in acc.values()]
    cost = [sum(c for _, c in v) / len(v) for v in acc.values()]
    return (sum(tokens) / len(tokens), sum(cost) / len(cost)) if acc else (0.0, 0.0)


def per_extra(gain: float | None, extra: float | None, unit: float = 1.0) -> float | None:
    """Score gained per `unit` of extra spend; None when nothing extra was spent (zero or less:
    the variant is no dearer, a ratio would mean nothing) or there is no gain to divide."""
    if gain is None or extra is None or extra <= 1e-12:
        return None
    return gain / (extra / unit)


def compare(rows: Sequence[Scored], baseline: str) -> list[Comparison]:
    """Every other variant against `baseline`: mean paired difference (variant - baseline), and
    what it costs in tokens and dollars per episode."""
    base = _per_scenario(rows, baseline)
    out = []
    for variant in sorted({r.variant for r in rows} - {baseline}):
        mine = _per_scenario(rows, variant)
        keys = mine.keys() & base.keys()
        diff = mean_ci(mine[k] - base[k] for k in sorted(keys))
        difference = diff.mean
        extra_tokens = extra_cost = None
        if keys:
            tokens, cost = _spend(rows, variant, keys)
            base_tokens, base_cost = _spend(rows, baseline, keys)
            extra_tokens, extra_cost = tokens - base_tokens, cost - base_cost
        out.append(
            Comparison(
                variant=variant,
                baseline=baseline,
                pairs=diff.n,
                difference=difference,
                ci_low=diff.ci_low,
                ci_high=diff.ci_high,
                extra_tokens=extra_tokens,
                extra_cost_usd=extra_cost,
                score_per_1k_tokens=per_extra(difference, extra_tokens, 1000.0),
                score_per_usd=per_extra(difference, extra_cost),
            )
        )
    return out
