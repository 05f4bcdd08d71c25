"""The `mock` provider: deterministic replies from YAML rules, so demos, tests and offline users
run the whole stack without a key or a network.

`mock/<name>` names a rules set: `<name>.yaml` in one of the settings' `rules_dirs` (default
`experiments/mock`, relative to the current directory), a path ending in `.yaml`, or a set given
inline in the settings (`rules: {<name>: {...}}`). A rules set:

```yaml
latency_ms: 50               # optional: simulated model latency
stream_chunk_ms: 20          # optional: stream replies (when the caller streams) a word at a time,
                             # this long before each piece; tool-call arguments in 8-character pieces
rules:                       # first match wins; a rule without matchers matches everything
  - agent: planner           # matchers (all given ones must hold): agent, turn, match, role
    role: user               # role of the last message ("tool" reacts to tool results)
    delegate: {agent: researcher, task: "Find facts for: {{ last }}"}
  - agent: researcher
    match: "in (?P<city>[A-Z]\\w+)"   # regex searched in the last message's content
    tool_calls: [{name: weather, arguments: {city: "{{ match.city }}"}}]
  - agent: researcher
    role: tool
    text: "Findings: {{ results | join('; ') }}"
default: "Nothing scripted for {{ agent }} (turn {{ turn }})."   # or {text, tool_calls, delegate}
```

Answers are Jinja templates (text, delegate agent/task, and every string inside tool-call
arguments) over: `last` (last message content), `agent`, `turn`, `seed` (the request's sampling
seed, or None), `task` (first user message of the frame), `role` (of the last message),
`results` (contents of the trailing tool messages; the `fromjson` filter parses one),
`match` (the regex match: `match[0]`, `match[1]`, `match.name`; empty without `match`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import time
import types
import typing
from pathlib import Path
from typing import Any, Literal

import jinja2
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from p2e.errors import InvalidArgument, P2EError
from p2e.events import DELEGATE, ToolCall, Usage
from p2e.llm.base import Message, ModelDelta, ModelRequest, ModelResponse, OnDelta, split_model
from p2e.templates import environment
from p2e.yamlfile import read_yaml

DEFAULT_RULES_DIR = "experiments/mock"

_env = environment(keep_trailing_newline=True)
_env.filters["fromjson"] = json.loads  # tool outputs are often JSON: `(results[0] | fromjson).city`


@functools.lru_cache(maxsize=4096)
def _template(source: str) -> jinja2.Template:
    return _env.from_string(source)


def _check_template(source: str) -> str:
    try:
        _template(source)
    except jinja2.TemplateSyntaxError as e:
        raise ValueError(f"bad Jinja template {source!r}: {e.message} (line {e.lineno})") from e
    return source


def _check_templates(value: Any) -> Any:
    """Every string inside tool-call arguments is a template; check them all at load time."""
    if isinstance(value, str):
        _check_template(value)
    elif isinstance(value, dict):
        for v in value.values():
            _check_templates(v)
    elif isinstance(value, list):
        for v in value:
            _check_templates(v)
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ToolCallSpec(_Strict):
    name: str = Field(min_length=1)
    arguments: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_template(v)

    @field_validator("arguments")
    @classmethod
    def _arguments(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _check_templates(v)


class DelegateSpec(_Strict):
    agent: str = Field(min_length=1)
    task: str

    @field_validator("agent", "task")
    @classmethod
    def _templates(cls, v: str) -> str:
        return _check_template(v)


class Answer(_Strict):
    """What a rule (or the default) replies: text and/or tool calls and/or delegations."""

    text: str | None = None
    tool_calls: list[ToolCallSpec] = Field(default_factory=list)
    delegate: list[DelegateSpec] = Field(default_factory=list)

    @field_validator("text")
    @classmethod
    def _text(cls, v: str | None) -> str | None:
        return v if v is None else _check_template(v)

    @field_validator("delegate", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, dict) else v

    @model_validator(mode="after")
    def _answers(self) -> Answer:
        if self.text is None and not self.tool_calls and not self.delegate:
            raise ValueError("no answer: give text, tool_calls and/or delegate")
        return self


class Rule(Answer):
    """Matchers (all given ones must hold) plus the answer."""

    agent: str | None = None
    turn: int | None = Field(None, ge=0)
    match: str | None = None
    role: Literal["system", "user", "assistant", "tool"] | None = None

    @field_validator("match")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"bad regex {v!r}: {e}") from e
        return v

    def matches(self, request: ModelRequest, last: Message | None) -> re.Match[str] | bool:
        """False, or True / the regex match when every given matcher holds."""
        if self.agent is not None and self.agent != request.agent:
            return False
        if self.turn is not None and self.turn != request.turn:
            return False
        if self.role is not None and (last is None or last.role != self.role):
            return False
        if self.match is not None:
            return re.search(self.match, last.content if last else "") or False
        return True


class RulesFile(_Strict):
    latency_ms: float = Field(0.0, ge=0)
    stream_chunk_ms: float | None = Field(None, ge=0)
    rules: list[Rule] = Field(default_factory=list)
    default: Answer | None = None

    @field_validator("default", mode="before")
    @classmethod
    def _text_shorthand(cls, v: Any) -> Any:
        return {"text": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _not_empty(self) -> RulesFile:
        if not self.rules and self.default is None:
            raise ValueError("no rules and no default: nothing to answer with")
        return self


class NoRuleMatched(P2EError):
    """A request that no rule of the set answers, and the set has no `default`."""


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model class that holds the last key of a validation error location."""
    model: type[BaseModel] | None = RulesFile
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        model = _find_model(field.annotation) if field else None
    return model


def _find_model(tp: Any) -> type[BaseModel] | None:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is not None:
        for arg in typing.get_args(tp):
            if found := _find_model(arg):
                return found
    return None


def _where(loc: tuple[int | str, ...]) -> str:
    """('rules', 2, 'match') -> "rules[2], field 'match'"; the container path, then the key."""
    path = ""
    for part in loc[:-1]:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    if not loc:
        return "top level"
    last = loc[-1]
    if isinstance(last, int):
        return f"{path}[{last}]"
    return f"{path}, field {last!r}" if path else f"field {last!r}"


def _describe(e: ValidationError) -> str:
    items = []
    for err in e.errors():
        loc = tuple(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            model = _model_at(loc)
            allowed = f"; allowed: {', '.join(model.model_fields)}" if model else ""
            msg = f"unknown key{allowed}"
        items.append(f"{_where(loc)}: {msg}")
    return "; ".join(items)


def parse_rules(data: Any, label: str) -> RulesFile:
    """Validate a rules set; errors name the file, the rule index and the field."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidArgument(f"bad mock rules file {label}: the top level must be a mapping")
    try:
        return RulesFile.model_validate(data)
    except ValidationError as e:
        raise InvalidArgument(f"bad mock rules file {label}: {_describe(e)}") from e


def load_rules(path: Path) -> RulesFile:
    return parse_rules(read_yaml(path, "mock rules file"), str(path))


CALL_TOKENS = 12
"""What one earlier tool call is counted as in a prompt (not serialised again on every step)."""


def _tokens(text: str) -> int:
    return (len(text) + 3) // 4


def _render(value: Any, ctx: dict[str, Any]) -> Any:
    if isinstance(value, str):
        if "{" not in value:  # plain text: a Jinja context costs more than the rest of a reply
            return value
        return _template(value).render(ctx)
    if isinstance(value, dict):
        return {k: _render(v, ctx) for k, v in value.items()}
    if isinstance(value, list):
        return [_render(v, ctx) for v in value]
    return value


def _match_vars(m: re.Match[str] | bool) -> dict[Any, Any]:
    if not isinstance(m, re.Match):
        return {}
    out: dict[Any, Any] = {i: m.group(i) for i in range(m.re.groups + 1)}
    out.update(m.groupdict())
    return out


class MockProvider:
    """Answers model requests from rules sets; deterministic for a given request."""

    def __init__(self, settings: dict[str, Any] | None = None):
        settings = dict(settings or {})
        dirs = settings.pop("rules_dirs", [DEFAULT_RULES_DIR])
        if isinstance(dirs, str | os.PathLike):
            dirs = [dirs]
        self.rules_dirs: list[str] = [str(d) for d in dirs]
        inline = settings.pop("rules", {}) or {}
        if not isinstance(inline, dict):
            raise InvalidArgument("mock provider setting `rules` must map rules-set names to rules sets")
        if settings:
            raise InvalidArgument(
                f"unknown mock provider settings: {', '.join(sorted(settings))}; known: rules_dirs, rules"
            )
        self._inline = {name: parse_rules(data, f"settings rules[{name!r}]") for name, data in inline.items()}
        self._files: dict[Path, tuple[int, RulesFile]] = {}
        self._paths: dict[str, Path] = {}

    def rules_for(self, model: str) -> tuple[str, RulesFile]:
        """(label, rules set) for a model named `mock/<name>`; files reload when they change."""
        name = split_model(model)[1]
        if name in self._inline:
            return f"settings rules[{name!r}]", self._inline[name]
        path = self._paths.get(name)
        try:
            if path is None:
                path = self._paths[name] = self._find(name)
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:  # moved or deleted since: look again (and say so if it is gone)
            self._paths.pop(name, None)
            path = self._paths[name] = self._find(name)
            mtime = path.stat().st_mtime_ns
        cached = self._files.get(path)
        if cached is None or cached[0] != mtime:
            cached = (mtime, load_rules(path))
            self._files[path] = cached
        return str(path), cached[1]

    def check_model(self, model: str) -> None:
        """Its rules set exists and parses (`Providers.check_model`: at validate time)."""
        self.rules_for(model)

    def _find(self, name: str) -> Path:
        if name.endswith((".yaml", ".yml")):
            path = Path(name)
            if not path.is_file():
                raise InvalidArgument(f"mock rules file {name} does not exist (looked in {Path.cwd()})")
            return path.resolve()
        tried = []
        for d in self.rules_dirs:
            for ext in (".yaml", ".yml"):
                path = Path(d) / f"{name}{ext}"
                tried.append(str(path))
                if path.is_file():
                    return path.resolve()
        known = sorted(
            {p.stem for d in self.rules_dirs if Path(d).is_dir() for p in Path(d).glob("*.y*ml")}
            | set(self._inline)
        )
        raise InvalidArgument(
            f"no mock rules set {name!r}: tried {', '.join(tried) or 'no directories'}"
            f" (relative to {Path.cwd()}); known sets: {', '.join(known) or 'none'}"
        )

    async def complete(self, request: ModelRequest, on_delta: OnDelta | None = None) -> ModelResponse:
        t0 = time.perf_counter()
        label, rules = self.rules_for(request.model)
        if rules.latency_ms:
            await asyncio.sleep(rules.latency_ms / 1000)
        messages = request.messages
        last = messages[-1] if messages else None
        index, answer, m = self._pick(label, rules, request, last)
        ctx = {
            "last": last.content if last else "",
            "role": last.role if last else "",
            "agent": request.agent,
            "turn": request.turn,
            "seed": request.seed,
            "task": next((x.content for x in messages if x.role == "user"), ""),
            "results": _trailing_results(messages),
            "match": _match_vars(m),
        }
        where = "default" if index is None else f"rules[{index}]"
        try:
            text = _render(answer.text, ctx) if answer.text is not None else ""
            specs = [(c.name, c.arguments) for c in answer.tool_calls]
            specs += [(DELEGATE, {"agent": d.agent, "task": d.task}) for d in answer.delegate]
            rendered = [(_render(name, ctx), _render(args, ctx)) for name, args in specs]
        except jinja2.TemplateError as e:
            raise InvalidArgument(
                f"mock rules file {label}: {where} failed to render for agent {request.agent!r}: {e}"
            ) from e
        key = request.seq if request.seq >= 0 else f"t{request.turn}"
        calls = tuple(
            ToolCall(id=f"call_{key}_{i}", name=name, arguments=args)
            for i, (name, args) in enumerate(rendered)
        )
        if on_delta is not None and rules.stream_chunk_ms is not None:
            await _stream(text, calls, rules.stream_chunk_ms / 1000, on_delta)
        # a rough count (about 4 characters a token), cheap enough to take on every step
        prompt = sum(_tokens(x.content) + CALL_TOKENS * len(x.tool_calls) for x in messages)
        completion = _tokens(text) + sum(_tokens(_call_text(c)) for c in calls)
        usage = Usage(
            prompt_tokens=prompt,
            completion_tokens=completion,
            latency_ms=(time.perf_counter() - t0) * 1000,
        )
        return ModelResponse(text=text, tool_calls=calls, model=request.model, usage=usage)

    @staticmethod
    def _pick(
        label: str, rules: RulesFile, request: ModelRequest, last: Message | None
    ) -> tuple[int | None, Answer, re.Match[str] | bool]:
        for i, rule in enumerate(rules.rules):
            m = rule.matches(request, last)
            if m:
                return i, rule, m
        if rules.default is not None:
            return None, rules.default, False
        said = f"{last.role}: {_clip(last.content)!r}" if last else "no messages"
        raise NoRuleMatched(
            f"mock rules file {label}: no rule matches agent {request.agent!r} at turn {request.turn} "
            f"(last message {said}) and there is no `default`; add a rule or a default answer"
        )


_WORD = re.compile(r"\s*\S+|\s+$")
ARGUMENT_CHUNK = 8


async def _stream(text: str, calls: tuple[ToolCall, ...], delay_s: float, on_delta: OnDelta) -> None:
    """The reply in pieces, as a streaming model sends them: the text a word at a time, then
    each tool call's id and name, then its arguments' JSON in `ARGUMENT_CHUNK`-character pieces."""
    pieces = [ModelDelta(text=w) for w in _WORD.findall(text)]
    for i, c in enumerate(calls):
        pieces.append(ModelDelta(tool=i, id=c.id, name=c.name))
        args = json.dumps(c.arguments, ensure_ascii=False)
        pieces += [
            ModelDelta(tool=i, arguments=args[j : j + ARGUMENT_CHUNK])
            for j in range(0, len(args), ARGUMENT_CHUNK)
        ]
    for piece in pieces:
        await asyncio.sleep(delay_s)
        on_delta(piece)


def _trailing_results(messages: tuple[Message, ...]) -> list[str]:
    out: list[str] = []
    for m in reversed(messages):
        if m.role != "tool":
            break
        out.append(m.content)
    return out[::-1]


def _call_text(call: ToolCall) -> str:
    return f"{call.name} {json.dumps(call.arguments)}"


def _clip(text: str, n: int = 120) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
