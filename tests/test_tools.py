"""Tests of p2e.tools: schemas from signatures, the registry, the runner, and the built-ins.

The runner's promise is that no model output can make it raise, so most tests send it something
broken and read the error text the model would see. Tools here are real functions; the notes
tests run against the real store (the `log` fixture).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import threading
import time
from typing import Annotated, Any, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from p2e.errors import InvalidArgument
from p2e.events import DELEGATE, ToolCall, ToolResult
from p2e.store import EventLog
from p2e.tools import REGISTRY, Registry, Tool, ToolContext, run_call, run_calls, tool
from p2e.tools.builtin import MAX_EXPRESSION_CHARS, evaluate

CTX = ToolContext(conversation="conv1", agent="alice")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def call(
    name: str, arguments: dict[str, Any] | None = None, *, id: str = "call-1", invalid: str | None = None
):
    return ToolCall(id=id, name=name, arguments=arguments or {}, invalid_arguments=invalid)


# --- tools used by the tests (module level, so their type hints resolve) ----------------------------


class Point(BaseModel):
    x: float
    y: float = 0.0


@tool
def search(
    query: Annotated[str, Field(description="what to look for", min_length=1)],
    ctx: ToolContext,
    limit: Annotated[int, Field(description="most results", ge=1, le=50)] = 10,
    mode: Literal["fast", "exact"] = "fast",
    tags: list[str] | None = None,
    ratio: float = 0.5,
) -> dict[str, Any]:
    """Search the documents.

    This second paragraph is for humans only.
    """
    return {"query": query, "limit": limit, "mode": mode, "tags": tags, "ratio": ratio, "agent": ctx.agent}


@tool(name="shadowing-names", description="explicit description", timeout_s=1.0, side_effect_free=True)
def shadowing(json: int, title: str = "t", model_config: bool = False, copy: int = Field(2, ge=0)) -> str:
    """Not used: the description is given."""
    return f"{json} {title} {model_config} {copy}"


@tool
def distance(p: Point, q: Point | None = None) -> float:
    """Distance of two points (q defaults to the origin)."""
    q = q or Point(x=0.0)
    return ((p.x - q.x) ** 2 + (p.y - q.y) ** 2) ** 0.5


@tool
def positional(a: int, /, b: int = 1) -> int:
    return a - b


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
async def async_add(a: int, b: int) -> int:
    """Add two integers, asynchronously."""
    await asyncio.sleep(0)
    return a + b


@tool
def boom(message: str) -> str:
    raise KeyError(message)


@tool
async def async_boom() -> str:
    raise ValueError("async tool broke")


@tool
def inner_timeout() -> str:
    raise TimeoutError("the upstream API did not answer")


CUT: list[str] = []
"""The slow tools that were still running when the runner gave up on them."""


@tool(timeout_s=0.2)
async def slow_async() -> str:
    try:
        await asyncio.sleep(5)
    except asyncio.CancelledError:
        CUT.append("slow_async")
        raise
    return "too late"


RELEASE = threading.Event()


@tool(timeout_s=0.2)
def slow_sync() -> str:
    if not RELEASE.wait(5):  # the runner's timeout did not answer first
        return "too late"
    CUT.append("slow_sync")
    return "released"


@tool
def whoami(ctx: ToolContext) -> dict[str, str]:
    return {"conversation": ctx.conversation, "branch": ctx.branch, "agent": ctx.agent, "call": ctx.call_id}


@tool
def returns_model() -> Point:
    return Point(x=1.5, y=-2)


@tool
def returns_none() -> None:
    return None


@tool
def returns_object() -> object:
    return object()


class Meeting:
    """Tool calls that can only all finish if they all run at once: each arrives, then waits (5 s
    at most) until `size` calls have arrived; then `first` leaves before the others. A runner that
    runs the calls one by one, or blocks its event loop on a sync tool, leaves a call alone."""

    def __init__(self, size: int, first: str) -> None:
        self.size, self.first = size, first
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.arrived = 0
        self.left: list[str] = []
        self.full = threading.Event()
        self.first_left = threading.Event()

    def arrive(self) -> None:
        with self.lock:
            self.arrived += 1
            if self.arrived == self.size:
                self.full.set()

    def ready(self, label: str) -> bool:
        return self.full.is_set() and (label == self.first or self.first_left.is_set())

    def leave(self, label: str) -> str:
        with self.lock:
            self.left.append(label)
        if label == self.first:
            self.first_left.set()
        return label if self.ready(label) else f"{label} ran alone"


MEETING = Meeting(size=4, first="a2")


@tool
def meet_sync(label: str) -> str:
    MEETING.arrive()
    if MEETING.full.wait(5) and label != MEETING.first:
        MEETING.first_left.wait(5)
    return MEETING.leave(label)


@tool
async def meet_async(label: str) -> str:
    MEETING.arrive()
    deadline = time.monotonic() + 5
    while not MEETING.ready(label) and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    return MEETING.leave(label)


LOOP_RAN = threading.Event()
"""Set by a coroutine of the caller's event loop while `waits_for_the_loop` runs."""
TOOL_STARTED = threading.Event()


@tool
def waits_for_the_loop() -> str:
    TOOL_STARTED.set()
    return "the event loop ran" if LOOP_RAN.wait(5) else "the event loop was blocked"


REG = Registry(
    [
        search,
        shadowing,
        distance,
        positional,
        add,
        async_add,
        boom,
        async_boom,
        inner_timeout,
        slow_async,
        slow_sync,
        whoami,
        returns_model,
        returns_none,
        returns_object,
        meet_sync,
        meet_async,
        waits_for_the_loop,
    ]
)
ALL = REG.names()


def has_key(obj: Any, key: str) -> bool:
    if isinstance(obj, dict):
        return any((k == key and isinstance(v, str)) or has_key(v, key) for k, v in obj.items())
    if isinstance(obj, list):
        return any(has_key(v, key) for v in obj)
    return False


# --- schemas ------------------------------------------------------------------------------------


def test_schema_from_signature() -> None:
    spec = search.spec
    assert spec.name == "search"
    assert spec.description == "Search the documents."
    params = spec.parameters
    assert params["type"] == "object"
    assert params["additionalProperties"] is False
    assert params["required"] == ["query"]
    props = params["properties"]
    assert list(props) == ["query", "limit", "mode", "tags", "ratio"]  # ctx is injected, not shown
    assert props["query"] == {"type": "string", "description": "what to look for", "minLength": 1}
    assert props["limit"] == {
        "type": "integer",
        "description": "most results",
        "minimum": 1,
        "maximum": 50,
        "default": 10,
    }
    assert props["mode"] == {"type": "string", "enum": ["fast", "exact"], "default": "fast"}
    assert props["tags"]["default"] is None
    assert {"type": "array", "items": {"type": "string"}} in props["tags"]["anyOf"]
    assert props["ratio"] == {"type": "number", "default": 0.5}
    assert not has_key(params, "title")
    assert search.context_param == "ctx"
    assert search.signature_hint == (
        "search(query: string, limit: integer = 10, mode: 'fast'|'exact' = 'fast', "
        "tags: array of string|null = None, ratio: number = 0.5)"
    )


def test_schema_options_and_awkward_names() -> None:
    spec = shadowing.spec
    assert spec.name == "shadowing-names"
    assert spec.description == "explicit description"
    assert shadowing.timeout_s == 1.0 and shadowing.side_effect_free
    props = spec.parameters["properties"]
    assert list(props) == ["json", "title", "model_config", "copy"]  # real names, not the field ones
    assert props["title"] == {"type": "string", "default": "t"}  # a property named title survives
    assert props["copy"] == {"type": "integer", "minimum": 0, "default": 2}
    assert spec.parameters["required"] == ["json"]
    assert add.timeout_s == 10.0 and not add.side_effect_free
    assert positional.spec.description == ""


def test_schema_nested_models() -> None:
    params = distance.spec.parameters
    assert params["properties"]["p"] == {"$ref": "#/$defs/Point"}
    assert params["$defs"]["Point"]["properties"] == {
        "x": {"type": "number"},
        "y": {"type": "number", "default": 0.0},
    }
    assert not has_key(params, "title")


def test_decorated_function_stays_callable() -> None:
    assert isinstance(add, Tool)
    assert add(2, 3) == 5
    assert add.__name__ == "add" and add.__doc__ == "Add two integers."
    assert run(async_add(1, 1)) == 2
    assert async_add.is_async and not add.is_async


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("def f(x): pass", "parameter 'x' needs a type hint"),
        ("def f(*xs: int): pass", "*args and **kwargs"),
        ("def f(**kw: int): pass", "*args and **kwargs"),
        ("def f(a: ToolContext, b: ToolContext): pass", "only one parameter can take the ToolContext"),
        ("def f(a: 'NoSuchType'): pass", "cannot resolve its type hints"),
    ],
)
def test_bad_tool_definitions_fail_at_decoration(source: str, message: str) -> None:
    namespace: dict[str, Any] = {"ToolContext": ToolContext}
    exec(source, namespace)
    with pytest.raises(InvalidArgument, match=message.replace("*", r"\*")):
        tool(namespace["f"])


def test_bad_tool_options() -> None:
    with pytest.raises(InvalidArgument, match="tool name 'has space' is not allowed"):
        tool(name="has space")(add.fn)
    with pytest.raises(InvalidArgument, match="timeout_s must be positive"):
        tool(timeout_s=0)(add.fn)


# --- registry -----------------------------------------------------------------------------------


def test_registry_basics() -> None:
    reg = Registry([add])
    assert reg.names() == ["add"] and "add" in reg and len(reg) == 1
    assert reg.get("add") is add
    assert reg.register(add) is add  # registering the same tool again is harmless
    with pytest.raises(InvalidArgument, match="a tool named 'add' is registered already"):
        reg.register(tool(name="add")(async_add.fn))
    replacement = reg.register(tool(name="add")(async_add.fn), replace=True)
    assert reg.get("add") is replacement

    def plain(n: int) -> int:
        """A plain function is wrapped."""
        return n

    assert isinstance(reg.register(plain), Tool) and reg.get("plain").spec.description.startswith("A plain")
    with pytest.raises(InvalidArgument, match=r"unknown tool 'nope'; known tools: add, plain"):
        reg.get("nope")


def test_registry_refuses_delegate() -> None:
    @tool(name=DELEGATE)
    def fake(agent: str, task: str) -> str:
        return ""

    with pytest.raises(InvalidArgument, match=r"cannot be named 'delegate'.*can_delegate_to"):
        Registry().register(fake)


def test_allowlist_checked_at_configuration() -> None:
    REG.check_allowlist("alice", ["add", "search"])  # fine
    with pytest.raises(InvalidArgument) as e:
        REG.check_allowlist("alice", ["add", "serch", "calculator"])
    msg = str(e.value)
    assert "agent 'alice' lists unknown tools 'serch', 'calculator'" in msg
    assert "known tools: add, async_add, async_boom" in msg
    with pytest.raises(InvalidArgument, match="name the agents in can_delegate_to"):
        REG.check_allowlist("bob", [DELEGATE])


def test_specs_follow_the_allowlist() -> None:
    assert [s.name for s in REG.specs(["whoami", "add", "whoami"])] == ["whoami", "add"]
    assert REG.specs([]) == []
    assert [s.name for s in REG.specs()] == ALL
    with pytest.raises(InvalidArgument, match="agent 'carol' lists unknown tool 'x'"):
        REG.specs(["x"], agent="carol")


def test_default_registry_holds_the_builtins() -> None:
    assert REGISTRY.names() == ["calculator", "clock", "notes", "weather"]
    mine = REGISTRY.copy()
    mine.register(add)
    assert "add" in mine and "add" not in REGISTRY
    notes_props = REGISTRY.get("notes").spec.parameters["properties"]
    assert list(notes_props) == ["action", "text"]  # the context is not shown
    assert "demo" in REGISTRY.get("weather").spec.description.lower()
    assert REGISTRY.get("clock").side_effect_free and not REGISTRY.get("notes").side_effect_free


# --- running calls ------------------------------------------------------------------------------


def ok(result: ToolResult) -> str:
    assert not result.is_error, result.output
    return result.output


def err(result: ToolResult) -> str:
    assert result.is_error, result.output
    return result.output


def test_sync_and_async_tools() -> None:
    r = run(run_call(REG, call("add", {"a": 2, "b": 40}, id="x7"), CTX, ALL))
    assert r == ToolResult(agent="alice", call_id="x7", name="add", output="42", ts=r.ts)
    assert ok(run(run_call(REG, call("async_add", {"a": "2", "b": 3}), CTX, ALL))) == "5"  # lax: "2" -> 2
    assert ok(run(run_call(REG, call("positional", {"a": 5, "b": 2}), CTX, ALL))) == "3"


def test_outputs_are_encoded() -> None:
    out = ok(run(run_call(REG, call("search", {"query": "q", "tags": ["a"]}), CTX, ALL)))
    assert out == '{"query":"q","limit":10,"mode":"fast","tags":["a"],"ratio":0.5,"agent":"alice"}'
    assert ok(run(run_call(REG, call("returns_model"), CTX, ALL))) == '{"x":1.5,"y":-2.0}'
    assert ok(run(run_call(REG, call("returns_none"), CTX, ALL))) == "null"
    assert ok(run(run_call(REG, call("distance", {"p": {"x": 3, "y": 4}}), CTX, ALL))) == "5.0"
    out = err(run(run_call(REG, call("returns_object"), CTX, ALL)))
    assert out.startswith("returns_object returned a value that cannot be shown (object)")


def test_context_is_injected_per_call() -> None:
    ctx = ToolContext(conversation="c9", agent="bob", branch="alt")
    out = ok(run(run_call(REG, call("whoami", id="call-77"), ctx, ALL)))
    assert out == '{"conversation":"c9","branch":"alt","agent":"bob","call":"call-77"}'
    # a model cannot smuggle a context in: it is not an argument
    out = err(run(run_call(REG, call("whoami", {"ctx": {"agent": "root"}}), ctx, ALL)))
    assert out == "invalid arguments for whoami: ctx: unexpected argument; expected whoami()"


def test_unknown_tool() -> None:
    r = run(run_call(REG, call("serch", {"query": "x"}), CTX, ["search", "add", "missing"]))
    assert r.is_error and r.name == "serch" and r.call_id == "call-1" and r.agent == "alice"
    assert r.output == "unknown tool 'serch'; the tools you can call: add, search"


def test_tool_outside_the_allowlist() -> None:
    out = err(run(run_call(REG, call("boom", {"message": "x"}), CTX, ["add"])))
    assert out == "tool 'boom' is not available to agent 'alice'; the tools you can call: add"
    out = err(run(run_call(REG, call("add", {"a": 1, "b": 2}), CTX, [])))
    assert out.endswith("the tools you can call: (none)")


def test_delegate_is_not_run_as_a_tool() -> None:
    out = err(run(run_call(REG, call(DELEGATE, {"agent": "x", "task": "y"}), CTX, ALL)))
    assert "handled by the conversation" in out


def test_arguments_that_are_not_json() -> None:
    out = err(run(run_call(REG, call("add", invalid='{"a": 1, "b": '), CTX, ALL)))
    assert out == (
        'the arguments of add must be a JSON object, got: \'{"a": 1, "b": \'; '
        "expected add(a: integer, b: integer)"
    )
    out = err(run(run_call(REG, call("add", invalid="x" * 5000), CTX, ALL)))
    assert "x" * 200 + "... (4800 more chars)" in out and len(out) < 400


def test_arguments_that_fail_the_schema() -> None:
    out = err(run(run_call(REG, call("search", {"limit": 0, "mode": "slow", "colour": "red"}), CTX, ALL)))
    assert "\n" not in out
    assert out == (
        "invalid arguments for search: query: required; "
        "limit: Input should be greater than or equal to 1 (got 0); "
        "mode: Input should be 'fast' or 'exact' (got 'slow'); "
        "colour: unexpected argument; "
        "expected search(query: string, limit: integer = 10, mode: 'fast'|'exact' = 'fast', "
        "tags: array of string|null = None, ratio: number = 0.5)"
    )
    out = err(run(run_call(REG, call("add", {"a": "two", "b": 1.5}), CTX, ALL)))
    assert "a: Input should be a valid integer, unable to parse string as an integer (got 'two')" in out
    assert "b: Input should be a valid integer, got a number with a fractional part (got 1.5)" in out
    out = err(run(run_call(REG, call("distance", {"p": {"y": 1}}), CTX, ALL)))
    assert out.startswith("invalid arguments for distance: p.x: required;")
    out = err(run(run_call(REG, call("shadowing-names", {"json": "x" * 500}), CTX, ALL)))
    assert "json: Input should be a valid integer" in out and len(out) < 400


def test_tool_that_raises() -> None:
    assert err(run(run_call(REG, call("boom", {"message": "no such key"}), CTX, ALL))) == (
        "boom failed: KeyError: 'no such key'"
    )
    assert err(run(run_call(REG, call("async_boom"), CTX, ALL))) == (
        "async_boom failed: ValueError: async tool broke"
    )
    # a TimeoutError raised by the tool itself is a failure, not the runner's timeout
    assert err(run(run_call(REG, call("inner_timeout"), CTX, ALL))) == (
        "inner_timeout failed: TimeoutError: the upstream API did not answer"
    )


def test_timeouts() -> None:
    """The runner answers at the deadline while the tool still runs: an async tool is cancelled
    there, a sync one (its thread cannot be stopped) is abandoned, and released only after."""
    CUT.clear()

    async def cut(name: str) -> str:
        result = await run_call(REG, call(name), CTX, ALL)
        RELEASE.set()  # let an abandoned worker thread finish (asyncio.run waits for it)
        return err(result)

    assert run(cut("slow_async")) == "slow_async timed out after 0.2 s"
    RELEASE.clear()
    assert run(cut("slow_sync")) == "slow_sync timed out after 0.2 s"
    assert CUT == ["slow_async", "slow_sync"]


def test_run_calls_run_concurrently_in_call_order() -> None:
    """All four calls must be running at once to meet (see `Meeting`); a2 returns first."""
    MEETING.reset()
    calls = [
        call("meet_sync", {"label": "s1"}, id="1"),
        call("meet_sync", {"label": "s2"}, id="2"),
        call("meet_async", {"label": "a1"}, id="3"),
        call("meet_async", {"label": "a2"}, id="4"),
        call("nope", id="5"),
    ]
    results = run(run_calls(REG, calls, CTX, ALL))
    assert [r.call_id for r in results] == ["1", "2", "3", "4", "5"]
    assert [r.output for r in results[:4]] == ["s1", "s2", "a1", "a2"] and results[4].is_error
    assert MEETING.left[0] == "a2"  # results come back in call order, not in finishing order


def test_event_loop_is_not_blocked_by_sync_tools() -> None:
    """The sync tool returns only once a coroutine of the caller's loop ran while it waited."""
    TOOL_STARTED.clear()
    LOOP_RAN.clear()

    async def main() -> str:
        async def answer() -> None:
            deadline = time.monotonic() + 5
            while not TOOL_STARTED.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            LOOP_RAN.set()

        task = asyncio.create_task(answer())
        result = await run_call(REG, call("waits_for_the_loop"), CTX, ALL)
        await task
        return ok(result)

    assert run(main()) == "the event loop ran"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from([*ALL, "calculator", "weather", "clock", "notes", DELEGATE, "", "x y"]),
    arguments=st.dictionaries(st.sampled_from(["a", "b", "query", "p", "expression", "city", "zz"]), JSON),
    invalid=st.none() | st.text(max_size=50),
)
def test_no_model_output_makes_the_runner_raise(
    name: str, arguments: dict[str, Any], invalid: str | None
) -> None:
    reg = REGISTRY.copy()
    for t in REG:
        if not t.name.startswith(("slow", "meet", "waits")):
            reg.register(t)
    c = ToolCall(id="h", name=name, arguments=arguments, invalid_arguments=invalid)
    r = run(run_call(reg, c, CTX, reg.names()))
    assert isinstance(r, ToolResult) and r.call_id == "h" and r.name == name
    assert isinstance(r.output, str)


# --- calculator ---------------------------------------------------------------------------------


def calc(expression: str) -> ToolResult:
    return run(run_call(REGISTRY, call("calculator", {"expression": expression}), CTX, ["calculator"]))


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1 + 2 * 3", "7"),
        ("(1 + 2) * 3", "9"),
        ("10 / 4", "2.5"),
        ("7 // 2", "3"),
        ("-7 // 2", "-4"),
        ("7 % 3", "1"),
        ("2 ** 10", "1024"),
        ("2 ** 100", str(2**100)),
        ("-2 ** 2", "-4"),
        ("(-2) ** 2", "4"),
        ("2 ** -1", "0.5"),
        ("+3 - -3", "6"),
        ("sqrt(16) + abs(-3)", "7.0"),
        ("round(2.567, 2)", "2.57"),
        ("round(2.5)", "2"),
        ("min(3, 1, 2) + max(4, 5)", "6"),
        ("floor(2.7) + ceil(2.1)", "5"),
        ("log(8, 2)", "3.0"),
        ("2 * pi", repr(2 * 3.141592653589793)),
        ("1e3 + 0.5", "1000.5"),
        ("  0.1 + 0.2  ", "0.30000000000000004"),
    ],
)
def test_calculator_arithmetic(expression: str, expected: str) -> None:
    assert ok(calc(expression)) == expected


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("x + 1", "unknown name 'x'"),
        ("True + 1", "only numbers are allowed, not True"),
        ("__import__('os').system('true')", "unknown function \"__import__('os').system\""),
        ("__import__('os')", "unknown function '__import__'"),
        ("(1).real", "attribute access (1 .real) is not allowed"),
        ("().__class__.__bases__", "attribute access"),
        ("'a' * 3", "only numbers are allowed, not 'a'"),
        ("1j * 2", "only numbers are allowed, not 1j"),
        ("(-8) ** 0.5", "the result is not a real number"),
        ("lambda: 1", "Lambda (lambda: 1) is not allowed"),
        ("1 < 2", "Compare (1 < 2) is not allowed"),
        ("[1, 2]", "List ([1, 2]) is not allowed"),
        ("sqrt(x=4)", "keyword arguments are not allowed"),
        ("1 +", "not an arithmetic expression"),
        ("import os", "not an arithmetic expression"),
        ("9 ** 9 ** 9", "the exponent 387420489 is too large for base 9"),
        ("10 ** 10 ** 10", "the exponent 10000000000 is too large for base 10"),
        ("2 ** 100000", "the exponent 100000 is too large for base 2"),
        ("(2 ** 9000) * (2 ** 9000)", "the result is too large"),
        ("round(1.5, 10 ** 9)", "round() to more than 1000 digits"),
        ("1 + " * 600 + "1", f"longer than {MAX_EXPRESSION_CHARS} characters"),
        ("1 / 0", "ZeroDivisionError: division by zero"),
        ("7 % 0", "ZeroDivisionError"),
        ("sqrt(-1)", "ValueError: math domain error"),
        ("exp(1000)", "OverflowError"),
    ],
)
def test_calculator_refusals(expression: str, message: str) -> None:
    out = err(calc(expression))  # refused before computing: not "calculator timed out after 5 s"
    assert out.startswith("calculator failed: ")
    assert message in out


def test_calculator_refusals_say_what_is_allowed() -> None:
    out = err(calc("x"))
    assert "allowed: numbers, + - * / // % **" in out and "sqrt" in out
    assert evaluate("2 ** 64") == 2**64  # the evaluator is usable on its own


@pytest.mark.filterwarnings("ignore::SyntaxWarning")  # ast.parse warns about e.g. "1e"
@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789+-*/%().e ,sqrtabminx", max_size=40))
def test_calculator_never_raises_anything_unexpected(expression: str) -> None:
    with contextlib.suppress(ValueError, ArithmeticError, TypeError):  # CalculatorError is a ValueError
        evaluate(expression)


# --- clock and weather --------------------------------------------------------------------------


def test_clock_is_utc_iso8601() -> None:
    out = ok(run(run_call(REGISTRY, call("clock"), CTX, ["clock"])))
    when = dt.datetime.fromisoformat(out)
    assert when.utcoffset() == dt.timedelta(0)
    assert abs((dt.datetime.now(dt.UTC) - when).total_seconds()) < 5


def test_weather_is_deterministic() -> None:
    def forecast(city: str) -> str:
        return ok(run(run_call(REGISTRY, call("weather", {"city": city}), CTX, ["weather"])))

    paris = forecast("Paris")
    assert paris == forecast("Paris") == forecast("  paris ").replace('"paris"', '"Paris"')
    assert '"city":"Paris"' in paris and "demo data" in paris
    assert len({forecast(c) for c in ["Paris", "Oslo", "Lima", "Tokyo", "Cairo"]}) == 5
    w = REGISTRY.get("weather")(city="Oslo")
    assert -10 <= w.temperature_c <= 35 and 20 <= w.humidity_pct <= 95 and 0 <= w.wind_kph < 60
    out = err(run(run_call(REGISTRY, call("weather", {"city": ""}), CTX, ["weather"])))
    assert out.startswith("invalid arguments for weather: city: String should have at least 1 character")


# --- notes (real store) -------------------------------------------------------------------------


def notes(log: EventLog, conversation: str, action: str, text: str | None = None) -> ToolResult:
    args: dict[str, Any] = {"action": action} if text is None else {"action": action, "text": text}
    ctx = ToolContext(conversation=conversation, agent="alice", store=log)
    return run(run_call(REGISTRY, call("notes", args), ctx, ["notes"]))


def test_notes_add_list_clear(log: EventLog) -> None:
    assert ok(notes(log, "c1", "list")) == "no notes yet"
    assert ok(notes(log, "c1", "add", "buy milk")) == "added note 1"
    assert ok(notes(log, "c1", "add", "call Bob")) == "added note 2"
    assert ok(notes(log, "c1", "list")) == "1. buy milk\n2. call Bob"
    key = f"{log.keys.ns}:conv:c1:notes"
    assert log.r.type(key) == b"list" and log.r.lrange(key, 0, -1) == [b"buy milk", b"call Bob"]
    assert ok(notes(log, "c1", "clear")) == "cleared 2 notes"
    assert ok(notes(log, "c1", "list")) == "no notes yet"
    assert not log.r.exists(key)
    assert ok(notes(log, "c1", "clear")) == "cleared 0 notes"


def test_a_full_notepad_refuses_a_note_until_cleared(log: EventLog, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("p2e.tools.builtin.MAX_NOTES", 2)
    ok(notes(log, "c1", "add", "one"))
    ok(notes(log, "c1", "add", "two"))
    out = err(notes(log, "c1", "add", "three"))
    assert out == "notes failed: ValueError: the notepad is full (2 notes); clear it first"
    assert ok(notes(log, "c1", "list")) == "1. one\n2. two"
    assert ok(notes(log, "c1", "clear")) == "cleared 2 notes"
    assert ok(notes(log, "c1", "add", "three")) == "added note 1"


def test_notes_are_scoped_to_the_conversation(log: EventLog) -> None:
    ok(notes(log, "c1", "add", "mine"))
    ok(notes(log, "c2", "add", "theirs"))
    assert ok(notes(log, "c1", "list")) == "1. mine"
    assert ok(notes(log, "c2", "list")) == "1. theirs"
    ok(notes(log, "c2", "clear"))
    assert ok(notes(log, "c1", "list")) == "1. mine"


def test_notes_errors(log: EventLog) -> None:
    assert err(notes(log, "c1", "add")) == "notes failed: ValueError: add needs a non-empty text"
    out = err(notes(log, "c1", "remove", "x"))
    assert out.startswith("invalid arguments for notes: action: Input should be 'add', 'list' or 'clear'")
    out = err(run(run_call(REGISTRY, call("notes", {"action": "list"}), CTX, ["notes"])))
    assert out == (
        "notes failed: RuntimeError: notes need the store, and this run has none; run the agent with a store"
    )


def test_an_inline_tool_runs_on_the_event_loop_thread() -> None:
    seen: list[str] = []

    @tool(inline=True)
    def where() -> str:
        """Which thread runs me."""
        seen.append(threading.current_thread().name)
        return "ok"

    @tool
    def elsewhere() -> str:
        """Which thread runs me."""
        seen.append(threading.current_thread().name)
        return "ok"

    reg = Registry([where, elsewhere])
    ctx = ToolContext(conversation="c", agent="a")
    calls = [ToolCall(id="1", name="where"), ToolCall(id="2", name="elsewhere")]

    async def run() -> str:
        await run_calls(reg, calls, ctx, allowed={"where", "elsewhere"})
        return threading.current_thread().name

    loop_thread = asyncio.run(run())
    assert seen[0] == loop_thread and seen[1] != loop_thread
