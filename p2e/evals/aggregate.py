"""Aggregates of scores, derived when read and never stored: a stored aggregate could disagree
with the scores it came from (after a re-run or a late score), a derived one cannot.

A branch's score is its episode score when it has one (an episode evaluator saw the whole
outcome), else the mean of its evaluated steps. Only done scores count; errors and pending
ones are counted beside the value, so a mean over 3 of 10 steps says so.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from p2e.evals.score import Score

Source = Literal["episode", "steps", "none"]


@dataclass(frozen=True)
class Counts:
    pending: int = 0
    running: int = 0
    done: int = 0
    error: int = 0

    @property
    def total(self) -> int:
        return self.pending + self.running + self.done + self.error


@dataclass(frozen=True)
class BranchScore:
    """A branch's derived score: `value` (None when nothing is scored yet), where it came from,
    and how many scores are in each status."""

    value: float | None
    source: Source
    counts: Counts


def counts(scores: Iterable[Score]) -> Counts:
    """How many scores are pending, running, done and in error."""
    tally = {"pending": 0, "running": 0, "done": 0, "error": 0}
    for s in scores:
        tally[s.status] += 1
    return Counts(**tally)


def _select(scores: Iterable[Score], evaluator: str | None) -> list[Score]:
    return [s for s in scores if evaluator is None or s.evaluator == evaluator]


def _value(score: Score, metric: str | None) -> float | None:
    if metric is None:
        return score.value
    return score.metrics.get(metric)


def branch_score(
    scores: Iterable[Score], *, evaluator: str | None = None, metric: str | None = None
) -> BranchScore:
    """One branch's score from its scores (episode score when present, else mean of steps).

    `evaluator` keeps one evaluator's scores (else all are pooled); `metric` reads that sub-metric
    instead of the value (scores without it are left out).
    """
    chosen = _select(scores, evaluator)
    done = [s for s in chosen if s.status == "done"]
    episode = [v for s in done if s.target.is_episode and (v := _value(s, metric)) is not None]
    if episode:
        return BranchScore(statistics.fmean(episode), "episode", counts(chosen))
    steps = [v for s in done if not s.target.is_episode and (v := _value(s, metric)) is not None]
    if steps:
        return BranchScore(statistics.fmean(steps), "steps", counts(chosen))
    return BranchScore(None, "none", counts(chosen))


def by_branch(scores: Iterable[Score]) -> dict[str, list[Score]]:
    """Scores of one conversation grouped by their target's branch."""
    out: dict[str, list[Score]] = {}
    for s in scores:
        out.setdefault(s.target.branch, []).append(s)
    return out


def ranked_branches(
    scores_per_branch: Mapping[str, Iterable[Score]],
    *,
    evaluator: str | None = None,
    metric: str | None = None,
    higher_is_better: bool = True,
) -> list[tuple[str, BranchScore]]:
    """Branches best first; branches with no value come last; ties keep branch-name order."""
    rows = [
        (b, branch_score(s, evaluator=evaluator, metric=metric)) for b, s in sorted(scores_per_branch.items())
    ]
    sign = -1.0 if higher_is_better else 1.0
    return sorted(rows, key=lambda r: (r[1].value is None, sign * (r[1].value or 0.0)))


def best_branch(
    scores_per_branch: Mapping[str, Iterable[Score]],
    *,
    evaluator: str | None = None,
    metric: str | None = None,
    higher_is_better: bool = True,
) -> tuple[str, BranchScore] | None:
    """The best-scored branch of a conversation, or None when no branch has a score yet."""
    ranked = ranked_branches(
        scores_per_branch, evaluator=evaluator, metric=metric, higher_is_better=higher_is_better
    )
    if not ranked or ranked[0][1].value is None:
        return None
    return ranked[0]
