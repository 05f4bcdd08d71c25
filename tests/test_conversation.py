"""The machine and the store together: write-ahead submit, rebuild, rewind, snapshots, artifacts."""

from __future__ import annotations

import pytest

from p2e import artifacts
from p2e.conversation import Conversation, rebuild
from p2e.errors import Conflict, EventRejected, SequenceOutOfRange, UnknownArtifact
from p2e.events import AgentReply, Limits, ToolCall, ToolResult, UserMessage
from p2e.machine import CallAgent, RunTools, fold, pending
from p2e.scripted import ScriptedTeam
from p2e.store import EventLog

TEAM = {"boss": ["helper"], "helper": []}


def delegate(call_id: str, agent: str, task: str) -> ToolCall:
    return ToolCall(id=call_id, name="delegate", arguments={"agent": agent, "task": task})


def team(answer: str = "42") -> ScriptedTeam:
    return ScriptedTeam(
        {
            "boss": [
                AgentReply(agent="boss", tool_calls=(delegate("d1", "helper", "compute"),)),
                AgentReply(agent="boss", text=f"the answer is {answer}"),
            ],
            "helper": [
                AgentReply(agent="helper", tool_calls=(ToolCall(id="t1", name="calc", arguments={"x": 6}),)),
                AgentReply(agent="helper", text=answer),
            ],
        },
        {"calc": lambda args: str(args["x"] * 7)},
    )


def run_one(log: EventLog, name: str = "c1") -> Conversation:
    conv = Conversation.create(log, "boss", TEAM, name=name)
    answers = team().run(conv, conv.submit(UserMessage(text="what is 6*7?")))
    assert answers == ["the answer is 42"]
    return conv


def test_a_delegation_conversation_is_stored_and_rebuilds_to_the_same_state(log: EventLog) -> None:
    conv = run_one(log)
    kinds = [e.kind for e in conv.history()]
    assert kinds == [
        "started",
        "user_message",
        "agent_reply",  # boss delegates
        "agent_reply",  # helper calls calc
        "tool_result",
        "agent_reply",  # helper answers: pop
        "agent_reply",  # boss answers the user
    ]
    again = Conversation.open(log, "c1")
    assert again.state == conv.state
    assert again.state.status == "idle"
    assert (again.state.pushes, again.state.pops) == (1, 1)


def test_a_rejected_event_is_never_stored(log: EventLog) -> None:
    conv = Conversation.create(log, "boss", TEAM, name="c1")
    conv.submit(UserMessage(text="hi"))
    before = log.branch("c1").length
    with pytest.raises(EventRejected, match="'helper', but 'boss' is on top"):
        conv.submit(AgentReply(agent="helper", text="I am not on top"))
    with pytest.raises(EventRejected, match="no frame is waiting"):
        conv.submit(ToolResult(agent="boss", call_id="nope", name="calc", output="1"))
    # a batch with a bad event in the middle stores none of it
    with pytest.raises(EventRejected):
        conv.submit(AgentReply(agent="boss", text="ok"), UserMessage(text="too soon?"), UserMessage(text="x"))
    assert log.branch("c1").length == before
    assert Conversation.open(log, "c1").state == conv.state


def test_a_bad_team_creates_nothing(log: EventLog) -> None:
    with pytest.raises(EventRejected, match="unknown agents"):
        Conversation.create(log, "boss", {"boss": ["ghost"]}, name="bad")
    assert log.conversations() == []


def test_a_second_writer_cannot_interleave(log: EventLog) -> None:
    a = Conversation.create(log, "boss", TEAM, name="c1")
    b = Conversation.open(log, "c1")
    a.submit(UserMessage(text="first"))
    with pytest.raises(Conflict, match="another writer appended first"):
        b.submit(UserMessage(text="second"))
    assert [e.kind for e in log.history("c1")] == ["started", "user_message"]


def test_rewind_forks_and_the_fork_continues_on_its_own(log: EventLog) -> None:
    conv = run_one(log)
    helper_answer = 5
    fork = conv.rewind(helper_answer)  # just after the helper's answer popped back to boss
    assert fork.branch.name == "b1" and log.conversation("c1").active == "b1"
    assert fork.state == fold(conv.history()[: helper_answer + 1])
    assert pending(fork.state) == [CallAgent(frame=fork.state.stack[0], depth=1)]
    answers = ScriptedTeam({"boss": [AgentReply(agent="boss", text="forty-two")]}).run(
        fork, pending(fork.state)
    )
    assert answers == ["forty-two"]
    assert [e.kind for e in fork.history()][: helper_answer + 1] == [e.kind for e in conv.history()][
        : helper_answer + 1
    ]
    assert log.branch("c1", "main").length == 7  # the parent is untouched
    assert fork.history()[-1].text == "forty-two"  # type: ignore[union-attr]
    with pytest.raises(SequenceOutOfRange):
        conv.rewind(7)
    with pytest.raises(SequenceOutOfRange):
        conv.rewind(-1)


def test_rewind_mid_delegation_restores_the_stack(log: EventLog) -> None:
    conv = run_one(log)
    fork = conv.rewind(3)  # just after the helper asked for calc
    assert [f.agent for f in fork.state.stack] == ["boss", "helper"]
    assert pending(fork.state) == [
        RunTools(agent="helper", calls=(ToolCall(id="t1", name="calc", arguments={"x": 6}),))
    ]


def test_snapshots_are_written_and_used(log: EventLog, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P2E_SNAPSHOT_EVERY", "4")  # read when needed, not at import
    conv = Conversation.create(log, "boss", TEAM, name="c1")
    for i in range(5):  # 5 rounds of 2 events each, plus the start event: 11 events
        conv.submit(UserMessage(text=f"q{i}"))
        conv.submit(AgentReply(agent="boss", text=f"a{i}"))
    snap = log.load_snapshot(conv.branch)
    assert snap is not None and snap[0] == 8
    # the snapshot is the state after 8 events: rebuilding from it equals a replay from zero
    assert rebuild(log, conv.branch) == fold(conv.history())
    # a snapshot that no longer parses only costs a longer replay
    log.save_snapshot(conv.id, "main", 8, b"{not json")
    assert rebuild(log, conv.branch) == conv.state


def test_limits_end_the_conversation_with_a_failed_event(log: EventLog) -> None:
    conv = Conversation.create(log, "boss", {"boss": ["boss"]}, limits=Limits(max_depth=3), name="loop")
    replies = [AgentReply(agent="boss", tool_calls=(delegate(f"d{i}", "boss", "again"),)) for i in range(5)]
    ScriptedTeam({"boss": replies}).run(conv, conv.submit(UserMessage(text="recurse")))
    last = conv.history()[-1]
    assert last.kind == "failed"
    assert last.code == "delegation_cycle"  # type: ignore[union-attr]
    assert "boss -> boss -> boss -> boss" in last.message  # type: ignore[union-attr]
    assert Conversation.open(log, "loop").state.status == "failed"


def test_artifacts_resolve_to_their_canonical_branch_and_diff(log: EventLog) -> None:
    conv = run_one(log)
    fork = conv.rewind(5)
    ScriptedTeam({"boss": [AgentReply(agent="boss", text="the answer is forty-two")]}).run(
        fork, pending(fork.state)
    )

    inherited = artifacts.get(log, "c1/b1/4")
    assert inherited.ref == "c1/main/4" and inherited.kind == "tool_result"
    assert inherited.answers == "c1/main/3"  # the helper's reply that called calc
    pop = artifacts.get(log, "c1/main/5")
    assert pop.answers == "c1/main/2"  # the helper's answer answers boss's delegate call

    text = artifacts.diff(artifacts.get(log, "c1/main/6"), artifacts.get(log, "c1/b1/6"))
    assert '-text: "the answer is 42"' in text and '+text: "the answer is forty-two"' in text
    assert artifacts.diff(inherited, artifacts.get(log, "c1/main/4")) == ""

    replies = artifacts.list_artifacts(log, "c1", kind="agent_reply", agent="boss")
    assert [a.ref for a in replies] == ["c1/main/2", "c1/main/6", "c1/b1/6"]
    assert [a.ref for a in artifacts.list_artifacts(log, "c1", branch="b1", kind="tool_result")] == [
        "c1/main/4"
    ]

    for bad in ("c1/main", "c1/main/x", "c1/nope/1", "c1/main/99", "nope/main/1"):
        with pytest.raises(UnknownArtifact):
            artifacts.get(log, bad)
