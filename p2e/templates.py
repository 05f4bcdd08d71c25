"""The one Jinja environment for every template p2e renders (personas, mock rules, judge prompts,
and the prompts p2e itself sends, kept as files in `p2e/prompts/`).

Templates come from files a user was handed, and they render model output, so they run in Jinja's
sandbox (no dunder attributes, no unsafe callables, `range` capped) with the two operators that
can allocate without bound, `*` and `**`, capped too: a template can fail, but not hang or eat
the machine's memory.
"""

from __future__ import annotations

import operator
from functools import cache
from typing import Any

import jinja2
from jinja2.sandbox import MAX_RANGE, SandboxedEnvironment, SecurityError

MAX_REPEAT = 1_000_000
"""The longest string or list a template may build with `*`."""

MAX_EXPONENT_BITS = 4_096
"""The largest result `**` may produce, in bits, before it is refused."""


class _Bounded(SandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: jinja2.runtime.Context, operator_: str, left: Any, right: Any) -> Any:
        if operator_ == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_REPEAT:
                    raise SecurityError(
                        f"`*` would build {len(seq) * n:,} items; the limit is {MAX_REPEAT:,}"
                    )
            return operator.mul(left, right)
        big = isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0
        if big and right * abs(left).bit_length() > MAX_EXPONENT_BITS:
            raise SecurityError(f"`{left} ** {right}` is too large to compute")
        return operator.pow(left, right)


def _bounded_width(name: str, default_filter: Any) -> Any:
    """`default_filter` with its width argument capped: `'' | center(10**9)` must not allocate 1 GB."""

    def bounded(value: Any, width: Any = 80, *args: Any, **kwargs: Any) -> Any:
        if isinstance(width, int) and width > MAX_REPEAT:
            raise SecurityError(f"`{name}({width:,})` is wider than the limit of {MAX_REPEAT:,}")
        return default_filter(value, width, *args, **kwargs)

    return bounded


def _range(*args: int) -> range:
    """`range`, refused past `MAX_RANGE` items as a template error (the sandbox's own is an
    OverflowError, which callers catching template errors would not see)."""
    rng = range(*args)
    if len(rng) > MAX_RANGE:
        raise SecurityError(f"`range` of {len(rng):,} items; the limit is {MAX_RANGE:,}")
    return rng


def environment(
    loader: jinja2.BaseLoader | None = None, *, keep_trailing_newline: bool = False
) -> jinja2.Environment:
    """A sandboxed environment: undefined names fail loudly, nothing is HTML-escaped."""
    env = _Bounded(
        loader=loader,
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=keep_trailing_newline,
    )
    env.globals["range"] = _range
    for name in ("center", "indent", "wordwrap", "truncate"):
        env.filters[name] = _bounded_width(name, env.filters[name])
    return env


@cache
def prompt(name: str) -> jinja2.Template:
    """A prompt p2e itself sends (`p2e/prompts/<name>.j2`), compiled once."""
    return environment(jinja2.PackageLoader("p2e", "prompts")).get_template(f"{name}.j2")
