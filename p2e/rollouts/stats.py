"""Variant summaries and paired comparisons, with percentile-bootstrap confidence intervals.

Pure Python on purpose (no numpy in the core): rollouts have thousands of rows, not millions,
and 2,000 resamples of a few hundred values take milliseconds. Failed episodes and episodes
without a primary score are counted, never averaged in as zeros.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable, Sequence

from pydantic import BaseModel

from p2e.rollouts.store import Row

RESAMPLES = 2000


def bootstrap_ci(
    values: Sequence[float], level: float = 0.95, resamples: int = RESAMPLES, seed: int = 0
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


class VariantSummary(BaseModel):
    variant: str
    n: int
    """Episodes with a primary score."""
    failures: int
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


def summarize(rows: Iterable[Row]) -> list[VariantSummary]:
    """One summary per variant; per `team/variant` when the rollout has several teams."""
    rows = list(rows)
    several = len({r.team for r in rows}) > 1
    by_variant: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        by_variant[f"{r.team}/{r.variant}" if several else r.variant].append(r)
    out = []
    for variant in sorted(by_variant):
        rs = by_variant[variant]
        scores = [r.primary for r in rs if r.status == "done" and r.primary is not None]
        ci = bootstrap_ci(scores)
        walls = [r.wall_s for r in rs]
        out.append(
            VariantSummary(
                variant=variant,
                n=len(scores),
                failures=sum(r.status == "failed" for r in rs),
                mean=sum(scores) / len(scores) if scores else None,
                ci_low=ci[0] if ci else None,
                ci_high=ci[1] if ci else None,
                tokens=sum(r.tokens for r in rs),
                cost_usd=sum(r.cost_usd for r in rs),
                mean_wall_s=sum(walls) / len(walls) if walls else None,
                rounds=sorted({r.round for r in rs if r.round is not None}),
            )
        )
    return out


def _per_scenario(rows: Iterable[Row], variant: str) -> dict[tuple[str, str], float]:
    acc: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in rows:
        if r.variant == variant and r.status == "done" and r.primary is not None:
            acc[(r.team, r.scenario)].append(r.primary)
    return {k: sum(v) / len(v) for k, v in acc.items()}


def _spend(rows: Iterable[Row], variant: str, keys: set[tuple[str, str]]) -> tuple[float, float]:
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


def compare(rows: Sequence[Row], baseline: str) -> list[Comparison]:
    """Every other variant against `baseline`: mean paired difference (variant - baseline), and
    what it costs in tokens and dollars per episode."""
    base = _per_scenario(rows, baseline)
    out = []
    for variant in sorted({r.variant for r in rows} - {baseline}):
        mine = _per_scenario(rows, variant)
        keys = mine.keys() & base.keys()
        diffs = [mine[k] - base[k] for k in sorted(keys)]
        ci = bootstrap_ci(diffs)
        difference = sum(diffs) / len(diffs) if diffs else None
        extra_tokens = extra_cost = None
        if keys:
            tokens, cost = _spend(rows, variant, keys)
            base_tokens, base_cost = _spend(rows, baseline, keys)
            extra_tokens, extra_cost = tokens - base_tokens, cost - base_cost
        out.append(
            Comparison(
                variant=variant,
                baseline=baseline,
                pairs=len(diffs),
                difference=difference,
                ci_low=ci[0] if ci else None,
                ci_high=ci[1] if ci else None,
                extra_tokens=extra_tokens,
                extra_cost_usd=extra_cost,
                score_per_1k_tokens=per_extra(difference, extra_tokens, 1000.0),
                score_per_usd=per_extra(difference, extra_cost),
            )
        )
    return out
