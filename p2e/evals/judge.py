"""The model judge: a model grades a step or an episode against a rubric of weighted criteria.

The rubric is inline (a dict or a `Rubric`) or a YAML file:

    name: helpful-answer
    criteria:
      - {name: correct, weight: 3, description: The answer is factually right.}
      - {name: concise, weight: 1, description: No padding.}

Weights are normalised to sum to 1; the score is the weighted mean of the criteria's scores.

The prompt is a Jinja template (`DEFAULT_TEMPLATE`, or the `template` parameter: inline text
or a path to a `.j2` file). It sees `task`, `transcript`, `answer`, `reference`, `step` (the
graded step rendered, None for an episode), `criteria` (name, weight normalised, description),
`rubric`, `target` and `events`. Undefined variables are errors, so a typo fails loudly.

The judge must answer `{"criteria": {name: score in [0, 1]}, "rationale": "..."}` with every
criterion of the rubric and no other. Anything else is invalid output: the judge is asked again
(up to `retries` times) with the problem quoted in a follow-up message; when it never gives valid
output the score is an error with the last problem as its reason. Every attempt's tokens, cost
and latency are summed onto the score, valid or not. Temperature is 0 unless set.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import jinja2
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from p2e.errors import InvalidArgument
from p2e.evals.registry import EvalContext, EvalFailed, Verdict, evaluator
from p2e.evals.score import add_usage
from p2e.events import AgentReply, Critique, Event, Failed, Finished, ToolResult, Usage, UserMessage
from p2e.llm.base import Message, ModelError, ModelRequest
from p2e.templates import environment
from p2e.textfile import read_text
from p2e.yamlfile import field_problems, read_yaml

SYSTEM = (
    "You are a careful, impartial evaluator of AI agents. You reply with one JSON object and nothing else."
)

DEFAULT_TEMPLATE = """\
Grade {% if step %}one step of {% else %}the outcome of {% endif %}a conversation with a team of AI agents.

## Task given by the user
{{ task or "(no user message)" }}

## Transcript
{{ transcript }}
{% if step %}
## The step to grade
{{ step }}
{% else %}
## The final answer
{{ answer or "(the agents gave no final answer)" }}
{% endif %}
{%- if reference %}
## Reference answer
{{ reference }}
{% endif %}
## Criteria
Score each criterion from 0 (not met at all) to 1 (fully met):
{% for c in criteria %}- {{ c.name }} (weight {{ "%.2f" | format(c.weight) }}): {{ c.description }}
{% endfor %}
Reply with only this JSON object:
{"criteria": { {%- for c in criteria %}"{{ c.name }}": <score>{{ ", " if not loop.last }}{% endfor -%} }, \
"rationale": "<why, in a few sentences>"}
"""

Unit = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class Criterion(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    weight: float = Field(1.0, gt=0, allow_inf_nan=False)
    description: str = ""


class Rubric(BaseModel):
    """Weighted criteria. Names are unique; weights are relative (normalised when scoring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = ""
    description: str = ""
    criteria: tuple[Criterion, ...] = Field(min_length=1)

    @field_validator("criteria")
    @classmethod
    def _unique(cls, criteria: tuple[Criterion, ...]) -> tuple[Criterion, ...]:
        names = [c.name for c in criteria]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"criterion names must be unique; repeated: {', '.join(dupes)}")
        return criteria

    def weights(self) -> dict[str, float]:
        """Each criterion's weight, normalised so that they sum to 1."""
        total = sum(c.weight for c in self.criteria)
        return {c.name: c.weight / total for c in self.criteria}

    def combine(self, scores: Mapping[str, float]) -> float:
        """The weighted mean of the criteria's scores."""
        value = sum(w * scores[n] for n, w in self.weights().items())
        return min(1.0, max(0.0, value))  # only float rounding can push a mean of [0, 1] values out


RubricLike = Rubric | Mapping[str, Any] | list[Any] | str | Path


def load_rubric(path: str | Path) -> Rubric:
    """A rubric from a YAML file; errors name the file and the field."""
    path = Path(path)
    return _validate_rubric(read_yaml(path, "rubric file"), f"rubric {path}")


def _validate_rubric(data: Any, where: str) -> Rubric:
    if isinstance(data, list):
        data = {"criteria": data}
    if not isinstance(data, Mapping):
        raise InvalidArgument(f"{where}: expected a mapping with `criteria: [{{name, weight, description}}]`")
    try:
        return Rubric.model_validate(dict(data))
    except ValidationError as e:
        raise InvalidArgument(f"{where}: {field_problems(e)}") from None


def as_rubric(value: RubricLike) -> Rubric:
    """A Rubric from a Rubric, an inline dict (or list of criteria), or a YAML file path."""
    if isinstance(value, Rubric):
        return value
    if isinstance(value, str | Path):
        return load_rubric(value)
    return _validate_rubric(value, "inline rubric")


class JudgeOutput(BaseModel):
    """What the judge must answer."""

    model_config = ConfigDict(extra="forbid")

    criteria: dict[str, Unit]
    rationale: str = ""


_ENV = environment()


def compile_template(template: str | Path | None) -> jinja2.Template:
    """The judge's prompt template: the default, inline text, or a `.j2`/`.jinja` file."""
    if template is None:
        source, where = DEFAULT_TEMPLATE, "the default judge template"
    elif isinstance(template, Path) or (
        "\n" not in template and template.strip().endswith((".j2", ".jinja", ".jinja2"))
    ):
        path = Path(template)
        source, where = read_text(path, "judge template"), f"judge template {path}"
    else:
        source, where = template, "the inline judge template"
    try:
        return _ENV.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise InvalidArgument(f"{where}: line {e.lineno}: {e.message}") from None
    except RecursionError:  # Jinja parses recursively
        raise InvalidArgument(f"{where}: nested too deep for Jinja to parse") from None


def render_event(event: Event, limit: int = 2000) -> str:
    """One event as a transcript line (long text cut at `limit` characters)."""

    def cut(text: str) -> str:
        return text if len(text) <= limit else text[:limit] + f" ... [{len(text) - limit} more characters]"

    head = f"[{event.seq}] " if event.seq is not None else ""
    if isinstance(event, UserMessage):
        return f"{head}user: {cut(event.text)}"
    if isinstance(event, AgentReply):
        parts = [cut(event.text)] if event.text else []
        parts += [f"calls {c.name}({json.dumps(c.arguments, ensure_ascii=False)})" for c in event.tool_calls]
        return f"{head}{event.agent}: {' | '.join(parts) or '(empty reply)'}"
    if isinstance(event, ToolResult):
        status = " (error)" if event.is_error else ""
        return f"{head}{event.name} result{status} for {event.agent}: {cut(event.output)}"
    if isinstance(event, Critique):
        by = event.critic or f"{event.agent} itself"
        return f"{head}review of {event.agent}'s answer by {by}: {cut(event.text) or '(self-review prompt)'}"
    if isinstance(event, Failed):
        return f"{head}conversation failed ({event.code}): {event.message}"
    if isinstance(event, Finished):
        return f"{head}conversation finished ({event.reason})"
    return ""


def transcript(events: Sequence[Event], last: int) -> str:
    """The last `last` events as transcript lines, older ones counted, not shown: the judge's
    prompt (and its cost) stays bounded however long the branch grows."""
    shown = events[-last:]
    lines = [f"[{len(events) - len(shown)} earlier events not shown]"] if len(events) > len(shown) else []
    return "\n".join(lines + [line for e in shown if (line := render_event(e))])


def _parse(text: str, rubric: Rubric) -> JudgeOutput:
    """The judge's reply as a JudgeOutput; ValueError with a message for the judge otherwise."""
    raw = text.strip()
    if raw.startswith("```"):
        raw = raw.strip("`").removeprefix("json").strip()
    start, end = raw.find("{"), raw.rfind("}")
    if start < 0 or end < start:
        raise ValueError("the reply holds no JSON object")
    try:
        data = json.loads(raw[start : end + 1])
    except json.JSONDecodeError as e:
        raise ValueError(f"the reply is not valid JSON: {e}") from None
    try:
        out = JudgeOutput.model_validate(data)
    except ValidationError as e:
        details = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']} (got {err.get('input')!r})"
            for err in e.errors()
        )
        raise ValueError(f"the JSON does not fit the schema: {details}") from None
    names = [c.name for c in rubric.criteria]
    missing = [n for n in names if n not in out.criteria]
    extra = [n for n in out.criteria if n not in names]
    if missing or extra:
        what = []
        if missing:
            what.append(f"missing criteria: {', '.join(missing)}")
        if extra:
            what.append(f"unknown criteria: {', '.join(extra)}")
        raise ValueError(f"{'; '.join(what)} (the criteria are exactly: {', '.join(names)})")
    return out


@evaluator(id="judge", version="1")
class Judge:
    """A model grades the target against a rubric; see the module docstring."""

    def __init__(
        self,
        model: str,
        rubric: RubricLike,
        template: str | Path | None = None,
        temperature: Annotated[float, Field(ge=0)] = 0.0,
        retries: Annotated[int, Field(ge=0)] = 2,
        max_tokens: int | None = None,
        system: str = SYSTEM,
        context_events: Annotated[int, Field(ge=1)] = 60,
    ):
        from p2e.llm.base import split_model

        split_model(model)  # a malformed model name fails now
        self.model, self.rubric = model, as_rubric(rubric)
        self.template = compile_template(template)
        self.temperature, self.retries, self.max_tokens, self.system = (
            temperature,
            retries,
            max_tokens,
            system,
        )
        self.context_events = context_events

    def prompt(self, ctx: EvalContext) -> str:
        weights = self.rubric.weights()
        step = ctx.step()
        answer = ctx.final_answer()
        try:
            return self.template.render(
                task=ctx.task,
                transcript=transcript(ctx.events, self.context_events),
                answer=answer.text if answer is not None else None,
                reference=ctx.reference,
                step=render_event(step) if step is not None else None,
                criteria=[
                    {"name": c.name, "weight": weights[c.name], "description": c.description}
                    for c in self.rubric.criteria
                ],
                rubric=self.rubric,
                target=ctx.target,
                events=ctx.events,
            ).strip()
        except jinja2.TemplateError as e:
            raise EvalFailed(f"the judge template fails: {type(e).__name__}: {e}") from None

    async def evaluate(self, ctx: EvalContext) -> Verdict:
        if ctx.providers is None:
            from p2e.llm.registry import Providers

            providers = Providers()  # settings from the environment (OPENAI_API_KEY, OPENAI_BASE_URL)
        else:
            providers = ctx.providers
        provider = providers.for_model(self.model)
        messages = [
            Message(role="system", content=self.system),
            Message(role="user", content=self.prompt(ctx)),
        ]
        usage: Usage | None = None
        attempts = self.retries + 1
        problem = ""
        for _ in range(attempts):
            request = ModelRequest(
                model=self.model,
                messages=tuple(messages),
                temperature=self.temperature,
                max_tokens=self.max_tokens,
                agent="judge",
                conversation=ctx.target.conversation,
                branch=ctx.target.branch,
            )
            try:
                response = await provider.complete(request)
            except ModelError as e:
                raise EvalFailed(f"judge {self.model}: model call failed: {e}", usage=usage) from None
            usage = add_usage(usage, response.usage)
            try:
                out = _parse(response.text, self.rubric)
            except ValueError as e:
                problem = str(e)
                messages += [
                    Message(role="assistant", content=response.text),
                    Message(role="user", content=self._retry_prompt(problem)),
                ]
                continue
            value = self.rubric.combine(out.criteria)
            if not math.isfinite(value):
                raise EvalFailed(f"judge {self.model}: weighted score is not a number", usage=usage)
            return Verdict(
                value=value,
                metrics={n: out.criteria[n] for n in self.rubric.weights()},
                rationale=out.rationale,
                usage=usage,
            )
        raise EvalFailed(
            f"judge {self.model} gave no valid output in {attempts} attempt(s); last problem: {problem}",
            usage=usage,
        )

    def _retry_prompt(self, problem: str) -> str:
        names = ", ".join(f'"{c.name}": <score>' for c in self.rubric.criteria)
        return (
            f"Your reply could not be used: {problem}\n"
            f'Reply again with only the JSON object {{"criteria": {{{names}}}, "rationale": "..."}}, '
            "every score a number from 0 to 1."
        )
