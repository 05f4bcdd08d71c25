"""Evaluators: the protocol, the `@evaluator` decorator, and the registry that names them.

An evaluator is declared once (a function or a class, decorated with an id and a version) and
created many times with parameters (`registry.create("regex", pattern=...)`). Parameters are
checked against the signature when the evaluator is created, so a typo in a config fails at
startup, not on the thousandth step.

What a declared evaluator may return: a `Score`, a `Verdict` (value, sub-metrics, rationale,
usage), a float or a bool. It may raise `EvalFailed` (or anything else): the created evaluator
always turns the outcome into a `Score`, an error score with the reason when something went
wrong or when the value is outside [0, 1]. So callers (the evaluator actors) never need a
try/except to keep a failing evaluator from looking like a 0.

Custom evaluators live in user modules, found by module path (`Registry.load_module`) or through
the entry-point group `p2e.evaluators` (`Registry.load_entry_points`).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import math
import re
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from p2e.errors import InvalidArgument, P2EError, log_failure, one_line
from p2e.evals.score import Score, Target, params_digest
from p2e.events import AgentReply, Event, Started, Usage, UserMessage

if TYPE_CHECKING:
    from p2e.llm.registry import Providers

log = logging.getLogger("p2e.evals")
ENTRY_POINT_GROUP = "p2e.evaluators"
ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_MARK = "__p2e_evaluator__"


class UnknownEvaluator(InvalidArgument):
    def __init__(self, evaluator_id: str, known: Iterable[str]):
        names = ", ".join(sorted(known)) or "(none)"
        super().__init__(f"unknown evaluator {evaluator_id!r}; known evaluators: {names}")
        self.evaluator_id = evaluator_id


class EvalFailed(P2EError):
    """Raised by an evaluator that cannot score its target; becomes an error score with `reason`.

    `usage` keeps what the attempt cost (a judge that never gave valid output still spent tokens).
    """

    def __init__(self, reason: str, *, usage: Usage | None = None):
        super().__init__(reason)
        self.reason, self.usage = reason, usage


class Verdict(BaseModel):
    """What an evaluator found, without the bookkeeping (id, version, target) that a Score adds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    value: float
    metrics: dict[str, float] = Field(default_factory=dict)
    rationale: str = ""
    usage: Usage | None = None


@dataclass(frozen=True)
class EvalContext:
    """What an evaluator sees: the branch's events up to the target, the target, the reference.

    `events` end at the target (its seq included) for a step, and hold the whole branch for an
    episode; `EvalContext.for_target` cuts a history that way. `providers` serve model judges.
    """

    events: Sequence[Event]
    target: Target
    reference: str | None = None
    providers: Providers | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def for_target(cls, history: Sequence[Event], target: Target, **kwargs: Any) -> EvalContext:
        """A context over `history` (a branch's events, seqs set) cut at the target."""
        if target.seq is not None:
            seq = target.seq
            if seq < len(history) and history[seq].seq in (seq, None):  # a whole branch read from 0
                history = history[: seq + 1]
            else:
                history = [e for i, e in enumerate(history) if (e.seq if e.seq is not None else i) <= seq]
        return cls(events=list(history), target=target, **kwargs)

    @property
    def root(self) -> str | None:
        """The root agent, from the Started event."""
        return next((e.root for e in self.events if isinstance(e, Started)), None)

    @property
    def task(self) -> str:
        """The first user message: what the conversation was asked to do."""
        return next((e.text for e in self.events if isinstance(e, UserMessage)), "")

    def step(self) -> Event | None:
        """The target event of a step target (None for an episode target)."""
        if self.target.seq is None:
            return None
        if self.events and self.events[-1].seq == self.target.seq:  # the usual cut: it is the last
            return self.events[-1]
        for i, e in enumerate(self.events):
            if (e.seq if e.seq is not None else i) == self.target.seq:
                return e
        raise EvalFailed(f"the events given hold no event at seq {self.target.seq} (target {self.target})")

    def final_answer(self) -> AgentReply | None:
        """The root agent's last reply without tool calls: its answer to the user."""
        root = self.root
        for e in reversed(self.events):
            if isinstance(e, AgentReply) and e.agent == root and not e.tool_calls:
                return e
        return None

    def answer(self) -> AgentReply | None:
        """The reply an answer-checking evaluator judges: a step target's own reply, or for an
        episode the root's final answer."""
        if self.target.seq is not None:
            step = self.step()
            return step if isinstance(step, AgentReply) else None
        return self.final_answer()

    def replies(self) -> list[AgentReply]:
        """The target's replies: the step itself, or every reply of the episode."""
        if self.target.seq is not None:
            step = self.step()
            return [step] if isinstance(step, AgentReply) else []
        return [e for e in self.events if isinstance(e, AgentReply)]


@runtime_checkable
class Evaluator(Protocol):
    """A created evaluator: scores one target per call and never raises for a bad outcome."""

    id: str
    version: str

    async def evaluate(self, ctx: EvalContext) -> Score: ...


@dataclass(frozen=True)
class EvaluatorDef:
    """A declared evaluator: id, version and the function or class that implements it."""

    id: str
    version: str
    impl: Callable[..., Any]
    description: str = ""

    @property
    def is_class(self) -> bool:
        return inspect.isclass(self.impl)

    def create(self, **params: Any) -> BoundEvaluator:
        """The evaluator with these parameters, checked against the signature now."""
        if self.is_class:
            checked = _check_params(self, self.impl.__init__, params, skip=1)
            try:
                instance = self.impl(**checked)
            except P2EError:
                raise
            except (TypeError, ValueError) as e:
                raise InvalidArgument(f"evaluator {self.id!r}: {e}") from None
            return BoundEvaluator(self, checked, instance.evaluate)
        checked = _check_params(self, self.impl, params, skip=1)
        impl = self.impl
        return BoundEvaluator(self, checked, lambda ctx: impl(ctx, **checked))

    def parameters(self) -> list[str]:
        fn = self.impl.__init__ if self.is_class else self.impl
        return list(inspect.signature(fn).parameters)[1:]


class BoundEvaluator:
    """An `Evaluator`: a declared evaluator with its parameters, turning every outcome into a Score."""

    def __init__(self, definition: EvaluatorDef, params: dict[str, Any], call: Callable[[EvalContext], Any]):
        self.definition, self.params, self._call = definition, params, call
        self.id, self.version = definition.id, definition.version
        self.params_digest = params_digest(params)
        """Stamped on every score it gives: with the version, what makes a stored score current."""

    def is_current(self, score: Score | None) -> bool:
        """Whether `score` is a done score of this evaluator's version and parameters (so
        scoring the target again would tell nothing new)."""
        return (
            score is not None
            and score.status == "done"
            and score.evaluator == self.id
            and score.version == self.version
            and score.params_digest == self.params_digest
        )

    def pending(self, target: Target) -> Score:
        """A pending score of this evaluator (version and parameters) on `target`."""
        return Score.pending(self.id, self.version, target, params_digest=self.params_digest)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"<evaluator {self.id} v{self.version}({args})>"

    async def evaluate(self, ctx: EvalContext) -> Score:
        score = await self._evaluate(ctx)
        return (
            score
            if score.params_digest == self.params_digest
            else score.model_copy(update={"params_digest": self.params_digest})
        )

    async def _evaluate(self, ctx: EvalContext) -> Score:
        target = ctx.target
        try:
            out = self._call(ctx)
            if inspect.isawaitable(out):
                out = await out
            return self._score(out, target)
        except EvalFailed as e:
            return Score.failed(self.id, self.version, target, e.reason, usage=e.usage)
        except ValidationError as e:
            reason = f"evaluator {self.id!r}: invalid score: {one_line(e)}"
            return Score.failed(self.id, self.version, target, reason)
        except Exception as e:
            log_failure(log, f"evaluator {self.id} on {target}", e)
            return Score.failed(self.id, self.version, target, f"evaluator {self.id!r} raised {one_line(e)}")

    def _score(self, out: Any, target: Target) -> Score:
        if isinstance(out, Score):
            return out
        if isinstance(out, bool):
            out = Verdict(value=1.0 if out else 0.0)
        elif isinstance(out, int | float):
            out = Verdict(value=float(out))
        if not isinstance(out, Verdict):
            raise EvalFailed(
                f"evaluator {self.id!r} returned {type(out).__name__}; "
                "return a float, a bool, a Verdict or a Score"
            )
        if not (math.isfinite(out.value) and 0.0 <= out.value <= 1.0):
            raise EvalFailed(
                f"evaluator {self.id!r} returned value {out.value!r}, outside [0, 1]", usage=out.usage
            )
        return Score.done(
            self.id,
            self.version,
            target,
            out.value,
            metrics=dict(out.metrics),
            rationale=out.rationale,
            usage=out.usage,
        )


def evaluator(*, id: str, version: str | int = "1", description: str = "") -> Callable[[Any], Any]:
    """Declare a function `f(ctx, **params)` or a class (`Cls(**params).evaluate(ctx)`) an evaluator.

    The function or class is returned unchanged (still usable directly), marked so that
    `Registry.register` and `Registry.load_module` find it. Nothing is registered globally:
    a registry decides what is in it.
    """
    if not ID_RE.fullmatch(id):
        raise InvalidArgument(
            f"evaluator id {id!r} is not valid: use letters, digits, '.', '_', ':' or '-' (at most 64)"
        )

    def mark(obj: Any) -> Any:
        if inspect.isclass(obj):
            if not callable(getattr(obj, "evaluate", None)):
                raise InvalidArgument(f"evaluator class {obj.__name__} needs an `evaluate(self, ctx)` method")
        elif not callable(obj):
            raise InvalidArgument(f"@evaluator decorates a function or a class, not {type(obj).__name__}")
        doc = description or (inspect.getdoc(obj) or "").split("\n\n", 1)[0].strip()
        setattr(obj, _MARK, EvaluatorDef(id=id, version=str(version), impl=obj, description=doc))
        return obj

    return mark


def definition_of(obj: Any) -> EvaluatorDef | None:
    """The declaration behind a decorated function or class (None when it is not one)."""
    if isinstance(obj, EvaluatorDef):
        return obj
    d = getattr(obj, _MARK, None) if inspect.isclass(obj) or inspect.isroutine(obj) else None
    # a subclass of a decorated class inherits the mark; it only counts on the class it names
    return d if isinstance(d, EvaluatorDef) and d.impl is obj else None


class Registry:
    """Evaluators by id. Ids are unique: registering another evaluator under a taken id is an error."""

    def __init__(self, evaluators: Iterable[Any] = ()):
        self._defs: dict[str, EvaluatorDef] = {}
        for e in evaluators:
            self.register(e)

    def register(self, obj: Any, *, replace: bool = False) -> Any:
        """Add a decorated function or class (returned unchanged, so this works as a decorator)."""
        d = definition_of(obj)
        if d is None:
            raise InvalidArgument(
                f"{obj!r} is not an evaluator: decorate it with @evaluator(id=..., version=...)"
            )
        old = self._defs.get(d.id)
        if old is not None and old.impl is not d.impl and not replace:
            raise InvalidArgument(
                f"an evaluator with id {d.id!r} is registered already ({_where(old.impl)}); "
                f"{_where(d.impl)} uses the same id: rename one, or pass replace=True"
            )
        self._defs[d.id] = d
        return obj

    def get(self, evaluator_id: str) -> EvaluatorDef:
        try:
            return self._defs[evaluator_id]
        except KeyError:
            raise UnknownEvaluator(evaluator_id, self._defs) from None

    def create(self, evaluator_id: str, **params: Any) -> BoundEvaluator:
        """The evaluator `evaluator_id` with these parameters (checked now)."""
        return self.get(evaluator_id).create(**params)

    def ids(self) -> list[str]:
        return sorted(self._defs)

    def copy(self) -> Registry:
        """An independent registry with the same evaluators (to add custom ones to the built-ins)."""
        r = Registry()
        r._defs = dict(self._defs)
        return r

    def __contains__(self, evaluator_id: object) -> bool:
        return evaluator_id in self._defs

    def __iter__(self) -> Iterator[EvaluatorDef]:
        return iter(self._defs.values())

    def __len__(self) -> int:
        return len(self._defs)

    def load_module(self, name: str, *, replace: bool = False) -> list[str]:
        """Import a module by path (`pkg.mod`) and register the evaluators it defines; their ids."""
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            missing = f" (module {e.name!r} is missing)" if e.name and e.name != name else ""
            raise InvalidArgument(
                f"cannot import evaluator module {name!r}{missing}: {e}; "
                "check the module path and that its directory is on PYTHONPATH"
            ) from None
        except Exception as e:
            raise InvalidArgument(
                f"evaluator module {name!r} fails on import: {type(e).__name__}: {e}"
            ) from e
        return self._register_module(module, name, replace=replace)

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP, *, replace: bool = False) -> list[str]:
        """Register the evaluators that installed packages declare in the entry-point group.

        An entry point names a decorated function or class (`pkg.mod:fn`) or a module (`pkg.mod`),
        whose evaluators are all registered.
        """
        ids: list[str] = []
        for ep in metadata.entry_points(group=group):
            try:
                obj = ep.load()
            except Exception as e:
                raise InvalidArgument(
                    f"entry point {ep.name!r} ({ep.value}) in group {group!r} fails to load: "
                    f"{type(e).__name__}: {e}"
                ) from e
            if isinstance(obj, types.ModuleType):
                ids += self._register_module(obj, ep.value, replace=replace)
            elif (d := definition_of(obj)) is not None:
                self.register(obj, replace=replace)
                ids.append(d.id)
            else:
                raise InvalidArgument(
                    f"entry point {ep.name!r} ({ep.value}) in group {group!r} names neither a module "
                    "nor an @evaluator function or class"
                )
        return ids

    def _register_module(self, module: types.ModuleType, name: str, *, replace: bool) -> list[str]:
        found = [
            obj
            for obj in vars(module).values()
            if definition_of(obj) is not None and getattr(obj, "__module__", None) == module.__name__
        ]
        if not found:
            raise InvalidArgument(
                f"evaluator module {name!r} defines no evaluators; "
                "decorate functions or classes in it with @evaluator(id=..., version=...)"
            )
        for obj in found:
            self.register(obj, replace=replace)
        return [d.id for d in map(definition_of, found) if d is not None]


def _where(impl: Any) -> str:
    return f"{getattr(impl, '__module__', '?')}.{getattr(impl, '__qualname__', repr(impl))}"


def _check_params(
    d: EvaluatorDef, fn: Callable[..., Any], params: dict[str, Any], skip: int
) -> dict[str, Any]:
    """Bind `params` to `fn`'s signature (after `skip` leading parameters) and validate their types."""
    sig = inspect.signature(fn)
    names = list(sig.parameters)[skip:]
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    unknown = [k for k in params if k not in names and not takes_any]
    shown = [n for n in names if sig.parameters[n].kind is not inspect.Parameter.VAR_KEYWORD]
    if unknown:
        raise InvalidArgument(
            f"evaluator {d.id!r} has no parameter {', '.join(map(repr, unknown))}; "
            f"its parameters: {', '.join(shown) or '(none)'}"
        )
    missing = [
        n
        for n in names
        if sig.parameters[n].default is inspect.Parameter.empty
        and sig.parameters[n].kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
        and n not in params
    ]
    if missing:
        raise InvalidArgument(f"evaluator {d.id!r} needs parameter {', '.join(map(repr, missing))}")
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception:
        hints = {}
    out = {}
    for k, v in params.items():
        hint = hints.get(k)
        if hint is None:
            out[k] = v
            continue
        try:
            out[k] = TypeAdapter(hint).validate_python(v)
        except ValidationError as e:
            problem = "; ".join(err["msg"] for err in e.errors())
            raise InvalidArgument(f"evaluator {d.id!r}: parameter {k!r}: {problem} (got {v!r})") from None
    return out
