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


class Comparison(BaseModel):
    """A variant against the baseline over the scenarios both have scores for (each scenario's
    score averaged over its repeats first, so the pairs are scenario by scenario)."""

    variant: str
    baseline: str
    pairs: int
    difference: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None


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
            )
        )
    return out


def _per_scenario(rows: Iterable[Row], variant: str) -> dict[tuple[str, str], float]:
    acc: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in rows:
        if r.variant == variant and r.status == "done" and r.primary is not None:
            acc[(r.team, r.scenario)].append(r.primary)
    return {k: sum(v) / len(v) for k, v in acc.items()}


def compare(rows: Sequence[Row], baseline: str) -> list[Comparison]:
    """Every other variant against `baseline`: mean paired difference (variant - baseline)."""
    base = _per_scenario(rows, baseline)
    out = []
    for variant in sorted({r.variant for r in rows} - {baseline}):
        mine = _per_scenario(rows, variant)
        diffs = [mine[k] - base[k] for k in sorted(mine.keys() & base.keys())]
        ci = bootstrap_ci(diffs)
        out.append(
            Comparison(
                variant=variant,
                baseline=baseline,
                pairs=len(diffs),
                difference=sum(diffs) / len(diffs) if diffs else None,
                ci_low=ci[0] if ci else None,
                ci_high=ci[1] if ci else None,
            )
        )
    return out
