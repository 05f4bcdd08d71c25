"""The one aggregation of rollout rows: every number a user reads about variants (`p2e rollout
show/compare`, `RolloutResult.summary()`, Rerun's leaderboard and matrix, the bounty's payout,
the rounds of an adaptive rollout) comes from here, so no two views can disagree.

The rules, in one place:
- what an episode counts as (`counted`): its primary score (or a named evaluator's), and only
  when the episode is `done`; a failed episode is counted as failed, never averaged in (as 0 or
  anything else), and an episode whose evaluation failed is left out of the mean;
- a mean's interval (`mean_ci`): the 95% percentile bootstrap, seeded, so the same rows give the
  same interval in every view and every run;
- every number depends on the rows, never on their order (values are sorted before the
  bootstrap, float sums are exact: `math.fsum`), so rows streamed from the store in its own
  order, rows as they finish and a sorted list all give the same summary.

Rows are read once, in one pass (`Tally`): a summary of a million rows holds a few counters per
variant and 8 bytes per scored episode (the bootstrap needs the values), never the rows. Pure
Python on purpose (no numpy in the core). Rows are anything with the fields of `Scored` (the
store's `Row`, the observer's `RolloutRow`), so that the observer can use it without the store's
row model.
"""

from __future__ import annotations

import math
import random
from array import array
from collections import defaultdict
from collections.abc import Iterable, Mapping
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
    values: Iterable[float], level: float = LEVEL, resamples: int = RESAMPLES, seed: int = 0
) -> tuple[float, float] | None:
    """The percentile-bootstrap interval of the mean, of the values sorted (so that their order
    does not matter); None for fewer than two values."""
    values = sorted(values)
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
    xs = sorted(x + 0.0 for x in values)  # (+ 0.0: -0.0 is 0.0, whatever came first)
    ci = bootstrap_ci(xs)
    return MeanCI(
        n=len(xs),
        mean=math.fsum(xs) / len(xs) if xs else None,
        ci_low=ci[0] if ci else None,
        ci_high=ci[1] if ci else None,
    )


class ExactSum:
    """A running float sum that is exact (Shewchuk's partials, as `math.fsum` keeps them), so
    that it does not depend on the order of the values: `value()` is `math.fsum` of them all."""

    __slots__ = ("partials", "special")

    def __init__(self) -> None:
        self.partials: list[float] = []
        self.special = 0.0
        """The sum of the non-finite values (inf, nan), which partials cannot hold."""

    def add(self, x: float) -> None:
        if not math.isfinite(x):
            self.special += x
            return
        kept = 0
        for y in self.partials:
            if abs(x) < abs(y):
                x, y = y, x
            hi = x + y
            lo = y - (hi - x)
            if lo:
                self.partials[kept] = lo
                kept += 1
            x = hi
        self.partials[kept:] = [x]

    def merge(self, other: ExactSum) -> None:
        for x in other.partials:
            self.add(x)
        self.special += other.special

    def value(self) -> float:
        return self.special + math.fsum(self.partials) if self.special else math.fsum(self.partials)


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


class _Group:
    """What a summary keeps of one (team, variant)'s rows: counts, exact sums and the counted
    values (8 bytes each: the bootstrap resamples them)."""

    __slots__ = ("cost", "episodes", "failures", "rounds", "tokens", "values", "wall")

    def __init__(self) -> None:
        self.episodes = self.failures = self.tokens = 0
        self.cost, self.wall = ExactSum(), ExactSum()
        self.values = array("d")
        self.rounds: set[int] = set()

    def merge(self, other: _Group) -> None:
        self.episodes += other.episodes
        self.failures += other.failures
        self.tokens += other.tokens
        self.cost.merge(other.cost)
        self.wall.merge(other.wall)
        self.values.extend(other.values)
        self.rounds |= other.rounds

    def summary(self, variant: str) -> VariantSummary:
        m = mean_ci(self.values)
        return VariantSummary(
            variant=variant,
            n=m.n,
            failures=self.failures,
            episodes=self.episodes,
            mean=m.mean,
            ci_low=m.ci_low,
            ci_high=m.ci_high,
            tokens=self.tokens,
            cost_usd=self.cost.value(),
            mean_wall_s=self.wall.value() / self.episodes if self.episodes else None,
            rounds=sorted(self.rounds),
        )


class Tally:
    """The summary of rows fed one at a time (`add`), in any order: what `summarize` computes,
    without holding the rows (a rollout's rows streamed from the store, or as they finish)."""

    def __init__(self, metric: str | None = None):
        self.metric = metric
        self.groups: dict[tuple[str, str], _Group] = {}
        """(team, variant) -> its rows' tally."""

    def add(self, row: Scored) -> None:
        g = self.groups.get((row.team, row.variant))
        if g is None:
            g = self.groups[(row.team, row.variant)] = _Group()
        g.episodes += 1
        g.failures += row.status == "failed"
        g.tokens += row.tokens
        g.cost.add(row.cost_usd)
        g.wall.add(row.wall_s)
        if (v := counted(row, self.metric)) is not None:
            g.values.append(v)
        if row.round is not None:
            g.rounds.add(row.round)

    def summaries(self, by_team: bool | None = None) -> list[VariantSummary]:
        """One summary per variant (by name); per `team/variant` when the rows have several
        teams (`by_team` None), or as `by_team` says."""
        several = len({team for team, _ in self.groups}) > 1 if by_team is None else by_team
        merged: dict[str, _Group] = {}
        for (team, variant), g in self.groups.items():
            name = f"{team}/{variant}" if several else variant
            if name not in merged:
                merged[name] = _Group()
            merged[name].merge(g)
        return [merged[name].summary(name) for name in sorted(merged)]


def summarize(
    rows: Iterable[Scored], metric: str | None = None, *, by_team: bool | None = None
) -> list[VariantSummary]:
    """One summary per variant (by name); per `team/variant` when the rollout has several teams
    (`by_team` None), or as `by_team` says. `metric`: an evaluator's score instead of the
    primary one. One pass over `rows` (a stream is fine: see `Tally`)."""
    tally = Tally(metric)
    for r in rows:
        tally.add(r)
    return tally.summaries(by_team)


def ranked(summaries: Iterable[VariantSummary], higher_is_better: bool = True) -> list[VariantSummary]:
    """Best first; variants without a score last; ties by name."""
    sign = -1.0 if higher_is_better else 1.0
    return sorted(summaries, key=lambda s: (s.mean is None, sign * (s.mean or 0.0), s.variant))


def variant_means(rows: Iterable[Scored], metric: str | None = None) -> dict[str, float | None]:
    """Variant -> mean score (teams pooled): what a payout ranks."""
    return {s.variant: s.mean for s in summarize(rows, metric, by_team=False)}


class Cells:
    """`matrix` fed one row at a time (`add`): each (variant, scenario)'s counted scores only."""

    def __init__(self, metric: str | None = None):
        self.metric = metric
        self.values: dict[tuple[str, str], list[float]] = {}

    def add(self, row: Scored) -> None:
        cell = self.values.setdefault((row.variant, row.scenario), [])
        if (v := counted(row, self.metric)) is not None:
            cell.append(v)

    def means(self) -> dict[tuple[str, str], MeanCI]:
        return {k: mean_ci(v) for k, v in self.values.items()}


def matrix(rows: Iterable[Scored], metric: str | None = None) -> dict[tuple[str, str], MeanCI]:
    """(variant, scenario) -> the mean score of its episodes, counted as in `summarize`."""
    cells = Cells(metric)
    for r in rows:
        cells.add(r)
    return cells.means()


class _Pair:
    """One variant's episodes of one (team, scenario): the sum of its counted scores, and what
    every episode of it spent."""

    __slots__ = ("cost", "episodes", "score", "scored", "tokens")

    def __init__(self) -> None:
        self.episodes = self.scored = self.tokens = 0
        self.score, self.cost = ExactSum(), ExactSum()

    def mean(self) -> float:
        return self.score.value() / self.scored


def _pairs(rows: Iterable[Scored]) -> dict[str, dict[tuple[str, str], _Pair]]:
    """Variant -> (team, scenario) -> its pair, in one pass over the rows."""
    out: dict[str, dict[tuple[str, str], _Pair]] = defaultdict(dict)
    for r in rows:
        cells = out[r.variant]
        p = cells.get((r.team, r.scenario))
        if p is None:
            p = cells[(r.team, r.scenario)] = _Pair()
        p.episodes += 1
        p.tokens += r.tokens
        p.cost.add(r.cost_usd)
        if (v := counted(r)) is not None:
            p.scored += 1
            p.score.add(v)
    return out


def _spend(pairs: dict[tuple[str, str], _Pair], keys: list[tuple[str, str]]) -> tuple[float, float]:
    """Mean tokens and cost per episode over the (team, scenario) pairs `keys`, each pair's
    episodes averaged first (like the scores), every status counted."""
    tokens = math.fsum(pairs[k].tokens / pairs[k].episodes for k in keys)
    cost = math.fsum(pairs[k].cost.value() / pairs[k].episodes for k in keys)
    return tokens / len(keys), cost / len(keys)


def per_extra(gain: float | None, extra: float | None, unit: float = 1.0) -> float | None:
    """Score gained per `unit` of extra spend; None when nothing extra was spent (zero or less:
    the variant is no dearer, a ratio would mean nothing) or there is no gain to divide."""
    if gain is None or extra is None or extra <= 1e-12:
        return None
    return gain / (extra / unit)


def compare(rows: Iterable[Scored], baseline: str) -> list[Comparison]:
    """Every other variant against `baseline`: mean paired difference (variant - baseline), and
    what it costs in tokens and dollars per episode. One pass over `rows`."""
    pairs = _pairs(rows)
    base = {k: p for k, p in pairs.get(baseline, {}).items() if p.scored}
    out = []
    for variant in sorted(pairs.keys() - {baseline}):
        mine = {k: p for k, p in pairs[variant].items() if p.scored}
        keys = sorted(mine.keys() & base.keys())
        diff = mean_ci(mine[k].mean() - base[k].mean() for k in keys)
        difference = diff.mean
        extra_tokens = extra_cost = None
        if keys:
            tokens, cost = _spend(pairs[variant], keys)
            base_tokens, base_cost = _spend(pairs[baseline], keys)
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
