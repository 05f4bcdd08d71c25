"""The built-in evaluators that need no model: answer matching, tool use, steps, cost, latency,
duplicate tool calls.

Answer matchers (`exact_match`, `regex`, `contains`) read the final root answer: the root
agent's last reply without tool calls in the events up to the target. A conversation that never
answered scores 0 with that said in the rationale (the answer is missing, which is a real
outcome); a scenario without a reference answer is an error (the evaluation cannot be done).

Normalisation, for `exact_match` and `contains`: `ignore_case` (default off) compares
case-folded text; `collapse_whitespace` (default on) strips the ends and turns every run of
whitespace into one space, since models differ in trailing newlines more than in substance.

`cost` and `latency` score a sum against a budget: 1 at 0, falling linearly to 0 at the budget
and staying 0 beyond it; the raw sum is the sub-metric (`cost_usd`, `latency_ms`), so a
dashboard can show the number and rank by the score.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field

from p2e.errors import EventRejected, InvalidArgument
from p2e.evals.registry import EvalContext, EvalFailed, Verdict, evaluator
from p2e.events import AgentReply, ToolResult
from p2e.machine import INITIAL, apply
from p2e.policies.duplicates import call_key


def normalise(text: str, *, ignore_case: bool = False, collapse_whitespace: bool = True) -> str:
    if collapse_whitespace:
        text = " ".join(text.split())
    if ignore_case:
        text = text.casefold()
    return text


def _answer_and_reference(ctx: EvalContext, what: str) -> tuple[str | None, str]:
    if ctx.reference is None:
        raise EvalFailed(f"{what} needs the scenario's reference answer, and this target has none")
    answer = ctx.answer()
    return (answer.text if answer is not None else None), ctx.reference


def _no_answer(ctx: EvalContext) -> Verdict:
    return Verdict(
        value=0.0, metrics={"answered": 0.0}, rationale=f"the root agent {ctx.root!r} gave no final answer"
    )


@evaluator(id="exact_match", version="2")
def exact_match(ctx: EvalContext, ignore_case: bool = False, collapse_whitespace: bool = True) -> Verdict:
    """1 when the answer (the final root answer; for a step, that reply) equals the reference
    (after normalisation), else 0."""
    answer, reference = _answer_and_reference(ctx, "exact_match")
    if answer is None:
        return _no_answer(ctx)
    opts = {"ignore_case": ignore_case, "collapse_whitespace": collapse_whitespace}
    same = normalise(answer, **opts) == normalise(reference, **opts)
    return Verdict(
        value=1.0 if same else 0.0,
        metrics={"answered": 1.0},
        rationale="the answer equals the reference" if same else "the answer differs from the reference",
    )


@evaluator(id="contains", version="2")
def contains(ctx: EvalContext, ignore_case: bool = False, collapse_whitespace: bool = True) -> Verdict:
    """1 when the answer (the final root answer; for a step, that reply) contains the reference
    (after normalisation), else 0."""
    answer, reference = _answer_and_reference(ctx, "contains")
    if answer is None:
        return _no_answer(ctx)
    opts = {"ignore_case": ignore_case, "collapse_whitespace": collapse_whitespace}
    found = normalise(reference, **opts) in normalise(answer, **opts)
    return Verdict(
        value=1.0 if found else 0.0,
        metrics={"answered": 1.0},
        rationale="the answer contains the reference" if found else "the reference is not in the answer",
    )


@evaluator(id="regex", version="2")
class Regex:
    """1 when the answer (the final root answer; for a step, that reply) matches a pattern:
    `pattern`, else the reference as a pattern.

    `full=True` needs the whole (stripped) answer to match; by default a match anywhere counts.
    """

    def __init__(self, pattern: str | None = None, ignore_case: bool = False, full: bool = False):
        self.pattern, self.full = pattern, full
        self.flags = re.IGNORECASE if ignore_case else 0
        self.compiled = self._compile(pattern, "parameter 'pattern'") if pattern is not None else None

    def _compile(self, pattern: str, where: str) -> re.Pattern[str]:
        try:
            return re.compile(pattern, self.flags)
        except re.error as e:
            raise InvalidArgument(
                f"evaluator 'regex': {where} is not a valid regular expression: {e}"
            ) from None

    def evaluate(self, ctx: EvalContext) -> Verdict:
        compiled = self.compiled
        if compiled is None:
            if ctx.reference is None:
                raise EvalFailed("regex needs a `pattern` parameter or the scenario's reference answer")
            try:
                compiled = self._compile(ctx.reference, "the reference answer")
            except InvalidArgument as e:
                raise EvalFailed(str(e)) from None
        answer = ctx.answer()
        if answer is None:
            return _no_answer(ctx)
        text = answer.text.strip()
        match = compiled.fullmatch(text) if self.full else compiled.search(text)
        return Verdict(
            value=1.0 if match else 0.0,
            metrics={"answered": 1.0},
            rationale=f"the answer {'matches' if match else 'does not match'} /{compiled.pattern}/",
        )


def _subset(expected: Any, actual: Any) -> bool:
    """Whether `expected` is in `actual`: dicts compare key by key (recursively), the rest by equality."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and _subset(v, actual[k]) for k, v in expected.items()
        )
    return bool(expected == actual)


@evaluator(id="tool_called", version="1")
def tool_called(
    ctx: EvalContext, name: str, arguments: dict[str, Any] | None = None, agent: str | None = None
) -> Verdict:
    """1 when a reply of the target called tool `name` (optionally by `agent`, with `arguments`
    among its arguments), else 0. `delegate` counts: `name="delegate", arguments={"agent": "x"}`."""
    calls = [
        c
        for r in ctx.replies()
        if agent is None or r.agent == agent
        for c in r.tool_calls
        if c.name == name and (arguments is None or _subset(arguments, c.arguments))
    ]
    what = f"{name}({', '.join(f'{k}={v!r}' for k, v in (arguments or {}).items())})"
    return Verdict(
        value=1.0 if calls else 0.0,
        metrics={"calls": float(len(calls))},
        rationale=f"{what} was called {len(calls)} time(s)" if calls else f"{what} was not called",
    )


@evaluator(id="max_steps", version="1")
def max_steps(
    ctx: EvalContext, limit: Annotated[int, Field(ge=1)], decay: Literal["hard", "linear"] = "hard"
) -> Verdict:
    """Steps (agent replies, every agent) against a limit: 1 when steps <= limit.

    Beyond it: `hard` gives 0; `linear` falls from 1 at the limit to 0 at twice the limit.
    """
    steps = len(ctx.replies())
    if steps <= limit:
        value = 1.0
    elif decay == "hard":
        value = 0.0
    else:
        value = max(0.0, 1.0 - (steps - limit) / limit)
    return Verdict(value=value, metrics={"steps": float(steps)}, rationale=f"{steps} step(s), limit {limit}")


def _against_budget(ctx: EvalContext, field: str, budget: float, free: str, fmt: str) -> Verdict:
    """A usage total of the target's replies scored against a budget: 1 at 0, 0 at the budget."""
    replies = ctx.replies()
    total = sum(getattr(r.usage, field) for r in replies if r.usage is not None)
    unknown = sum(1 for r in replies if r.usage is None)
    note = f"; {unknown} repl(ies) without usage counted as {free}" if unknown else ""
    return Verdict(
        value=min(1.0, max(0.0, 1.0 - total / budget)),
        metrics={field: total},
        rationale=f"{fmt.format(total)} of a {fmt.format(budget)} budget over {len(replies)} repl(ies){note}",
    )


@evaluator(id="cost", version="1")
def cost(ctx: EvalContext, budget_usd: Annotated[float, Field(gt=0, allow_inf_nan=False)]) -> Verdict:
    """Model cost of the target's replies against a budget: 1 at $0, 0 at or beyond the budget."""
    return _against_budget(ctx, "cost_usd", budget_usd, "free", "${:.6g}")


@evaluator(id="latency", version="1")
def latency(ctx: EvalContext, budget_ms: Annotated[float, Field(gt=0, allow_inf_nan=False)]) -> Verdict:
    """Model latency summed over the target's replies against a budget: 1 at 0 ms, 0 at the budget."""
    return _against_budget(ctx, "latency_ms", budget_ms, "0 ms", "{:.1f} ms")


@evaluator(id="duplicate_calls", version="1")
def duplicate_calls(ctx: EvalContext, agent: str | None = None) -> Verdict:
    """1 minus the fraction of the target's tool calls that repeat an earlier one (1 with no calls).

    A call repeats when the same frame already called the same tool with the same arguments
    (canonical JSON) and that call did not fail, or when the same reply makes it twice: the rule
    the duplicate-call policy marks `duplicate_of` by (`p2e.policies.duplicates`). It is found
    from the calls themselves, so it scores runs under any policy, `none` included. Delegations
    do not count. `agent` limits it to one agent's calls.
    """
    target = ctx.target.seq
    state = INITIAL
    succeeded: dict[tuple[str, int], set[tuple[str, str]]] = {}  # frame -> keys that succeeded
    pending: dict[str, tuple[tuple[str, int], tuple[str, str]]] = {}  # call id -> (frame, key)
    calls = repeats = 0
    try:
        for i, e in enumerate(ctx.events):
            if isinstance(e, AgentReply) and state.stack:
                top = state.stack[-1]
                frame = (top.agent, top.start)
                done = succeeded.setdefault(frame, set())
                at = e.seq if e.seq is not None else i
                counted = (target is None or at == target) and (agent is None or e.agent == agent)
                here: set[tuple[str, str]] = set()
                for c in e.tool_calls:
                    key = call_key(c)
                    if key is None:
                        continue
                    pending[c.id] = (frame, key)
                    if counted:
                        calls += 1
                        repeats += key in done or key in here
                    here.add(key)
            elif isinstance(e, ToolResult) and not e.is_error and e.call_id in pending:
                frame, key = pending.pop(e.call_id)
                succeeded.setdefault(frame, set()).add(key)
            state = apply(state, e)
    except EventRejected as err:
        raise EvalFailed(f"duplicate_calls could not follow the branch's events: {err}") from None
    whose = f" by {agent}" if agent is not None else ""
    if not calls:
        return Verdict(
            value=1.0,
            metrics={"duplicates": 0.0, "calls": 0.0, "duplicate_fraction": 0.0},
            rationale=f"no tool calls{whose}",
        )
    fraction = repeats / calls
    return Verdict(
        value=1.0 - fraction,
        metrics={"duplicates": float(repeats), "calls": float(calls), "duplicate_fraction": fraction},
        rationale=f"{repeats} of {calls} tool call(s){whose} repeated an earlier identical call",
    )


BUILTINS: tuple[Any, ...] = (
    exact_match,
    contains,
    Regex,
    tool_called,
    max_steps,
    cost,
    latency,
    duplicate_calls,
)
