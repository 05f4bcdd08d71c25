"""What the observer needs from a rollout's episodes: one row each, and summaries over them.

`RolloutRow` is deliberately small and forgiving (extra fields are ignored), so the rollout
module's own row model, or a plain dict of it, can be passed as is: `RolloutRow.of(row)`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class RolloutRow(BaseModel):
    """One episode's outcome, as the observer logs it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    episode: str
    variant: str
    scenario: str
    repeat: int = 0
    status: str = "done"
    primary: float | None = Field(None, description="the score that ranks variants")
    scores: dict[str, float | None] = Field(default_factory=dict)
    steps: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    wall_s: float = 0.0
    conversation: str = ""
    branch: str = "main"
    finished: float | None = Field(None, description="when the episode ended (Unix time), if known")

    @classmethod
    def of(cls, row: RolloutRow | BaseModel | Mapping[str, Any]) -> RolloutRow:
        if isinstance(row, RolloutRow):
            return row
        if isinstance(row, BaseModel):
            return cls.model_validate(row.model_dump())
        return cls.model_validate(row)


class Mean(BaseModel):
    """A mean with its normal-approximation 95% interval (half-width; 0 with one value)."""

    n: int
    mean: float | None
    ci95: float = 0.0

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Mean:
        xs = [v for v in values if v is not None and math.isfinite(v)]
        if not xs:
            return cls(n=0, mean=None)
        sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
        return cls(n=len(xs), mean=statistics.fmean(xs), ci95=1.96 * sd / math.sqrt(len(xs)))


class VariantSummary(BaseModel):
    variant: str
    episodes: int
    failed: int
    primary: Mean
    cost_usd: float
    tokens: float
    wall_s: float


def leaderboard(rows: Iterable[RolloutRow]) -> list[VariantSummary]:
    """Variants ranked by mean primary score (best first; variants without a score last)."""
    by: dict[str, list[RolloutRow]] = {}
    for r in rows:
        by.setdefault(r.variant, []).append(r)
    out = [
        VariantSummary(
            variant=v,
            episodes=len(rs),
            failed=sum(r.status != "done" for r in rs),
            # as `p2e rollout show` counts: failed episodes are failures, never scores
            primary=Mean.of(r.primary for r in rs if r.status == "done"),
            cost_usd=statistics.fmean(r.cost_usd for r in rs),
            tokens=statistics.fmean(r.tokens for r in rs),
            wall_s=statistics.fmean(r.wall_s for r in rs),
        )
        for v, rs in by.items()
    ]
    return sorted(out, key=lambda s: (s.primary.mean is None, -(s.primary.mean or 0.0), s.variant))


def matrix(rows: Iterable[RolloutRow]) -> tuple[list[str], list[str], dict[tuple[str, str], Mean]]:
    """Variants x scenarios -> mean primary score: (variants, scenarios, cells)."""
    cells: dict[tuple[str, str], list[float | None]] = {}
    for r in rows:
        cells.setdefault((r.variant, r.scenario), []).append(r.primary)
    variants = sorted({v for v, _ in cells})
    scenarios = sorted({s for _, s in cells})
    return variants, scenarios, {k: Mean.of(v) for k, v in cells.items()}


def _num(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def leaderboard_markdown(summaries: list[VariantSummary]) -> str:
    lines = [
        "| rank | variant | mean score | ±95% | episodes | failed | cost $/ep | tokens/ep | wall s/ep |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for i, s in enumerate(summaries, 1):
        lines.append(
            f"| {i} | {s.variant} | {_num(s.primary.mean)} | {_num(s.primary.ci95)} | {s.episodes} | "
            f"{s.failed} | {s.cost_usd:.4f} | {s.tokens:.0f} | {s.wall_s:.2f} |"
        )
    return "\n".join(lines)


def matrix_markdown(variants: list[str], scenarios: list[str], cells: dict[tuple[str, str], Mean]) -> str:
    lines = [
        "| variant \\ scenario | " + " | ".join(scenarios) + " |",
        "| --- |" + " ---: |" * len(scenarios),
    ]
    for v in variants:
        row = []
        for s in scenarios:
            m = cells.get((v, s))
            if m is None:
                row.append("")
            else:
                row.append("no score" if m.mean is None else f"{_num(m.mean, 2)} (n={m.n})")
        lines.append(f"| {v} | " + " | ".join(row) + " |")
    return "\n".join(lines)
