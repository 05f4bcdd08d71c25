"""What the observer needs from a rollout's episodes: one row each, and summaries over them
(computed by `p2e.rollouts.stats`, the one aggregation every view uses).

`RolloutRow` is deliberately small and forgiving (extra fields are ignored), so the rollout
module's own row model, or a plain dict of it, can be passed as is: `RolloutRow.of(row)`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from p2e.rollouts.stats import MeanCI, VariantSummary, ranked, summarize
from p2e.rollouts.stats import matrix as stats_matrix


class RolloutRow(BaseModel):
    """One episode's outcome, as the observer logs it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    episode: str
    team: str = ""
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
    round: int | None = None

    @classmethod
    def of(cls, row: RolloutRow | BaseModel | Mapping[str, Any]) -> RolloutRow:
        if isinstance(row, RolloutRow):
            return row
        if isinstance(row, BaseModel):
            return cls.model_validate(row.model_dump())
        return cls.model_validate(row)


def leaderboard(rows: Iterable[RolloutRow]) -> list[VariantSummary]:
    """Variants ranked by mean primary score (best first; variants without a score last), as
    `p2e rollout show` summarises them (`p2e.rollouts.stats`: the same counts, means and
    bootstrap intervals)."""
    return ranked(summarize(rows))


def matrix(rows: Iterable[RolloutRow]) -> tuple[list[str], list[str], dict[tuple[str, str], MeanCI]]:
    """Variants x scenarios -> mean primary score: (variants, scenarios, cells)."""
    return laid_out(stats_matrix(rows))


def laid_out(
    cells: dict[tuple[str, str], MeanCI],
) -> tuple[list[str], list[str], dict[tuple[str, str], MeanCI]]:
    """A matrix's cells with its variants and scenarios in order."""
    variants = sorted({v for v, _ in cells})
    scenarios = sorted({s for _, s in cells})
    return variants, scenarios, cells


def _num(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _ci(s: VariantSummary) -> str:
    return "-" if s.ci_low is None or s.ci_high is None else f"[{_num(s.ci_low)}, {_num(s.ci_high)}]"


def leaderboard_markdown(summaries: list[VariantSummary]) -> str:
    lines = [
        "| rank | variant | mean score | 95% CI | n | episodes | failed "
        "| cost $/ep | tokens/ep | wall s/ep |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for i, s in enumerate(summaries, 1):
        per = max(s.episodes, 1)
        lines.append(
            f"| {i} | {s.variant} | {_num(s.mean)} | {_ci(s)} | {s.n} | {s.episodes} | {s.failures} | "
            f"{s.cost_usd / per:.4f} | {s.tokens / per:.0f} | {_num(s.mean_wall_s, 2)} |"
        )
    return "\n".join(lines)


def matrix_markdown(variants: list[str], scenarios: list[str], cells: dict[tuple[str, str], MeanCI]) -> str:
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
