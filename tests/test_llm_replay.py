"""The replay provider: a recorded conversation re-driven from the store reproduces its history,
and a request the recording does not hold is a clear `NotRecorded` error."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

# the interpreter loop shared with the mock tests (tests/ is on sys.path under pytest)
from test_llm_mock import drive

from p2e.conversation import Conversation
from p2e.errors import InvalidArgument, UnknownConversation
from p2e.events import AgentReply, Event, ToolResult
from p2e.llm.base import Message, ModelRequest
from p2e.llm.mock import MockProvider
from p2e.llm.replay import NotRecorded, ReplayProvider
from p2e.store import EventLog

MOCK_DIR = Path(__file__).resolve().parents[1] / "experiments" / "mock"
TEAM = {"planner": ["researcher", "writer"], "researcher": [], "writer": []}
QUESTIONS = ["What is the weather in Lisbon tomorrow?", "And in Rome?"]


def record(log: EventLog, name: str = "rec") -> Conversation:
    """A two-question conversation answered by the mock model (usage and latency included)."""
    provider = MockProvider({"rules_dirs": [str(MOCK_DIR)], "rules": {}})
    conv = Conversation.create(log, "planner", TEAM, name=name)
    for q in QUESTIONS:
        asyncio.run(drive(conv, provider, q))
    return conv


def replayer(store_url: str, namespace: str, **source: Any) -> ReplayProvider:
    settings: dict[str, Any] = {"url": store_url, "namespace": namespace}
    if source:
        settings["source"] = source
    return ReplayProvider(settings)


def essence(e: Event) -> tuple[Any, ...]:
    """What a replay must reproduce: kind, agent, text/output, tool calls, model and usage."""
    if isinstance(e, AgentReply):
        return (e.kind, e.agent, e.text, e.tool_calls, e.model, e.usage)
    if isinstance(e, ToolResult):
        return (e.kind, e.agent, e.call_id, e.name, e.output, e.is_error)
    return (e.kind, e.model_dump(exclude={"seq", "ts"}))


def ask(provider: ReplayProvider, agent: str, seq: int, model: str = "replay/x") -> Any:
    request = ModelRequest(model=model, messages=(Message(role="user", content="q"),), agent=agent, seq=seq)
    return asyncio.run(provider.complete(request))


def test_a_replayed_conversation_reproduces_the_recorded_history(
    log: EventLog, store_url: str, namespace: str
) -> None:
    recorded = record(log).history()
    provider = replayer(store_url, namespace, conversation="rec", branch="main")
    conv = Conversation.create(log, "planner", TEAM, name="again")
    answers = [a for q in QUESTIONS for a in asyncio.run(drive(conv, provider, q, model="replay/rec"))]
    provider.close()

    again = conv.history()
    assert [essence(e) for e in again] == [essence(e) for e in recorded]
    assert len([e for e in again if isinstance(e, AgentReply)]) == 12
    assert answers == [e.text for e in again if isinstance(e, AgentReply) and e.agent == "planner"][2::3]
    assert conv.state.model_dump(exclude={"started_ts"}) == Conversation.open(log, "rec").state.model_dump(
        exclude={"started_ts"}
    )


def test_the_model_name_can_name_the_source(log: EventLog, store_url: str, namespace: str) -> None:
    record(log)
    provider = replayer(store_url, namespace)
    first = ask(provider, "planner", 2, model="replay/rec/main")
    assert first.tool_calls[0].name == "delegate"
    assert first.model == "mock/default"  # the recorded model, not the replay name
    assert first.usage.prompt_tokens > 0
    # a branch forked off the recording serves the inherited replies too
    log.fork("rec", "main", 6, "side")
    assert ask(provider, "researcher", 3, model="replay/rec/side") == ask(
        provider, "researcher", 3, "replay/rec"
    )


def test_a_request_past_the_recording_is_not_recorded(log: EventLog, store_url: str, namespace: str) -> None:
    n = len(record(log).history())
    provider = replayer(store_url, namespace, conversation="rec")
    with pytest.raises(NotRecorded) as e:
        ask(provider, "planner", n)
    msg = str(e.value)
    assert "'rec'" in msg and "'main'" in msg
    assert f"a reply by 'planner' at seq {n}" in msg
    assert f"ends at seq {n - 1}" in msg

    # a fresh conversation that asks a question the recording never saw runs off its end
    provider = replayer(store_url, namespace, conversation="rec", branch="main")
    conv = Conversation.create(log, "planner", TEAM, name="longer")
    for q in QUESTIONS:
        asyncio.run(drive(conv, provider, q))
    with pytest.raises(NotRecorded, match=f"at seq {n + 1},.*ends at seq {n - 1}"):
        asyncio.run(drive(conv, provider, "And in Oslo?"))


def test_a_request_the_recording_holds_something_else_for(
    log: EventLog, store_url: str, namespace: str
) -> None:
    history = record(log).history()
    provider = replayer(store_url, namespace, conversation="rec")
    reply = next(e for e in history if isinstance(e, AgentReply) and e.agent == "researcher")
    result = next(e for e in history if isinstance(e, ToolResult))
    with pytest.raises(
        NotRecorded, match=rf"a reply by 'writer' at seq {reply.seq}.*holds a reply by 'researcher'"
    ):
        ask(provider, "writer", reply.seq or 0)
    with pytest.raises(NotRecorded, match=rf"at seq {result.seq}.*holds a tool_result event of 'researcher'"):
        ask(provider, "researcher", result.seq or 0)
    with pytest.raises(NotRecorded, match=r"at seq 1.*holds a user_message event"):
        ask(provider, "planner", 1)
    with pytest.raises(NotRecorded, match="no seq"):
        ask(provider, "planner", -1)


def test_concurrent_requests_do_not_block_each_other(log: EventLog, store_url: str, namespace: str) -> None:
    history = record(log).history()
    provider = replayer(store_url, namespace, conversation="rec")
    replies = [e for e in history if isinstance(e, AgentReply)]

    async def all_at_once() -> list[Any]:
        return await asyncio.gather(
            *[
                provider.complete(ModelRequest(model="replay/x", messages=(), agent=r.agent, seq=r.seq or 0))
                for r in replies
            ]
        )

    got = asyncio.run(all_at_once())
    assert [(g.text, g.tool_calls) for g in got] == [(r.text, r.tool_calls) for r in replies]


def test_bad_settings_and_unknown_sources(log: EventLog, store_url: str, namespace: str) -> None:
    with pytest.raises(InvalidArgument, match=r"bad replay provider settings: source\.branchh"):
        ReplayProvider({"source": {"conversation": "c", "branchh": "x"}})
    with pytest.raises(InvalidArgument, match="bad replay provider settings: sourse"):
        ReplayProvider({"sourse": {}})
    with pytest.raises(UnknownConversation):
        ask(replayer(store_url, namespace, conversation="ghost"), "planner", 2)
