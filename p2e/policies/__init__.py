"""Runtime policies, configured per agent (`AgentSpec`) and overridable by rollout variants.

- `context`: what of a frame the model sees (`ContextPolicy`, `apply_context`).
- `duplicates`: what a repeated tool call does (`DuplicatePolicy`, `run_calls_with_policy`).
- `guide`: evaluator-guided branching (`GuidePolicy`).
"""

from p2e.policies.context import ContextPolicy, apply_context
from p2e.policies.duplicates import DuplicatePolicy, run_calls_with_policy
from p2e.policies.guide import GuidePolicy, GuideValue

__all__ = [
    "ContextPolicy",
    "DuplicatePolicy",
    "GuidePolicy",
    "GuideValue",
    "apply_context",
    "run_calls_with_policy",
]
