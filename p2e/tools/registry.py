"""Tools: typed Python functions that models may call, and the registry that names them.

`@tool` reads a function's signature once, at decoration time, and builds a pydantic model of its
arguments, so the JSON schema the model sees and the validation of what the model sends come from
the same place (the signature) and cannot drift apart. Mistakes in a tool's definition (no type
hint, `*args`, a bad name) fail at import, not in the middle of a conversation.

A parameter annotated `ToolContext` is filled in by the runner (conversation, branch, agent,
store) and never shown to the model.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any, overload

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from p2e.errors import InvalidArgument
from p2e.events import DELEGATE
from p2e.llm.base import ToolSpec

if TYPE_CHECKING:
    from p2e.store.log import EventLog

NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""Tool names: what OpenAI-compatible servers accept as a function name."""

DEFAULT_TIMEOUT_S = 10.0


@dataclasses.dataclass(frozen=True, slots=True)
class ToolContext:
    """Where a call happens, handed to tools that ask for it (a parameter typed `ToolContext`).

    It stays in the process: the store is a live client, so this is a dataclass, not a record.
    `call_id` is set by the runner for each call; a tool can use it as an idempotency key.
    """

    conversation: str
    agent: str
    branch: str = "main"
    store: EventLog | None = None
    call_id: str = ""
    episode: str = ""
    """The rollout episode this call belongs to (`rollout:episode`), the same for every attempt
    at it; empty outside a rollout. Effects are keyed by it, so a retried episode pays once."""
    positions: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Call id -> where the call stands in the conversation (`seq.index`: the reply's seq and
    the call's place in it), the same in every attempt that makes the same reply."""
    wallets: Callable[[str], Any] | None = None
    """Finds the calling agent's Wallet actor where the process runs them (an Agent actor's
    tools: a `p2e.ledger.wallet.WalletFinder`); None: the ledger tools pay through a local
    wallet. (Typed loosely: the tool registry sits below the ledger.)"""


class Tool:
    """A function plus what the runner needs: its argument model, spec, timeout and options.

    Calling the `Tool` calls the function unchanged, so decorated functions stay usable directly.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout_s: float | None = DEFAULT_TIMEOUT_S,
        side_effect_free: bool = False,
        cacheable: bool | None = None,
        inline: bool = False,
    ):
        self.fn = fn
        self.name = name or fn.__name__
        if not NAME_RE.fullmatch(self.name):
            raise InvalidArgument(
                f"tool name {self.name!r} is not allowed: use 1-64 letters, digits, '_' or '-'"
            )
        if timeout_s is not None and timeout_s <= 0:
            raise InvalidArgument(f"tool {self.name!r}: timeout_s must be positive or None, not {timeout_s}")
        self.description = description if description is not None else _first_paragraph(fn)
        self.timeout_s = timeout_s
        self.side_effect_free = side_effect_free
        """Declared by the tool's author: calling it changes nothing anywhere (reads only). The
        default is False, the safe assumption: under the `strict` duplicate-call policy a repeated
        call of a tool with side effects is not run again (`p2e.policies.duplicates`)."""
        self.inline = inline
        """A sync tool that returns in microseconds runs on the event loop, without a thread hop
        (its timeout then cannot interrupt it: only for small, bounded functions)."""
        self.is_async = inspect.iscoroutinefunction(fn)
        self.args_model, self._params, self.context_param = _arguments_model(fn, self.name)
        if cacheable and not side_effect_free:
            raise InvalidArgument(
                f"tool {self.name!r}: cacheable=True needs side_effect_free=True "
                "(a cached call does not run, so its side effects would not happen)"
            )
        self.cacheable = (
            cacheable if cacheable is not None else side_effect_free and self.context_param is None
        )
        """Whether an earlier output for the same arguments may stand in for a call (the
        duplicate-call policy's `cache_ttl_s`). By default: side-effect free tools that do not read
        the `ToolContext` (their output depends on the arguments alone). Pass `cacheable=False`
        for a read whose answer changes by itself, such as `clock`."""
        self._spec: ToolSpec | None = None
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    @property
    def side_effects(self) -> bool:
        """True unless the tool is declared side-effect free."""
        return not self.side_effect_free

    def __repr__(self) -> str:
        return f"<tool {self.name} ({self.fn.__module__}.{self.fn.__qualname__})>"

    @property
    def spec(self) -> ToolSpec:
        """What the model sees: name, description and the JSON schema of the arguments."""
        if self._spec is None:
            schema = _strip_titles(self.args_model.model_json_schema())
            self._spec = ToolSpec(name=self.name, description=self.description, parameters=schema)
        return self._spec

    @property
    def signature_hint(self) -> str:
        """A one-line reminder of the arguments, e.g. `notes(action: 'add'|'list', text: string = '')`,
        appended to argument errors so the model can fix its call without rereading the schema."""
        schema = self.spec.parameters
        required = set(schema.get("required", ()))
        parts = []
        for pname, prop in schema.get("properties", {}).items():
            part = f"{pname}: {_json_type(prop)}"
            if pname not in required and "default" in prop:
                part += f" = {prop['default']!r}"
            parts.append(part)
        return f"{self.name}({', '.join(parts)})"

    def bind(self, arguments: dict[str, Any], ctx: ToolContext | None) -> tuple[list[Any], dict[str, Any]]:
        """Validate the model's arguments; return positional and keyword arguments for the function.

        Raises `pydantic.ValidationError`, which the runner turns into an error the model sees.
        """
        values = self.args_model.model_validate(arguments)
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for param, field, positional in self._params:
            value = ctx if field is None else getattr(values, field)
            if positional:
                args.append(value)
            else:
                kwargs[param] = value
        return args, kwargs


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    side_effect_free: bool = False,
    cacheable: bool | None = None,
    inline: bool = False,
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    side_effect_free: bool = False,
    cacheable: bool | None = None,
    inline: bool = False,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make a typed function (sync or async) a tool: `@tool` or `@tool(name=..., timeout_s=...)`.

    It does not register the tool anywhere (so tests and libraries can define tools freely);
    `Registry.register` does, and works as a decorator on top of this one.
    """

    def make(f: Callable[..., Any]) -> Tool:
        return Tool(
            f,
            name=name,
            description=description,
            timeout_s=timeout_s,
            side_effect_free=side_effect_free,
            cacheable=cacheable,
            inline=inline,
        )

    return make if fn is None else make(fn)


class Registry:
    """Tools by name. Agents see a subset of it, their allowlist, checked at configuration time."""

    def __init__(self, tools: Iterable[Tool] = ()):
        self._tools: dict[str, Tool] = {}
        for t in tools:
            self.register(t)

    def register(self, t: Tool | Callable[..., Any], *, replace: bool = False) -> Tool:
        """Add a tool (a plain function is wrapped with `tool` first); return it, so this also
        works as a decorator. `delegate` is refused: the conversation machine handles it."""
        t = t if isinstance(t, Tool) else tool(t)
        if t.name == DELEGATE:
            raise InvalidArgument(
                f"a tool cannot be named {DELEGATE!r}: the conversation machine handles delegation "
                "itself (list the agents in can_delegate_to instead)"
            )
        old = self._tools.get(t.name)
        if old is not None and old is not t and not replace:
            raise InvalidArgument(
                f"a tool named {t.name!r} is registered already ({old!r}); rename one, or pass replace=True"
            )
        self._tools[t.name] = t
        return t

    def get(self, name: str) -> Tool:
        try:
            return self._tools[name]
        except KeyError:
            raise InvalidArgument(f"unknown tool {name!r}; known tools: {self._known()}") from None

    def names(self) -> list[str]:
        return sorted(self._tools)

    def copy(self) -> Registry:
        """An independent registry with the same tools (to extend the built-ins without touching them)."""
        return Registry(self._tools.values())

    def with_modules(self, modules: Iterable[ModuleType]) -> Registry:
        """A copy that also holds every tool the `modules` define. An agent process registers
        them when it imports its tool modules; a process that imported them before (and whose
        registry may have dropped their tools since) finds them this way."""
        out = self.copy()
        for module in modules:
            for value in vars(module).values():
                if isinstance(value, Tool) and value.name not in out:
                    out.register(value)
        return out

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def check_allowlist(self, agent: str, names: Iterable[str]) -> None:
        """Raise `InvalidArgument` naming the agent and every unknown tool in its allowlist."""
        names = list(names)
        unknown = [n for n in names if n not in self._tools]
        if not unknown:
            return
        listed = ", ".join(repr(n) for n in unknown)
        hint = ""
        if DELEGATE in unknown:
            hint = f"; {DELEGATE!r} is not listed in tools: name the agents in can_delegate_to instead"
        raise InvalidArgument(
            f"agent {agent!r} lists unknown tool{'s' if len(unknown) > 1 else ''} {listed}; "
            f"known tools: {self._known()}{hint}"
        )

    def specs(self, allowed: Iterable[str] | None = None, agent: str = "?") -> list[ToolSpec]:
        """The specs of the allowed tools, in allowlist order (every tool when `allowed` is None)."""
        if allowed is None:
            return [self._tools[n].spec for n in self.names()]
        allowed = list(dict.fromkeys(allowed))
        self.check_allowlist(agent, allowed)
        return [self._tools[n].spec for n in allowed]

    def _known(self) -> str:
        return ", ".join(self.names()) or "(none)"


REGISTRY = Registry()
"""The default registry; `p2e.tools.builtin` registers the built-ins in it on import."""


# --- signature -> argument model ---------------------------------------------------------------


def _first_paragraph(fn: Callable[..., Any]) -> str:
    doc = inspect.getdoc(fn) or ""
    return " ".join(doc.strip().split("\n\n", 1)[0].split())


def _is_context(hint: Any) -> bool:
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    return isinstance(hint, type) and issubclass(hint, ToolContext)


def _arguments_model(
    fn: Callable[..., Any], name: str
) -> tuple[type[BaseModel], list[tuple[str, str | None, bool]], str | None]:
    """The pydantic model of `fn`'s arguments, how to call `fn` from it, and the context parameter.

    Fields get private names (`a0`, `a1`, ...) and the parameter name as alias, so parameters
    called `json`, `copy` or `model_config` do not collide with BaseModel's own attributes; the
    schema and validation errors use the alias, i.e. the real name. Unknown arguments are refused
    (`extra="forbid"`) so a model that misspells one is told, not silently ignored.
    """
    where = f"tool {name!r} ({fn.__module__}.{fn.__qualname__})"
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as e:
        raise InvalidArgument(
            f"{where}: cannot resolve its type hints ({e.__class__.__name__}: {e}); "
            "types used in a tool's signature must be importable from its module"
        ) from e
    fields: dict[str, Any] = {}
    params: list[tuple[str, str | None, bool]] = []
    context_param: str | None = None
    for i, p in enumerate(inspect.signature(fn).parameters.values()):
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise InvalidArgument(f"{where}: *args and **kwargs cannot be described to a model; name them")
        positional = p.kind is p.POSITIONAL_ONLY
        if p.name not in hints:
            raise InvalidArgument(f"{where}: parameter {p.name!r} needs a type hint (it makes the schema)")
        hint = hints[p.name]
        if _is_context(hint):
            if context_param is not None:
                raise InvalidArgument(f"{where}: only one parameter can take the ToolContext")
            context_param = p.name
            params.append((p.name, None, positional))
            continue
        default = p.default
        if isinstance(default, FieldInfo):  # `x: int = Field(3, description=...)`
            hint, default = typing.Annotated[hint, default], PydanticUndefined
        elif default is p.empty:
            default = PydanticUndefined
        field = f"a{i}"
        fields[field] = (hint, Field(default=default, alias=p.name))
        params.append((p.name, field, positional))
    model_name = "".join(part.capitalize() for part in re.split(r"[_-]", name)) + "Arguments"
    try:
        model = create_model(model_name, __config__=ConfigDict(extra="forbid"), **fields)
        model.model_json_schema()  # fail here, not at the first call, on a type without a schema
    except Exception as e:
        raise InvalidArgument(
            f"{where}: its arguments cannot be described ({e.__class__.__name__}: {e})"
        ) from e
    return model, params, context_param


_VALUE_KEYS = frozenset({"default", "const", "enum", "examples"})
_MAP_KEYS = frozenset({"properties", "$defs", "definitions", "patternProperties"})


def _strip_titles(schema: Any) -> Any:
    """Drop the `title` keywords pydantic adds (noise in a prompt), keeping properties named title."""
    if isinstance(schema, list):
        return [_strip_titles(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for k, v in schema.items():
        if k == "title" and isinstance(v, str):
            continue
        if k in _MAP_KEYS and isinstance(v, dict):
            out[k] = {name: _strip_titles(sub) for name, sub in v.items()}
        elif k in _VALUE_KEYS:
            out[k] = v
        else:
            out[k] = _strip_titles(v)
    return out


def _json_type(prop: dict[str, Any]) -> str:
    if "enum" in prop:
        return "|".join(repr(v) for v in prop["enum"])
    if "const" in prop:
        return repr(prop["const"])
    if "anyOf" in prop:
        return "|".join(_json_type(p) for p in prop["anyOf"])
    if "$ref" in prop:
        return "object"
    t = prop.get("type", "any")
    if t == "array" and isinstance(prop.get("items"), dict):
        return f"array of {_json_type(prop['items'])}"
    return t if isinstance(t, str) else "|".join(t)
