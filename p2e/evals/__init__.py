"""Evaluation: evaluators score steps and episodes; aggregates are derived from the scores.

This package is pure (no Ray, no store): the evaluator actors and the CLI build on it.
"""

from __future__ import annotations

from p2e.evals.aggregate import (
    BranchScore,
    Counts,
    best_branch,
    branch_score,
    by_branch,
    counts,
    ranked_branches,
)
from p2e.evals.builtin import (
    BUILTINS,
    contains,
    cost,
    exact_match,
    latency,
    max_steps,
    normalise,
    tool_called,
)
from p2e.evals.judge import DEFAULT_TEMPLATE, Criterion, Judge, JudgeOutput, Rubric, as_rubric, load_rubric
from p2e.evals.registry import (
    ENTRY_POINT_GROUP,
    BoundEvaluator,
    EvalContext,
    EvalFailed,
    Evaluator,
    EvaluatorDef,
    Registry,
    UnknownEvaluator,
    Verdict,
    definition_of,
    evaluator,
)
from p2e.evals.score import STATUSES, Score, Status, Target

__all__ = [
    "BUILTINS",
    "DEFAULT_TEMPLATE",
    "ENTRY_POINT_GROUP",
    "STATUSES",
    "BoundEvaluator",
    "BranchScore",
    "Counts",
    "Criterion",
    "EvalContext",
    "EvalFailed",
    "Evaluator",
    "EvaluatorDef",
    "Judge",
    "JudgeOutput",
    "Registry",
    "Rubric",
    "Score",
    "Status",
    "Target",
    "UnknownEvaluator",
    "Verdict",
    "as_rubric",
    "best_branch",
    "branch_score",
    "builtin_registry",
    "by_branch",
    "contains",
    "cost",
    "counts",
    "default_registry",
    "definition_of",
    "evaluator",
    "exact_match",
    "latency",
    "load_rubric",
    "max_steps",
    "normalise",
    "ranked_branches",
    "tool_called",
]


def builtin_registry() -> Registry:
    """A new registry holding the built-in evaluators and the judge."""
    return Registry([*BUILTINS, Judge])


def default_registry(modules: tuple[str, ...] | list[str] = (), *, entry_points: bool = True) -> Registry:
    """The built-ins, plus the evaluators of installed packages (entry-point group `p2e.evaluators`)
    and of the user modules named (module paths from the config)."""
    registry = builtin_registry()
    if entry_points:
        registry.load_entry_points()
    for name in modules:
        registry.load_module(name)
    return registry
