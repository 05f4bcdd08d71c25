"""A tool and an evaluator that echo secrets, loaded by tests/test_secrets.py through the agents'
`tool_modules` and `evaluator_modules` (Ray workers import them as user code would be)."""

from __future__ import annotations

from p2e.evals import EvalContext, Verdict, evaluator
from p2e.tools import REGISTRY, tool

TOOL_KEY = "sk-proj-ToolEchoed0123456789abcdefXYZ"
"""An OpenAI-shaped key that the `leak` tool prints (as a tool dumping its environment would)."""
MODEL_KEY = "ghp_ModelEchoed0123456789abcdefghijklmnop"
"""A GitHub-shaped token that the mock model writes into its answer."""


@REGISTRY.register
@tool
def leak(label: str) -> str:
    """Report the configuration (and, carelessly, the key in it)."""
    return f"{label}: OPENAI_API_KEY={TOOL_KEY}"


@evaluator(id="quoting", version="1")
def quoting(ctx: EvalContext) -> Verdict:
    """Scores 1 and quotes the answer in its rationale, as a model judge often does."""
    answer = ctx.final_answer()
    return Verdict(value=1.0, rationale=f"the answer was: {answer.text if answer is not None else ''}")
