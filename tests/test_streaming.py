"""Streaming: replies reach the user as the model writes them, while the stored event stays the
complete reply. The openai provider is driven through the real `openai` client against the local
test server (tests/openai_server.py), which streams exactly as OpenAI does."""

from __future__ import annotations

import asyncio
import io
import json
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import Cli
from openai_server import OpenAIServer, Reply

import p2e.api
from p2e.api import local_chat
from p2e.conversation import Conversation
from p2e.errors import NotFound
from p2e.events import AgentReply, Limits, UserMessage
from p2e.llm import Providers
from p2e.llm.base import Message, ModelDelta, ModelRequest, ModelResponse
from p2e.llm.openai import OpenAIProvider
from p2e.store import EventLog
from p2e.streaming import Deltas, PartialReply, StreamDelta, read_partial

HOSTILE = "Hi [bold]you[/bold] [/note] \x1b[31mred\x1b]0;pwned\x07 done"
SHOWN = "Hi [bold]you[/bold] [/note] \\x1b[31mred\\x1b]0;pwned\\x07 done"
"""HOSTILE as the terminal must show it: markup as text, control characters written out."""


def ask(p: OpenAIProvider, deltas: list[ModelDelta] | None) -> ModelResponse:
    request = ModelRequest(model="openai/gpt-4o-mini", messages=(Message(role="user", content="hi"),))

    async def go() -> ModelResponse:
        try:
            return await p.complete(request, on_delta=None if deltas is None else deltas.append)
        finally:
            await p.aclose()

    return asyncio.run(go())


def fold(deltas: list[ModelDelta]) -> PartialReply:
    partial = PartialReply(seq=0, agent="a")
    for d in deltas:
        partial.add(d)
    return partial


def team_file(tmp_path: Path, rules: dict[str, Any] | None = None, **providers: Any) -> Path:
    """An agents file with one agent, `bot`, on `mock/s` (the given rules) or another model."""
    model = "openai/gpt-4o-mini" if "openai" in providers else "mock/s"
    raw = {
        "agents": {"bot": {"persona": "You are bot.", "model": model, "tools": ["calculator"]}},
        "providers": {"mock": {"rules": {"s": rules or {"rules": [{"text": "x"}]}}}, **providers},
    }
    path = tmp_path / "agents.yaml"
    path.write_text(json.dumps(raw))  # JSON is YAML, and escapes the control characters
    return path


# --- the openai provider, through the real client ----------------------------------------------


def test_a_streamed_reply_equals_the_unstreamed_one(openai_server: OpenAIServer) -> None:
    args = '{"expression": "(2 + 3) * 7", "note": "split across many chunks"}'
    script = Reply(
        text="Let me compute that for you.",
        tool_calls=[("calculator", args), ("clock", "")],
        prompt_tokens=1000,
        completion_tokens=500,
        chunk_chars=3,
    )
    openai_server.push(script, script)
    p = OpenAIProvider({"base_url": openai_server.url, "api_key": "k", "backoff_s": 0.001})
    plain = ask(p, None)
    deltas: list[ModelDelta] = []
    streamed = ask(p, deltas)

    assert "stream" not in openai_server.requests[0]
    assert openai_server.requests[1]["stream"] is True
    assert openai_server.requests[1]["stream_options"] == {"include_usage": True}
    # the same reply: text, tool calls with their whole arguments, usage counted once
    assert streamed.text == plain.text == "Let me compute that for you."
    assert [(c.name, c.arguments) for c in streamed.tool_calls] == [
        ("calculator", {"expression": "(2 + 3) * 7", "note": "split across many chunks"}),
        ("clock", {}),
    ]
    assert [(c.name, c.arguments) for c in streamed.tool_calls] == [
        (c.name, c.arguments) for c in plain.tool_calls
    ]
    assert streamed.tool_calls[0].id == "call_2_0"  # the id of the call's first fragment
    assert (streamed.usage.prompt_tokens, streamed.usage.completion_tokens) == (1000, 500)
    assert streamed.usage.cost_usd == plain.usage.cost_usd > 0
    assert streamed.model == plain.model

    # the pieces, in order: the text in 3-character pieces, then each call's name and fragments
    texts = [d.text for d in deltas if d.text]
    assert texts[:3] == ["Let", " me", " co"] and "".join(texts) == streamed.text
    fragments = [d.arguments for d in deltas if d.tool == 0 and d.arguments]
    assert len(fragments) > 10 and "".join(fragments) == args
    assert [d.name for d in deltas if d.name] == ["calculator", "clock"]
    folded = fold(deltas)
    assert folded.text == streamed.text
    assert [(c.name, c.arguments) for c in folded.tool_calls] == [("calculator", args), ("clock", "")]


def test_a_stream_cut_midway_is_retried_and_the_pieces_start_over(openai_server: OpenAIServer) -> None:
    openai_server.push(Reply(text="this attempt will not finish", break_after=4), Reply(text="second try"))
    p = OpenAIProvider({"base_url": openai_server.url, "api_key": "k", "backoff_s": 0.001})
    deltas: list[ModelDelta] = []
    r = ask(p, deltas)
    assert r.text == "second try"
    assert len(openai_server.requests) == 2
    restarts = [i for i, d in enumerate(deltas) if d.restart]
    assert len(restarts) == 1 and "".join(d.text for d in deltas[: restarts[0]]) == "this attempt"
    assert fold(deltas).text == "second try" and fold(deltas).attempt == 1

    seen: list[StreamDelta] = []
    track = Deltas(seen.append)
    partial = PartialReply(seq=3, agent="a")
    for d in deltas:
        partial.add(d)
        track(partial.model_copy(deep=True))
    assert seen[-1].seq == 3
    restart = next(i for i, s in enumerate(seen) if s.restart)
    assert "".join(s.text for s in seen[restart:]) == "second try"  # what a reader shows after


def test_stream_false_asks_for_the_whole_reply(openai_server: OpenAIServer) -> None:
    openai_server.push("whole")
    p = OpenAIProvider({"base_url": openai_server.url, "api_key": "k", "stream": False})
    deltas: list[ModelDelta] = []
    assert ask(p, deltas).text == "whole"
    assert deltas == [] and "stream" not in openai_server.requests[0]


# --- a conversation that streams --------------------------------------------------------------


def test_a_local_chat_streams_through_the_openai_client_and_stores_the_whole_reply(
    openai_server: OpenAIServer, store_url: str, namespace: str, tmp_path: Path, log: EventLog
) -> None:
    args = json.dumps({"expression": "6 * 7"})
    openai_server.push(
        Reply(text=None, tool_calls=[("calculator", args)], chunk_chars=2),
        Reply(text="The answer is 42, computed with care.", chunk_chars=5),
    )
    agents = team_file(tmp_path, openai={"base_url": openai_server.url, "api_key": "k"})
    chat = local_chat("bot", "calc", agents=agents, store_url=store_url, namespace=namespace)
    seen: list[StreamDelta] = []
    try:
        result = chat.send("what is 6*7?", on_delta=seen.append)
    finally:
        chat.close()
    assert result.answer == "The answer is 42, computed with care."
    assert all(r["stream"] for r in openai_server.requests)

    replies = [e for e in log.history("calc") if isinstance(e, AgentReply)]
    assert [(c.name, c.arguments) for c in replies[0].tool_calls] == [("calculator", {"expression": "6 * 7"})]
    usage = replies[1].usage
    assert replies[1].text == result.answer and usage is not None and usage.completion_tokens == 5
    # the user saw the text of the second step, piece by piece, at its seq
    assert {s.seq for s in seen} == {replies[1].seq}
    assert len(seen) > 3 and "".join(s.text for s in seen) == result.answer
    # the store keeps the last step's whole reply for a while, but no longer shows it as running
    partial = read_partial(log, chat.id, "main")
    assert partial is not None and partial.done and partial.text == result.answer
    assert not partial.live(log.branch("calc").length)


def test_a_ray_chat_streams_from_the_agent_actors(
    ray_session: None, store_url: str, namespace: str, tmp_path: Path
) -> None:
    rules = {"stream_chunk_ms": 5, "rules": [{"text": "Streaming from an actor, word by word."}]}
    rt = p2e.api.init(agents=team_file(tmp_path, rules), store_url=store_url, namespace=namespace)
    try:
        chat = rt.chat("bot", "ray-stream")
        seen: list[StreamDelta] = []
        result = chat.send("go", on_delta=seen.append)
        assert result.answer == "Streaming from an actor, word by word."
        assert seen and "".join(s.text for s in seen) == result.answer
        assert {(s.agent, s.seq) for s in seen} == {("bot", 2)}
        again: list[StreamDelta] = []
        chat.send("again", on_delta=again.append)
        assert {s.seq for s in again} == {4}  # not the earlier turn's partial, still in the store
    finally:
        rt.shutdown()


def test_the_mock_streams_the_same_reply_in_pieces(tmp_path: Path) -> None:
    rules = {
        "stream_chunk_ms": 0,
        "rules": [
            {
                "text": "one two  three\n",
                "tool_calls": [{"name": "calculator", "arguments": {"expression": "1+1"}}],
            }
        ],
    }
    provider = Providers({"mock": {"rules": {"s": rules}}}).for_model("mock/s")
    request = ModelRequest(model="mock/s", messages=(Message(role="user", content="hi"),), seq=4)
    deltas: list[ModelDelta] = []
    streamed = asyncio.run(provider.complete(request, on_delta=deltas.append))
    plain = asyncio.run(provider.complete(request))
    assert streamed.model_copy(update={"usage": plain.usage}) == plain
    assert [d.text for d in deltas if d.text] == ["one", " two", "  three", "\n"]
    folded = fold(deltas)
    assert folded.text == plain.text
    assert [(c.name, json.loads(c.arguments)) for c in folded.tool_calls] == [
        ("calculator", {"expression": "1+1"})
    ]


# --- what the user sees -----------------------------------------------------------------------


def test_chat_prints_the_reply_as_it_streams_and_markup_stays_text(
    cli: Cli, store_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    agents = team_file(tmp_path, {"stream_chunk_ms": 1, "rules": [{"text": HOSTILE}]})
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n/exit\n"))
    code, out, err = cli("chat", "bot", "--local", "--agents", str(agents), "-c", "s1")
    assert code == 0, err
    assert f"bot> {SHOWN}\n" in out  # streamed, on its own line
    assert "s1 answers" in out and "\x1b" not in out  # then the final reply, as before

    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n/exit\n"))
    code, out, err = cli("chat", "bot", "--local", "--agents", str(agents), "-c", "s2", "--no-stream")
    assert code == 0, err
    assert "bot> " not in out and "s2 answers" in out


def test_watch_shows_the_reply_of_the_running_step(
    cli: Cli, store_env: dict[str, str], log: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    c = Conversation.create(log, "bot", {"bot": ()}, limits=Limits(max_steps=10), name="w")
    c.submit(UserMessage(text="q"))
    partial = PartialReply(seq=2, agent="bot", text=HOSTILE)
    partial.add(ModelDelta(tool=0, id="c1", name="calculator", arguments='{"expr'))
    log.r.set(log.keys.partial(c.id, "main"), partial.model_dump_json())
    code, out, err = cli("conversation", "watch", "w", "--once")
    assert code == 0, err
    assert "seq 2: bot is writing" in out and SHOWN in out and 'calculator({"expr' in out
    assert "\x1b" not in out

    c.submit(AgentReply(agent="bot", text="the whole reply"))  # stored: no longer running
    code, out, err = cli("conversation", "watch", "w", "--once")
    assert code == 0, err
    assert "is writing" not in out and "the whole reply" in out


def conversation_id(log: EventLog, name: str) -> str | None:
    try:
        return log.conversation(name).id
    except NotFound:
        return None


def test_a_slow_step_publishes_its_partial_reply_while_it_runs(
    store_url: str, namespace: str, tmp_path: Path, log: EventLog
) -> None:
    words = " ".join(f"w{i}" for i in range(40))
    agents = team_file(tmp_path, {"stream_chunk_ms": 25, "rules": [{"text": words}]})
    result: dict[str, Any] = {}

    def run() -> None:
        chat = local_chat("bot", "slow", agents=agents, store_url=store_url, namespace=namespace)
        try:
            result["turn"] = chat.send("go")
        finally:
            chat.close()

    worker = threading.Thread(target=run)
    worker.start()
    seen = None
    while worker.is_alive() and seen is None:  # the first partial that is not the whole reply
        cid = conversation_id(log, "slow")
        p = read_partial(log, cid, "main") if cid else None
        seen = p if p is not None and p.text and not p.done else None
    worker.join(timeout=60)
    assert seen is not None, "no partial reply was published while the step ran"
    assert seen.seq == 2 and seen.agent == "bot" and words.startswith(seen.text) and seen.text != words
    assert result["turn"].answer == words


def test_a_failed_step_takes_its_partial_reply_back(
    openai_server: OpenAIServer, store_url: str, namespace: str, tmp_path: Path, log: EventLog
) -> None:
    openai_server.push(
        Reply(text="an answer that is cut off and never stored", chunk_delay_s=0.05, break_after=5)
    )
    settings = {"base_url": openai_server.url, "api_key": "k", "max_retries": 0}
    chat = local_chat(
        "bot", "cut", agents=team_file(tmp_path, openai=settings), store_url=store_url, namespace=namespace
    )
    seen: list[StreamDelta] = []
    try:
        result = chat.send("go", on_delta=seen.append)
    finally:
        chat.close()
    assert result.status == "failed" and result.answer is None
    assert "".join(s.text for s in seen) == "an answer that i"  # shown as it came...
    assert read_partial(log, chat.id, "main") is None  # ...but gone from the store
    assert not [e for e in log.history("cut") if isinstance(e, AgentReply)]
