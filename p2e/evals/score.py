"""Scores: what an evaluator says about a step or an episode, as a record that crosses processes.

A score is either done (a value in [0, 1]), or an error with its reason, or not there yet
(pending, running). The model refuses a done score whose value is outside [0, 1] or not a
number: a broken evaluator must show up as an error, never as a clipped or silent 0.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator
from pydantic_core import to_jsonable_python

from p2e.events import Usage

Status = Literal["pending", "running", "done", "error"]
STATUSES: tuple[Status, ...] = ("pending", "running", "done", "error")


class Target(BaseModel):
    """What is scored: one step (`seq` set) or a whole episode/branch (`seq` None)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    conversation: str = Field(min_length=1)
    branch: str = Field("main", min_length=1)
    seq: int | None = Field(None, ge=0)

    @property
    def ref(self) -> str:
        """`CONV/BRANCH/SEQ` for a step (the artifact ref), `CONV/BRANCH` for an episode."""
        base = f"{self.conversation}/{self.branch}"
        return base if self.seq is None else f"{base}/{self.seq}"

    @property
    def is_episode(self) -> bool:
        return self.seq is None

    def __str__(self) -> str:
        return self.ref


class Score(BaseModel):
    """One evaluator's verdict on one target. Build finished ones with `Score.done`/`Score.failed`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    evaluator: str = Field(min_length=1)
    version: str = Field(min_length=1)
    target: Target
    status: Status = "done"
    value: float | None = None
    """In [0, 1] when done; None otherwise."""
    metrics: dict[str, float] = Field(default_factory=dict)
    """Named sub-metrics; raw numbers (a cost in USD, a criterion's score), not bound to [0, 1]."""
    rationale: str = ""
    usage: Usage | None = None
    """What the evaluator itself cost (a judge's tokens, cost and latency); None when free."""
    error: str | None = None
    """Why the evaluation failed (status error)."""
    params_digest: str = ""
    """A digest of the parameters the evaluator was created with ("" when none were given;
    `params_digest()`): with `version`, what says whether a stored score is still current for an
    evaluator (a re-run with other parameters scores again)."""

    @model_validator(mode="after")
    def _consistent(self) -> Score:
        if self.status == "done":
            if self.value is None:
                raise ValueError(f"a done score from evaluator {self.evaluator!r} needs a value")
            if not (math.isfinite(self.value) and 0.0 <= self.value <= 1.0):
                raise ValueError(
                    f"score value {self.value!r} from evaluator {self.evaluator!r} is outside [0, 1]"
                )
        elif self.value is not None:
            raise ValueError(f"a {self.status} score has no value (got {self.value!r})")
        if self.status == "error" and not self.error:
            raise ValueError("an error score needs the reason in `error`")
        bad = [k for k, v in self.metrics.items() if not math.isfinite(v)]
        if bad:
            raise ValueError(f"sub-metrics must be finite numbers: {', '.join(bad)}")
        return self

    @property
    def key(self) -> tuple[str, str]:
        """(evaluator, target ref): at most one current score per key; a store can write by it."""
        return self.evaluator, self.target.ref

    @classmethod
    def done(
        cls,
        evaluator: str,
        version: str,
        target: Target,
        value: float,
        *,
        metrics: dict[str, float] | None = None,
        rationale: str = "",
        usage: Usage | None = None,
    ) -> Score:
        return cls(
            evaluator=evaluator,
            version=version,
            target=target,
            status="done",
            value=value,
            metrics=metrics or {},
            rationale=rationale,
            usage=usage,
        )

    @classmethod
    def failed(
        cls, evaluator: str, version: str, target: Target, reason: str, *, usage: Usage | None = None
    ) -> Score:
        return cls(
            evaluator=evaluator, version=version, target=target, status="error", error=reason, usage=usage
        )

    @classmethod
    def pending(cls, evaluator: str, version: str, target: Target, *, params_digest: str = "") -> Score:
        return cls(
            evaluator=evaluator, version=version, target=target, status="pending", params_digest=params_digest
        )

    def running(self) -> Score:
        """This score's evaluation, started."""
        return self.model_copy(update={"status": "running"})


def params_digest(params: Mapping[str, Any]) -> str:
    """A short, stable digest of an evaluator's parameters ("" for none): canonical JSON, keys
    sorted, so the same parameters always give the same digest, in any process."""
    if not params:
        return ""
    text = json.dumps(to_jsonable_python(dict(params), fallback=repr), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def add_usage(a: Usage | None, b: Usage | None) -> Usage | None:
    """The sum of two usages (None counts as nothing); a judge that retries pays for every try."""
    if a is None:
        return b
    if b is None:
        return a
    return Usage(
        prompt_tokens=a.prompt_tokens + b.prompt_tokens,
        completion_tokens=a.completion_tokens + b.completion_tokens,
        cost_usd=a.cost_usd + b.cost_usd,
        latency_ms=a.latency_ms + b.latency_ms,
    )


SCORES: TypeAdapter[list[Score]] = TypeAdapter(list[Score])
"""A list of scores as JSON (what crosses from an evaluator actor)."""
