"""Built-in tools, registered in `REGISTRY`: calculator, clock, notes, weather (a demo).

They double as examples of the `@tool` idioms: `Annotated[..., Field(...)]` for descriptions and
constraints, a `Literal` for a choice, a `ToolContext` parameter for the store, a pydantic model
as output.
"""

from __future__ import annotations

import ast
import datetime as dt
import hashlib
import math
import operator
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from p2e.redact import redact
from p2e.tools.registry import REGISTRY, ToolContext, tool

# --- calculator ----------------------------------------------------------------------------------

MAX_EXPRESSION_CHARS = 1000
"""Longer input is refused before parsing (it bounds the parse and the evaluator's recursion)."""
MAX_INT_BITS = 10_000
"""Integer results above this (about 3000 digits) are refused: it keeps `**` and `*` from
eating the CPU and memory, and stays under Python's int-to-str digit limit."""

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sqrt": math.sqrt,
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
    "floor": math.floor,
    "ceil": math.ceil,
    "exp": math.exp,
    "log": math.log,
    "log10": math.log10,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
}
_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau}
_ALLOWED = (
    "numbers, + - * / // % **, unary minus, parentheses, the constants "
    + ", ".join(_CONSTANTS)
    + " and the functions "
    + ", ".join(_FUNCTIONS)
)


class CalculatorError(ValueError):
    """An expression the calculator refuses; the message says what is allowed."""


def _check_size(value: Any) -> Any:
    if isinstance(value, complex):  # e.g. (-8) ** 0.5
        raise CalculatorError("the result is not a real number")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise CalculatorError(f"the result is too large (over {MAX_INT_BITS} bits)")
    return value


def _show(n: int) -> str:
    text = str(n)
    return text if len(text) <= 24 else f"({len(text)}-digit number)"


def _power(base: Any, exponent: Any) -> Any:
    """`base ** exponent`, refused before computing when an integer result would be too large."""
    int_power = isinstance(base, int) and isinstance(exponent, int) and abs(base) > 1
    if int_power and (base.bit_length() - 1) * exponent > MAX_INT_BITS:
        raise CalculatorError(f"the exponent {_show(exponent)} is too large for base {_show(base)}")
    return base**exponent


def _eval(node: ast.AST) -> Any:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, int | float) and not isinstance(node.value, bool):
            return node.value
        raise CalculatorError(f"only numbers are allowed, not {node.value!r}")
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            return _check_size(_power(left, right))
        ints = isinstance(left, int) and isinstance(right, int)
        if (
            ints
            and isinstance(node.op, ast.Mult)
            and left.bit_length() + right.bit_length() > MAX_INT_BITS + 1
        ):
            raise CalculatorError(f"the result is too large (over {MAX_INT_BITS} bits)")
        return _check_size(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        raise CalculatorError(f"unknown name {node.id!r}; allowed: {_ALLOWED}")
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
            what = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
            raise CalculatorError(f"unknown function {what!r}; allowed: {_ALLOWED}")
        if node.keywords:
            raise CalculatorError("keyword arguments are not allowed")
        args = [_eval(a) for a in node.args]
        if node.func.id == "round" and len(args) > 1 and isinstance(args[1], int) and abs(args[1]) > 1000:
            raise CalculatorError("round() to more than 1000 digits is not allowed")
        return _check_size(_FUNCTIONS[node.func.id](*args))
    if isinstance(node, ast.Attribute):
        raise CalculatorError(f"attribute access ({ast.unparse(node)}) is not allowed; allowed: {_ALLOWED}")
    raise CalculatorError(f"{type(node).__name__} ({ast.unparse(node)}) is not allowed; allowed: {_ALLOWED}")


def evaluate(expression: str) -> int | float:
    """Evaluate an arithmetic expression safely (no names, attributes or calls beyond the list)."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as e:
        raise CalculatorError(f"not an arithmetic expression ({e.msg}); allowed: {_ALLOWED}") from None
    try:
        return _eval(tree)
    except RecursionError:
        raise CalculatorError("the expression is nested too deeply") from None


@REGISTRY.register
@tool(side_effect_free=True, timeout_s=5.0)
def calculator(
    expression: Annotated[
        str, Field(description="an arithmetic expression, e.g. (2 + 3) * sqrt(16) / 7 or 2**10 % 7")
    ],
) -> str:
    """Evaluate an arithmetic expression and return the result (integers stay exact). Supports
    numbers, + - * / // % **, parentheses, pi, e, and sqrt, abs, round, min, max, floor, ceil, exp,
    log, log10, sin, cos, tan.
    """
    return repr(evaluate(expression))


# --- clock ---------------------------------------------------------------------------------------


@REGISTRY.register
@tool(side_effect_free=True, cacheable=False, inline=True)  # reads only, but its answer changes
def clock() -> str:
    """The current date and time in UTC, ISO-8601 (e.g. 2025-01-31T14:05:09+00:00)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# --- notes ---------------------------------------------------------------------------------------

MAX_NOTE_CHARS = 2000
MAX_NOTES = 500


def notes_key(ctx: ToolContext) -> str:
    """The Redis list holding a conversation's notes (under the conversation's keys, so deleting
    the conversation deletes them). Notes belong to the conversation, not to a branch: rewinding
    a branch does not take a note back."""
    if ctx.store is None:
        raise RuntimeError("notes need the store, and this run has none; run the agent with a store")
    if not ctx.conversation:
        raise RuntimeError("notes need a conversation id in the tool context")
    return ctx.store.keys.notes(ctx.conversation)


@REGISTRY.register
@tool
def notes(
    action: Annotated[
        Literal["add", "list", "clear"],
        Field(description="add a note, list the notes, or clear them all"),
    ],
    ctx: ToolContext,
    text: Annotated[str, Field(description="the note to add (for add)", max_length=MAX_NOTE_CHARS)] = "",
) -> str:
    """A notepad shared by the agents of this conversation: add a note, list them, or clear them.

    Notes last for the whole conversation, so use them to remember facts across turns.
    """
    key = notes_key(ctx)
    store = ctx.store
    assert store is not None
    if action == "add":
        if not text.strip():
            raise ValueError("add needs a non-empty text")
        n = store.push(key, redact(text), MAX_NOTES)  # a model wrote it: no key reaches the store
        if n is None:
            raise ValueError(f"the notepad is full ({MAX_NOTES} notes); clear it first")
        return f"added note {n}"
    if action == "list":
        items = [raw.decode() for raw in store.items(key)]
        if not items:
            return "no notes yet"
        return "\n".join(f"{i}. {item}" for i, item in enumerate(items, 1))
    count = store.clear_list(key)
    return f"cleared {count} note{'' if count == 1 else 's'}"


# --- weather (demo) ------------------------------------------------------------------------------

_CONDITIONS = ("sunny", "partly cloudy", "cloudy", "light rain", "heavy rain", "thunderstorms", "snow", "fog")


class Forecast(BaseModel):
    city: str
    condition: str
    temperature_c: int
    humidity_pct: int
    wind_kph: int
    note: str = "demo data: made up from the city's name, not a real forecast"


@REGISTRY.register
@tool(side_effect_free=True, inline=True)
def weather(
    city: Annotated[str, Field(description="the city name", min_length=1, max_length=100)],
) -> Forecast:
    """Demo tool: a made-up weather forecast for a city, not real data.

    The same city always gets the same forecast (it is derived from a hash of the name), which makes
    it handy for tests and offline demos.
    """
    name = " ".join(city.split())
    digest = hashlib.sha256(name.casefold().encode()).digest()
    condition = _CONDITIONS[digest[0] % len(_CONDITIONS)]
    temperature = digest[1] % 46 - 10  # -10..35
    if condition == "snow":
        temperature = min(temperature, 1)
    return Forecast(
        city=name,
        condition=condition,
        temperature_c=temperature,
        humidity_pct=20 + digest[2] % 76,
        wind_kph=digest[3] % 60,
    )
