"""Custom evaluators, loaded by module path in tests/test_evals.py (as user code would be)."""

from __future__ import annotations

from p2e.evals import EvalContext, Verdict, evaluator


@evaluator(id="shouty", version="2")
def shouty(ctx: EvalContext, min_ratio: float = 0.5) -> Verdict:
    """The share of upper-case letters in the final answer, 1 when at least `min_ratio`."""
    answer = ctx.final_answer()
    text = answer.text if answer is not None else ""
    letters = [c for c in text if c.isalpha()]
    ratio = sum(c.isupper() for c in letters) / len(letters) if letters else 0.0
    return Verdict(value=1.0 if ratio >= min_ratio else 0.0, metrics={"ratio": ratio})


@evaluator(id="length", version="1")
class Length:
    """Short answers score higher: 1 for an empty answer, 0 at `limit` characters or more."""

    def __init__(self, limit: int = 100):
        self.limit = limit

    async def evaluate(self, ctx: EvalContext) -> float:
        answer = ctx.final_answer()
        n = len(answer.text) if answer is not None else 0
        return max(0.0, 1.0 - n / self.limit)


@evaluator(id="broken", version="1")
def broken(ctx: EvalContext) -> float:
    """Returns a value outside [0, 1], to prove that it becomes an error score."""
    return 1.5


@evaluator(id="step_digit", version="1")
def step_digit(ctx: EvalContext) -> float:
    """A step's value: the largest digit in its text and tool-call arguments, over 9 (for
    guided-search tests whose mock replies carry their seed)."""
    step = ctx.step()
    text = getattr(step, "text", "") + "".join(str(c.arguments) for c in getattr(step, "tool_calls", ()))
    digits = [int(c) for c in text if c.isdigit()]
    return max(digits, default=0) / 9
