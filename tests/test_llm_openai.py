"""The openai provider, end to end: the real `openai` client over HTTP against the local test server.

Backoff settings are tiny so retry tests take milliseconds; the Retry-After and timeout tests
wait a few tenths of a second on purpose, to show that the waits happen.
"""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import time
from typing import Any

import pytest
from openai_server import OpenAIServer, Reply

from p2e.errors import InvalidArgument
from p2e.events import ToolCall
from p2e.llm import Providers
from p2e.llm.base import Message, ModelError, ModelRequest, ModelResponse, ToolSpec
from p2e.llm.openai import OpenAIProvider, _retry_after
from p2e.llm.pricing import cost

KEY = "sk-test-SECRET-0123456789abcdef"
FAST = {"backoff_s": 0.001, "timeout_s": 5}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own key or base URL must not leak into (or change) these tests."""
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ADMIN_KEY", "MY_KEY"):
        monkeypatch.delenv(name, raising=False)


def provider(server: OpenAIServer, **settings: Any) -> OpenAIProvider:
    return OpenAIProvider({"base_url": server.url, "api_key": KEY, **FAST, **settings})


def call(p: OpenAIProvider, request: ModelRequest) -> ModelResponse:
    """One call in its own event loop, closing the connections after (tests stay warning-free)."""

    async def go() -> ModelResponse:
        try:
            return await p.complete(request)
        finally:
            await p.aclose()

    return asyncio.run(go())


def ask(p: OpenAIProvider, text: str = "hi", model: str = "openai/gpt-4o-mini", **kw: Any) -> ModelResponse:
    return call(p, ModelRequest(model=model, messages=(Message(role="user", content=text),), **kw))


def fail(p: OpenAIProvider, model: str = "openai/gpt-4o-mini") -> ModelError:
    with pytest.raises(ModelError) as info:
        ask(p, model=model)
    return info.value


# replies


def test_text_reply_usage_cost_and_latency(openai_server: OpenAIServer) -> None:
    openai_server.push(Reply(text="hello there", prompt_tokens=1000, completion_tokens=500))
    r = ask(provider(openai_server))
    assert r.text == "hello there"
    assert r.tool_calls == ()
    assert r.model == "openai/gpt-4o-mini"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (1000, 500)
    assert r.usage.cost_usd == pytest.approx((1000 * 0.15 + 500 * 0.60) / 1e6)
    assert r.usage.latency_ms > 0
    assert openai_server.request_headers[0]["authorization"] == f"Bearer {KEY}"


def test_several_tool_calls_in_one_reply(openai_server: OpenAIServer) -> None:
    openai_server.push(
        Reply(
            text="let me check",
            tool_calls=[
                ("add", '{"a": 1, "b": 2}'),
                ("delegate", json.dumps({"agent": "researcher", "task": "look up é"})),
                ("now", ""),  # some local servers send "" for a call without arguments
            ],
        )
    )
    r = ask(provider(openai_server))
    assert r.text == "let me check"
    assert [(c.name, c.arguments, c.invalid_arguments) for c in r.tool_calls] == [
        ("add", {"a": 1, "b": 2}, None),
        ("delegate", {"agent": "researcher", "task": "look up é"}, None),
        ("now", {}, None),
    ]
    assert len({c.id for c in r.tool_calls}) == 3
    assert r.tool_calls[1].is_delegation


@pytest.mark.parametrize("raw", ['{"a": 1', "[1, 2]", '"just a string"', "42", "null"])
def test_arguments_that_are_not_a_json_object_are_kept_raw(openai_server: OpenAIServer, raw: str) -> None:
    openai_server.push(Reply(text=None, tool_calls=[("add", raw), ("ok", '{"x": true}')]))
    bad, good = ask(provider(openai_server)).tool_calls
    assert (bad.name, bad.arguments, bad.invalid_arguments) == ("add", {}, raw)
    assert (good.arguments, good.invalid_arguments) == ({"x": True}, None)


def test_a_reply_without_choices_is_a_model_error(openai_server: OpenAIServer) -> None:
    openai_server.push(Reply(raw={"id": "x", "object": "chat.completion", "choices": []}))
    e = fail(provider(openai_server))
    assert "no choices" in str(e) and e.status is None


# what p2e sends


def test_request_mapping(openai_server: OpenAIServer) -> None:
    openai_server.push("done")
    messages = (
        Message(role="system", content="You are terse."),
        Message(role="user", content="add 1 and 2", name="alice"),
        Message(
            role="assistant",
            tool_calls=(
                ToolCall(id="call_a", name="add", arguments={"a": 1, "b": 2}),
                ToolCall(id="call_b", name="add", invalid_arguments="[1, 2]"),
            ),
        ),
        Message(role="tool", tool_call_id="call_a", content="3", name="add"),
        Message(role="tool", tool_call_id="call_b", content="error: arguments must be an object"),
    )
    tools = (
        ToolSpec(
            name="add",
            description="Add two integers.",
            parameters={"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}},
        ),
        ToolSpec(name="now"),
    )
    request = ModelRequest(
        model="openai/gpt-4o-mini", messages=messages, tools=tools, temperature=0.2, top_p=0.9, max_tokens=64
    )
    call(provider(openai_server), request)

    args = '{"a": 1, "b": 2}'
    (sent,) = openai_server.requests
    assert sent["model"] == "gpt-4o-mini"
    assert (sent["temperature"], sent["top_p"], sent["max_tokens"]) == (0.2, 0.9, 64)
    assert sent["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "add 1 and 2", "name": "alice"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "add", "arguments": args}},
                {"id": "call_b", "type": "function", "function": {"name": "add", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": "3"},
        {"role": "tool", "tool_call_id": "call_b", "content": "error: arguments must be an object"},
    ]
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "add",
                "description": "Add two integers.",
                "parameters": {
                    "type": "object",
                    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                },
            },
        },
        {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}},
    ]


def test_unset_options_and_empty_tools_are_not_sent(openai_server: OpenAIServer) -> None:
    openai_server.push("ok")
    ask(provider(openai_server))
    (sent,) = openai_server.requests
    assert set(sent) == {"model", "messages"}


def test_reasoning_models_get_max_completion_tokens(openai_server: OpenAIServer) -> None:
    openai_server.push("a", "b")
    ask(provider(openai_server), model="openai/o4-mini", max_tokens=100)
    ask(provider(openai_server, max_tokens_param="max_tokens"), model="openai/o4-mini", max_tokens=100)
    first, second = openai_server.requests
    assert first["max_completion_tokens"] == 100 and "max_tokens" not in first
    assert second["max_tokens"] == 100 and "max_completion_tokens" not in second


def test_tool_message_without_call_id_is_refused(openai_server: OpenAIServer) -> None:
    request = ModelRequest(model="openai/gpt-4o-mini", messages=(Message(role="tool", content="3"),))
    with pytest.raises(InvalidArgument, match="tool_call_id"):
        call(provider(openai_server), request)
    assert openai_server.requests == []


# retries


def test_429_is_retried_after_retry_after(openai_server: OpenAIServer) -> None:
    openai_server.push(Reply(status=429, retry_after=0.3, error="rate limited"), Reply(text="finally"))
    r = ask(provider(openai_server))
    assert r.text == "finally"
    assert len(openai_server.requests) == 2
    # the latency covers the retries; the backoff alone would be ~1 ms: the header was honoured
    assert r.usage.latency_ms >= 300


def test_500_twice_then_success(openai_server: OpenAIServer) -> None:
    openai_server.push(Reply(status=500), Reply(status=502), Reply(text="up again"))
    assert ask(provider(openai_server)).text == "up again"
    assert len(openai_server.requests) == 3


def test_timeout_is_retried(openai_server: OpenAIServer) -> None:
    openai_server.push(Reply(text="too late", delay_s=2.0), Reply(text="in time"))
    r = ask(provider(openai_server, timeout_s=0.3))
    assert r.text == "in time"  # not "too late": the client gave up on the first reply at 0.3 s
    assert len(openai_server.requests) == 2


def test_400_is_not_retried(openai_server: OpenAIServer) -> None:
    openai_server.push(Reply(status=400, error="unknown parameter: foo"), Reply(text="never sent"))
    e = fail(provider(openai_server))
    assert len(openai_server.requests) == 1
    assert (e.status, e.attempts, e.retryable) == (400, 1, False)
    message = str(e)
    assert "400" in message and "gpt-4o-mini" in message and openai_server.url in message
    assert "unknown parameter: foo" in message
    assert KEY not in message


def test_retries_exhausted(openai_server: OpenAIServer) -> None:
    openai_server.push(*[Reply(status=503, error="overloaded")] * 3, Reply(text="never reached"))
    e = fail(provider(openai_server, max_retries=2))
    assert len(openai_server.requests) == 3
    assert (e.status, e.attempts, e.retryable) == (503, 3, True)
    assert "503" in str(e) and "after 3 attempts" in str(e) and KEY not in str(e)


def test_no_retries_when_max_retries_is_zero(openai_server: OpenAIServer) -> None:
    openai_server.push(Reply(status=429), Reply(text="never reached"))
    assert fail(provider(openai_server, max_retries=0)).status == 429
    assert len(openai_server.requests) == 1


def test_connection_refused_is_retried_then_reported() -> None:
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = OpenAIProvider({"base_url": f"http://127.0.0.1:{port}/v1", "api_key": KEY, **FAST, "max_retries": 2})
    e = fail(p)
    assert e.status is None and e.attempts == 3
    assert f"127.0.0.1:{port}" in str(e) and "could not be reached" in str(e) and KEY not in str(e)


def test_retry_after_header_forms() -> None:
    assert _retry_after({"retry-after-ms": "250"}) == 0.25
    assert _retry_after({"retry-after": "2"}) == 2.0
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 < (_retry_after({"retry-after": date}) or 0) <= 31
    assert _retry_after({"retry-after": "soon"}) is None
    assert _retry_after({}) is None


# keys and settings


def test_missing_key_without_base_url_is_a_clear_error() -> None:
    e = fail(OpenAIProvider({}))
    assert "OPENAI_API_KEY" in str(e) and "base_url" in str(e)
    e = fail(OpenAIProvider({"api_key_env": "MY_KEY"}))
    assert "MY_KEY" in str(e)


def test_key_from_the_environment(openai_server: OpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.url)
    openai_server.push("ok")
    assert ask(OpenAIProvider({"api_key_env": "MY_KEY"})).text == "ok"
    assert openai_server.request_headers[0]["authorization"] == f"Bearer {KEY}"


def test_base_url_without_key_sends_a_placeholder(openai_server: OpenAIServer) -> None:
    openai_server.push("local model here")
    p = OpenAIProvider({"base_url": openai_server.url})
    assert ask(p, model="openai/llama3").text == "local model here"
    assert openai_server.request_headers[0]["authorization"].startswith("Bearer ")


def test_key_never_appears_in_errors(openai_server: OpenAIServer) -> None:
    echo = f"Incorrect API key provided: {KEY}. You can find your API key at https://example.invalid"
    openai_server.push(Reply(status=401, error=echo))
    e = fail(provider(openai_server))
    assert e.status == 401 and "401" in str(e) and "API key" in str(e)
    assert KEY not in str(e) and KEY not in repr(e)
    assert e.__cause__ is None  # the SDK error (and its request, headers included) is not chained


def test_invalid_settings_name_the_field() -> None:
    with pytest.raises(InvalidArgument, match="timeout"):
        OpenAIProvider({"timeout": 5})
    with pytest.raises(InvalidArgument, match="max_retries"):
        OpenAIProvider({"max_retries": -1})
    with pytest.raises(InvalidArgument, match="my-model"):
        OpenAIProvider({"prices": {"my-model": "cheap"}})


def test_registry_builds_the_provider(openai_server: OpenAIServer) -> None:
    providers = Providers({"openai": {"base_url": openai_server.url, **FAST}})
    p = providers.for_model("openai/gpt-4o")
    assert isinstance(p, OpenAIProvider) and providers.for_model("openai/gpt-4.1") is p


# cost


def test_cost_from_settings_prices(openai_server: OpenAIServer) -> None:
    openai_server.push(
        Reply(text="a", prompt_tokens=2_000_000, completion_tokens=1_000_000),
        Reply(text="b", prompt_tokens=1_000_000, completion_tokens=1_000_000),
        Reply(text="c", prompt_tokens=1_000_000, completion_tokens=1_000_000, model="gpt-4o-mini-2024-07-18"),
        Reply(text="d", prompt_tokens=1_000_000, completion_tokens=1_000_000),
    )
    p = provider(openai_server, prices={"my-local": [1.0, 3.0], "gpt-4o-mini": {"input": 9, "output": 9}})
    assert ask(p, model="openai/my-local-7b").usage.cost_usd == pytest.approx(2 * 1.0 + 3.0)
    assert ask(p, model="openai/gpt-4o-mini").usage.cost_usd == pytest.approx(18.0)  # override wins
    dated = ask(p, model="openai/gpt-4o-mini")  # the server reports a dated snapshot
    assert dated.model == "openai/gpt-4o-mini-2024-07-18" and dated.usage.cost_usd == pytest.approx(18.0)
    assert ask(p, model="openai/qwen2.5:7b").usage.cost_usd == 0.0  # unknown (local) model


def test_prices_come_from_genai_prices_and_the_settings_override_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert cost("gpt-4o", 1_000_000, 1_000_000) == pytest.approx(2.5 + 10.0)  # genai-prices' list price
    assert cost("gpt-4o-mini-2024-07-18", 1_000_000, 0) == cost("gpt-4o-mini", 1_000_000, 0) > 0
    assert cost("openai/gpt-4o", 1000, 1000) == cost("gpt-4o", 1000, 1000)  # org/model names (routers)
    assert cost("gpt-4.5-preview", 1_000_000, 0) > cost("gpt-4o", 1_000_000, 0)  # not priced as gpt-4o
    # overrides win, by prefix up to a boundary
    assert cost("gpt-4o", 1_000_000, 0, extra={"gpt-4o": [1, 1]}) == pytest.approx(1.0)
    assert cost("gpt-4o", 1_000_000, 0, extra={"gpt-4": [1, 1]}) == pytest.approx(2.5)  # gpt-4 is not gpt-4o
    assert cost("llama3", 1_000_000, 0, extra={"llama3": [0.2, 0.2]}) == pytest.approx(0.2)
    # the server's answer (a dated snapshot) prices a model the request named by an alias
    assert cost("my-alias", 1_000_000, 0, served="gpt-4o-2024-08-06") == pytest.approx(2.5)


def test_an_unknown_model_costs_nothing_and_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="p2e.pricing"):
        assert cost("never-heard-of-it-7b", 1000, 1000) == 0.0
        assert cost("never-heard-of-it-7b", 1000, 1000) == 0.0
    warned = [r.getMessage() for r in caplog.records if "never-heard-of-it-7b" in r.getMessage()]
    assert len(warned) == 1 and "prices" in warned[0]


@pytest.mark.parametrize("bad", [[-1, 1], [float("inf"), 1], [1], "cheap", {"input": 1}, [True, "x"]])
def test_a_bad_price_override_is_refused(bad: object) -> None:
    with pytest.raises(InvalidArgument, match="USD per 1M tokens"):
        cost("m", 1, 1, extra={"m": bad})


# client lifecycle


# the first loop's client is left behind on purpose: its sockets are collected, not closed
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_client_is_reused_and_survives_a_new_event_loop(openai_server: OpenAIServer) -> None:
    openai_server.responder = lambda body: body["messages"][-1]["content"].upper()
    p = provider(openai_server)

    def request(text: str) -> ModelRequest:
        return ModelRequest(model="openai/m", messages=(Message(role="user", content=text),))

    async def two() -> tuple[Any, list[str]]:
        first = await p.complete(request("a"))
        client = p._client
        more = await asyncio.gather(*(p.complete(request(t)) for t in "bcd"))
        assert p._client is client  # one client per provider, shared by concurrent calls
        return client, [first.text, *(r.text for r in more)]

    client, texts = asyncio.run(two())
    assert texts == ["A", "B", "C", "D"]

    async def again() -> tuple[str, Any]:  # a second asyncio.run: a fresh client, no dead connections
        r = await p.complete(request("e"))
        fresh = p._client
        await p.aclose()
        return r.text, fresh

    text, fresh = asyncio.run(again())
    assert text == "E" and fresh is not None and fresh is not client
    del client, fresh
    gc.collect()  # collect the left-behind sockets here, under this test's warning filter
