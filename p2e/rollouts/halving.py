"""Successive halving's arithmetic and its configuration (`adaptive:` in a spec): how many
variants go on after a round, how many rounds, and which configurations cannot halve. Pure, and
below both the spec (which checks a configuration) and `adaptive.py` (which runs the rounds)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from p2e.errors import InvalidArgument


class Adaptive(BaseModel):
    """Successive halving across variants: the scenario x repeat pairs are split into rounds;
    after each round the worst variants stop (p2e/rollouts/adaptive.py, docs/rollouts.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Literal["halving"] = "halving"
    keep: float = Field(0.5, gt=0, lt=1)
    """The fraction of a round's variants that go on (rounded up; at least one stops, and never
    fewer than `finalists` go on)."""
    rounds: int | Literal["auto"] = "auto"
    """How many rounds; `auto`: as many as it takes to get down to `finalists`."""
    finalists: int = Field(1, ge=1)
    """How many variants the last round keeps (the floor of every cut)."""
    seed: int = 0
    """Seeds the order in which scenarios are dealt into rounds."""
    failed_score: float | None = None
    """What an episode without a primary score (failed, or its evaluation failed) counts as when
    variants are ranked; default: it is left out of the mean, as in every summary."""

    @field_validator("rounds")
    @classmethod
    def _rounds(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError("rounds must be at least 1 (or auto)")
        return v


def next_count(n: int, keep: float, finalists: int) -> int:
    """How many of `n` variants go on after a round: `ceil(n * keep)`, but at least one stops
    and never fewer than `finalists` go on (none stops once `n <= finalists`)."""
    if n <= finalists:
        return n
    wanted = math.ceil(round(n * keep, 9))  # 0.3 * 10 is 3.0000000000000004, not 4
    return max(finalists, min(n - 1, wanted))


def auto_rounds(n: int, keep: float, finalists: int) -> int:
    """The rounds it takes to cut `n` variants down to `finalists`."""
    rounds = 0
    while n > finalists:
        n = next_count(n, keep, finalists)
        rounds += 1
    return rounds


def round_count(cfg: Adaptive, n_variants: int) -> int:
    return auto_rounds(n_variants, cfg.keep, cfg.finalists) if cfg.rounds == "auto" else int(cfg.rounds)


def schedule(cfg: Adaptive, n_variants: int) -> list[int]:
    """How many variants run in each round."""
    out, n = [], n_variants
    for _ in range(round_count(cfg, n_variants)):
        out.append(n)
        n = next_count(n, cfg.keep, cfg.finalists)
    return out


def check(
    cfg: Adaptive,
    primary: str | None,
    repeats: int,
    n_variants: int,
    n_scenarios: int,
    fail: Callable[..., InvalidArgument],
) -> None:
    """Configurations that cannot halve, as errors at validate time."""
    if n_variants < 2:
        raise fail(
            f"adaptive: successive halving ranks variants against each other, and this spec has "
            f"{n_variants}; add variants or remove `adaptive`",
            "adaptive",
        )
    if primary is None:
        raise fail(
            "adaptive: ranking variants needs a primary score: add `evaluators` (the first is the "
            "primary, or name one with `primary`)",
            "adaptive",
        )
    if cfg.finalists >= n_variants:
        raise fail(
            f"adaptive: finalists {cfg.finalists} leaves nothing to stop among {n_variants} variants; "
            f"use fewer finalists (at most {n_variants - 1})",
            "adaptive",
            "finalists",
        )
    units = n_scenarios * repeats
    rounds = round_count(cfg, n_variants)
    if rounds > units:
        if cfg.rounds == "auto":
            how = (
                f"rounds: auto needs {rounds} rounds (to go from {n_variants} variants to "
                f"{cfg.finalists} keeping {cfg.keep:g} each round)"
            )
            fix = "a higher keep or more finalists (fewer rounds)"
        else:
            how, fix = f"rounds asks for {rounds} rounds", "fewer rounds"
        raise fail(
            f"adaptive: {how}, but the spec has only {units} scenario x repeat pairs to deal into "
            f"rounds ({n_scenarios} scenarios x {repeats} repeats): add scenarios or "
            f"repeats, or use {fix}",
            "adaptive",
            "rounds",
        )
