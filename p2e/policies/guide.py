"""Evaluator-guided branching, as configured on an agent (`guide:`): how the supervisor forks a
conversation at that agent's turns, what the children differ by, and how they are valued.

The search itself runs in the supervisor (`p2e.runtime.guided_search`); this module is only the
validated configuration, so agents files and rollout variants can carry it as data.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

FIXED = ("id", "placement", "replicas", "guide", "reflection", "can_delegate_to", "tools")
"""Fields a child cannot change: they would make it a different agent, not a different try."""


class GuideValue(BaseModel):
    """The evaluator whose score is a node's value (any registered evaluator, with params)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    params: dict[str, Any] = {}
    per: Literal["step", "episode"] = "episode"
    """`episode`: score the child branch as a whole (e.g. the root's answer against the
    scenario's reference); `step`: score the guided agent's last reply in the child."""


class GuidePolicy(BaseModel):
    """At every turn of the agent that carries it, fork the branch into children, run each, score
    them, and continue on the best. The other children stay in the store, scored."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    search: Literal["best_of_n", "beam", "best_first"] = "best_of_n"
    candidates: tuple[dict[str, Any], ...] = ()
    """One child per entry: overrides of this agent's fields (model, temperature, persona, seed)."""
    seeds: int | None = Field(None, ge=2, le=64)
    """Instead of `candidates`: this many children that differ only by `seed` (0, 1, ...)."""
    scope: Literal["step", "frame"] = "frame"
    """`frame`: each child runs until the agent's frame answers (for the root: the whole turn);
    `step`: each child runs until the agent's next reply and its tool results are stored."""
    value: GuideValue
    width: int = Field(2, ge=1, le=16)
    """beam: children kept after each level."""
    depth: int = Field(3, ge=1, le=32)
    """beam: levels searched (each a step of the agent)."""
    budget: int = Field(16, ge=2, le=1024)
    """best_first: most children created in one search."""

    @model_validator(mode="after")
    def _check(self) -> GuidePolicy:
        if bool(self.candidates) == (self.seeds is not None):
            raise ValueError("give either `candidates` (a list of overrides) or `seeds: N`, not both")
        if self.candidates and len(self.candidates) < 2:
            raise ValueError("`candidates` needs at least 2 entries: a search over one child is a plain run")
        for i, c in enumerate(self.candidates):
            if not isinstance(c, dict):
                raise ValueError(f"candidates[{i}] must be a mapping of agent fields, got {c!r}")
            fixed = sorted(set(c) & set(FIXED))
            if fixed:
                raise ValueError(f"candidates[{i}] may not change {', '.join(fixed)}")
        if self.search != "best_of_n" and self.scope != "step":
            raise ValueError(f"search {self.search!r} goes step by step: set `scope: step`")
        return self

    @property
    def n(self) -> int:
        return len(self.candidates) or int(self.seeds or 0)

    def children(self) -> list[tuple[str, dict[str, Any]]]:
        """(label, overrides) of each child, in order."""
        if self.candidates:
            return [(_label(c, i), dict(c)) for i, c in enumerate(self.candidates)]
        return [(f"seed={i}", {"seed": i}) for i in range(self.n)]


def _label(overrides: dict[str, Any], index: int) -> str:
    text = ",".join(f"{k}={v}" for k, v in sorted(overrides.items()) if not isinstance(v, dict | list))
    return text[:80] or f"candidate {index}"
