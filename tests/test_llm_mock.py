"""The mock provider: matchers, templates, errors that name the file, and the default rules set
driving a whole planner -> researcher -> writer conversation through the machine and the store."""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from p2e.conversation import Conversation
from p2e.errors import InvalidArgument
from p2e.events import AgentReply, Failed, ToolCall, ToolResult, UserMessage
from p2e.llm.base import Message, ModelRequest, ModelResponse, Provider
from p2e.llm.mock import MockProvider, NoRuleMatched
from p2e.machine import CallAgent, Fail, RejectCalls, Reply, RunTools
from p2e.store import EventLog
from p2e.transcript import Transcript

MOCK_DIR = Path(__file__).resolve().parents[1] / "experiments" / "mock"
TEAM = {"planner": ["researcher", "writer"], "researcher": [], "writer": []}


# --- a small interpreter: the machine's commands, performed with a provider ---------------------


def fake_tool(call: ToolCall) -> str:
    args = call.arguments
    if call.name == "weather":  # shaped like the built-in weather tool's output
        return json.dumps({"city": args["city"], "condition": "sunny", "temperature_c": 24, "wind_kph": 10})
    if call.name == "calculator":
        return {"24 * 9 / 5 + 32": "75.2"}.get(args["expression"], "?")
    if call.name == "clock":
        return "2026-11-25 12:00 UTC"
    raise KeyError(call.name)


async def drive(conv: Conversation, provider: Provider, text: str, model: str = "mock/default") -> list[str]:
    """Send a user message and perform the commands until the machine waits; the root's answers."""
    answers: list[str] = []
    todo = conv.submit(UserMessage(text=text))
    while todo:
        cmd = todo.pop(0)
        if isinstance(cmd, CallAgent):
            transcript, _ = Transcript.rebuild(conv.history())  # what the frame's agent has seen
            messages = transcript.messages()
            turn = sum(1 for m in messages if m.role == "assistant")
            request = ModelRequest(
                model=model,
                messages=tuple(messages),
                agent=cmd.frame.agent,
                turn=turn,
                conversation=conv.id,
                branch=conv.branch.name,
                seq=conv.length,
            )
            r = await provider.complete(request)
            reply = AgentReply(
                agent=cmd.frame.agent, text=r.text, tool_calls=r.tool_calls, model=r.model, usage=r.usage
            )
            new = conv.submit(reply)
        elif isinstance(cmd, RunTools):
            new = conv.submit(
                *[
                    ToolResult(agent=cmd.agent, call_id=c.id, name=c.name, output=fake_tool(c))
                    for c in cmd.calls
                ]
            )
        elif isinstance(cmd, RejectCalls):
            new = conv.submit(
                *[
                    ToolResult(
                        agent=cmd.agent, call_id=x.call.id, name=x.call.name, output=x.reason, is_error=True
                    )
                    for x in cmd.rejections
                ]
            )
        elif isinstance(cmd, Reply):
            answers.append(cmd.text)
            new = []
        elif isinstance(cmd, Fail):
            new = conv.submit(Failed(code=cmd.code, message=cmd.message))
        todo = new + todo
    return answers


# --- helpers ------------------------------------------------------------------------------------


def ask(
    provider: MockProvider,
    *messages: tuple[str, str],
    agent: str = "a",
    turn: int = 0,
    seq: int = 7,
    model: str = "mock/t",
) -> ModelResponse:
    request = ModelRequest(
        model=model,
        messages=tuple(Message(role=role, content=content) for role, content in messages),  # type: ignore[arg-type]
        agent=agent,
        turn=turn,
        seq=seq,
    )
    return asyncio.run(provider.complete(request))


def inline(rules: dict[str, Any]) -> MockProvider:
    return MockProvider({"rules": {"t": rules}})


def write(tmp_path: Path, data: Any, name: str = "t.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


# --- matchers -----------------------------------------------------------------------------------


def test_agent_matcher_is_exact() -> None:
    p = inline({"rules": [{"agent": "alice", "text": "for alice"}], "default": "other"})
    assert ask(p, ("user", "hi"), agent="alice").text == "for alice"
    assert ask(p, ("user", "hi"), agent="alice2").text == "other"


def test_turn_matcher() -> None:
    p = inline({"rules": [{"turn": 0, "text": "first"}, {"turn": 2, "text": "third"}], "default": "else"})
    assert [ask(p, ("user", "x"), turn=t).text for t in range(4)] == ["first", "else", "third", "else"]


def test_match_searches_the_last_message_and_exposes_groups() -> None:
    p = inline(
        {
            "rules": [{"match": r"(\d+) (?P<unit>km|mi)\b", "text": "{{ match[1] }} in {{ match.unit }}"}],
            "default": "no",
        }
    )
    assert ask(p, ("user", "drive 12 km please")).text == "12 in km"
    assert ask(p, ("user", "drive 12 km"), ("assistant", "ok")).text == "no"  # only the last message


def test_role_matcher_reacts_to_tool_results() -> None:
    p = inline({"rules": [{"role": "tool", "text": "got {{ last }}"}], "default": "asked"})
    assert ask(p, ("user", "q"), ("tool", "42")).text == "got 42"
    assert ask(p, ("user", "q")).text == "asked"


def test_all_given_matchers_must_hold() -> None:
    p = inline(
        {"rules": [{"agent": "a", "turn": 1, "role": "tool", "match": "ok", "text": "yes"}], "default": "no"}
    )
    assert ask(p, ("tool", "ok"), agent="a", turn=1).text == "yes"
    assert ask(p, ("tool", "ok"), agent="b", turn=1).text == "no"
    assert ask(p, ("tool", "ok"), agent="a", turn=0).text == "no"
    assert ask(p, ("user", "ok"), agent="a", turn=1).text == "no"
    assert ask(p, ("tool", "ko"), agent="a", turn=1).text == "no"


def test_first_match_wins() -> None:
    p = inline({"rules": [{"match": "a", "text": "one"}, {"match": "ab", "text": "two"}, {"text": "any"}]})
    assert ask(p, ("user", "ab")).text == "one"
    assert ask(p, ("user", "zz")).text == "any"  # a rule without matchers matches everything


# --- answers ------------------------------------------------------------------------------------


def test_templates_see_last_agent_turn_task_and_results() -> None:
    p = inline(
        {
            "rules": [
                {
                    "text": "{{ agent }}/{{ turn }}/{{ role }}: task={{ task }} last={{ last }} "
                    "results={{ results | join(',') }}",
                    "tool_calls": [
                        {"name": "echo", "arguments": {"said": "{{ last }}", "n": 3, "l": ["{{ agent }}"]}}
                    ],
                }
            ]
        }
    )
    r = ask(
        p,
        ("system", "persona"),
        ("user", "the task"),
        ("assistant", "calling"),
        ("tool", "r1"),
        ("tool", "r2"),
        agent="bob",
        turn=1,
    )
    assert r.text == "bob/1/tool: task=the task last=r2 results=r1,r2"
    assert r.tool_calls[0].arguments == {"said": "r2", "n": 3, "l": ["bob"]}


def test_delegate_shorthand_is_a_delegate_tool_call_after_the_other_calls() -> None:
    p = inline(
        {
            "rules": [
                {
                    "text": "planning",
                    "tool_calls": [{"name": "clock"}],
                    "delegate": {"agent": "writer", "task": "write about {{ last }}"},
                }
            ]
        }
    )
    r = ask(p, ("user", "cats"), seq=12)
    assert r.text == "planning"
    assert r.tool_calls == (
        ToolCall(id="call_12_0", name="clock", arguments={}),
        ToolCall(id="call_12_1", name="delegate", arguments={"agent": "writer", "task": "write about cats"}),
    )
    assert r.tool_calls[1].is_delegation
    # a list of delegations is accepted too; without a seq the ids use the turn
    p = inline({"rules": [{"delegate": [{"agent": "x", "task": "1"}, {"agent": "y", "task": "2"}]}]})
    r = ask(p, ("user", "go"), seq=-1, turn=3)
    assert [(c.id, c.arguments["agent"]) for c in r.tool_calls] == [("call_t3_0", "x"), ("call_t3_1", "y")]


def test_replies_are_deterministic_and_usage_estimates_tokens() -> None:
    p = inline(
        {"rules": [{"text": "three word answer", "tool_calls": [{"name": "t", "arguments": {"a": 1}}]}]}
    )
    a = ask(p, ("system", "be brief"), ("user", "hello there friend"))
    b = ask(p, ("system", "be brief"), ("user", "hello there friend"))
    assert a.model_dump(exclude={"usage"}) == b.model_dump(exclude={"usage"})
    assert a.model == "mock/t"
    assert a.usage.prompt_tokens == 2 + 5  # about 4 characters a token: "be brief", "hello there friend"
    assert a.usage.completion_tokens >= 5
    assert a.usage.cost_usd == 0


def test_latency_is_simulated() -> None:
    p = inline({"latency_ms": 60, "rules": [{"text": "slow"}]})
    r = ask(p, ("user", "hi"))
    assert r.usage.latency_ms >= 60  # measured around the call: the mock waited, as configured


def test_default_answers_when_no_rule_matches() -> None:
    p = inline({"rules": [{"agent": "x", "text": "x"}], "default": "fallback for {{ agent }}: {{ last }}"})
    assert ask(p, ("user", "hm"), agent="y").text == "fallback for y: hm"
    p = inline({"default": {"delegate": {"agent": "z", "task": "help"}}})
    assert ask(p, ("user", "hm")).tool_calls[0].name == "delegate"


def test_no_match_without_default_names_the_agent_turn_and_last_message() -> None:
    p = inline({"rules": [{"agent": "x", "text": "x"}]})
    with pytest.raises(NoRuleMatched) as e:
        ask(p, ("user", "what now?"), agent="carol", turn=4)
    msg = str(e.value)
    assert "'carol'" in msg and "turn 4" in msg and "what now?" in msg and "default" in msg


def test_a_template_that_fails_to_render_names_the_rule() -> None:
    p = inline({"rules": [{"agent": "nope", "text": "n"}, {"text": "{{ lsat }}"}]})
    with pytest.raises(InvalidArgument, match=r"rules\[1\].*'lsat' is undefined"):
        ask(p, ("user", "hi"))


# --- finding and caching rules sets -------------------------------------------------------------


def test_rules_are_found_in_rules_dirs_or_by_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, {"rules": [{"text": "from dir"}]}, "team.yaml")
    p = MockProvider({"rules_dirs": [str(tmp_path / "missing"), str(tmp_path)]})
    assert ask(p, ("user", "x"), model="mock/team").text == "from dir"
    path = write(tmp_path, {"rules": [{"text": "by path"}]}, "other.yaml")
    assert ask(p, ("user", "x"), model=f"mock/{path}").text == "by path"
    monkeypatch.chdir(tmp_path)
    assert ask(p, ("user", "x"), model="mock/other.yaml").text == "by path"
    with pytest.raises(
        InvalidArgument, match=r"no mock rules set 'ghost'.*ghost\.yaml.*known sets: other, team"
    ):
        ask(p, ("user", "x"), model="mock/ghost")


def test_the_default_rules_dir_is_experiments_mock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(MOCK_DIR.parents[1])
    r = ask(MockProvider({}), ("user", "weather in Oslo?"), agent="planner", model="mock/default")
    assert r.tool_calls[0].name == "delegate"


def test_files_are_cached_and_reloaded_when_changed(tmp_path: Path) -> None:
    path = write(tmp_path, {"rules": [{"text": "v1"}]})
    p = MockProvider({"rules_dirs": [str(tmp_path)]})
    assert ask(p, ("user", "x")).text == "v1"
    _, first = p.rules_for("mock/t")
    assert p.rules_for("mock/t")[1] is first  # parsed once
    write(tmp_path, {"rules": [{"text": "v2"}]})
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # coarse clocks: force a change
    assert ask(p, ("user", "x")).text == "v2"


def test_bad_provider_settings() -> None:
    with pytest.raises(InvalidArgument, match="unknown mock provider settings: rule_dir"):
        MockProvider({"rule_dir": "x"})
    with pytest.raises(InvalidArgument, match=r"settings rules\['t'\]: rules\[0\]: no answer"):
        MockProvider({"rules": {"t": {"rules": [{"agent": "a"}]}}})


# --- bad files ----------------------------------------------------------------------------------

BAD_FILES: list[tuple[str, Any, str]] = [
    (
        "unknown rule key",
        {"rules": [{"text": "ok"}, {"matchh": "x", "text": "y"}]},
        r"rules\[1\], field 'matchh': unknown key; allowed: .*match",
    ),
    (
        "unknown top-level key",
        {"rulez": [], "default": "x"},
        r"field 'rulez': unknown key; allowed: latency_ms",
    ),
    ("bad regex", {"rules": [{"match": "(unclosed", "text": "x"}]}, r"rules\[0\], field 'match': bad regex"),
    (
        "rule without an answer",
        {"rules": [{"text": "ok"}, {"text": "ok"}, {"agent": "a", "turn": 1}]},
        r"rules\[2\]: no answer: give text, tool_calls and/or delegate",
    ),
    (
        "unknown tool call key",
        {"rules": [{"tool_calls": [{"name": "t", "args": {}}]}]},
        r"rules\[0\]\.tool_calls\[0\], field 'args': unknown key; allowed: name, arguments",
    ),
    (
        "delegate without task",
        {"rules": [{"delegate": {"agent": "w"}}]},
        r"rules\[0\]\.delegate\[0\], field 'task': Field required",
    ),
    ("bad template", {"rules": [{"text": "{{ last "}]}, r"rules\[0\], field 'text': bad Jinja template"),
    (
        "bad template in arguments",
        {"rules": [{"tool_calls": [{"name": "t", "arguments": {"a": ["{% if %}"]}}]}]},
        r"rules\[0\]\.tool_calls\[0\], field 'arguments': bad Jinja template",
    ),
    ("bad role", {"rules": [{"role": "robot", "text": "x"}]}, r"rules\[0\], field 'role': Input should be"),
    ("bad turn", {"rules": [{"turn": "first", "text": "x"}]}, r"rules\[0\], field 'turn': Input should be"),
    ("negative latency", {"latency_ms": -1, "default": "x"}, r"field 'latency_ms': Input should be greater"),
    ("unknown default key", {"default": {"txt": "x"}}, r"default, field 'txt': unknown key"),
    ("nothing to answer with", {"latency_ms": 1}, r"no rules and no default"),
    ("empty file", "", r"no rules and no default"),
    ("not a mapping", "- text: x\n", r"the top level must be a mapping"),
    ("not YAML", "rules: [\n", r"not valid YAML"),
]


@pytest.mark.parametrize(("data", "pattern"), [b[1:] for b in BAD_FILES], ids=[b[0] for b in BAD_FILES])
def test_a_bad_rules_file_is_an_error_naming_file_rule_and_field(
    tmp_path: Path, data: Any, pattern: str
) -> None:
    path = write(tmp_path, data)
    p = MockProvider({"rules_dirs": [str(tmp_path)]})
    with pytest.raises(InvalidArgument) as e:
        ask(p, ("user", "x"))
    msg = str(e.value)
    assert str(path) in msg
    assert re.search(pattern, msg), msg


def test_every_error_of_a_file_is_reported(tmp_path: Path) -> None:
    write(tmp_path, {"rules": [{"matchh": "x", "text": "y"}, {"match": "(", "text": "z"}]})
    with pytest.raises(InvalidArgument, match=r"rules\[0\], field 'matchh'.*; rules\[1\], field 'match'"):
        MockProvider({"rules_dirs": [str(tmp_path)]}).rules_for("mock/t")


def test_the_default_rules_file_is_valid() -> None:
    _, rules = MockProvider({"rules_dirs": [str(MOCK_DIR)]}).rules_for("mock/default")
    assert rules.rules and rules.default is not None


# --- the default rules set drives a whole conversation ------------------------------------------


def test_default_rules_drive_a_planner_researcher_writer_conversation(log: EventLog) -> None:
    provider = MockProvider({"rules_dirs": [str(MOCK_DIR)]})
    conv = Conversation.create(log, "planner", TEAM, name="mockdemo")
    answers = asyncio.run(drive(conv, provider, "What is the weather in Lisbon tomorrow?"))

    history = conv.history()
    steps = [(e.kind, getattr(e, "agent", None)) for e in history]
    assert steps == [
        ("started", None),
        ("user_message", None),
        ("agent_reply", "planner"),  # delegates to the researcher
        ("agent_reply", "researcher"),  # clock + weather
        ("tool_result", "researcher"),
        ("tool_result", "researcher"),
        ("agent_reply", "researcher"),  # findings: pop
        ("agent_reply", "planner"),  # delegates to the writer
        ("agent_reply", "writer"),  # the short answer: pop
        ("agent_reply", "planner"),  # answers the user
    ]
    replies = [e for e in history if isinstance(e, AgentReply)]
    assert [c.name for c in replies[1].tool_calls] == ["clock", "weather"]
    assert replies[1].tool_calls[1].arguments == {"city": "Lisbon"}
    assert replies[0].tool_calls[0].arguments["agent"] == "researcher"
    assert replies[3].tool_calls[0].arguments["agent"] == "writer"
    assert replies[2].text == "Findings: Lisbon: sunny, 24C, wind 10 km/h (checked 2026-11-25 12:00 UTC)"
    assert (
        answers
        == [replies[-1].text]
        == ["In short: Lisbon: sunny, 24C, wind 10 km/h (checked 2026-11-25 12:00 UTC)."]
    )
    assert all(r.model == "mock/default" and r.usage and r.usage.completion_tokens > 0 for r in replies)
    assert conv.state.status == "idle"
    assert (conv.state.pushes, conv.state.pops) == (2, 2)
    # what the store holds replays to the same state
    assert Conversation.open(log, "mockdemo").state == conv.state

    # a follow-up question runs the same way again
    rome = asyncio.run(drive(conv, provider, "And in Rome?"))
    assert rome == ["In short: Rome: sunny, 24C, wind 10 km/h (checked 2026-11-25 12:00 UTC)."]
    assert conv.state.status == "idle"
