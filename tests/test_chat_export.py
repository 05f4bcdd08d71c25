"""`p2e rollout export --format chat`: every line is an OpenAI chat fine-tuning example, checked
against the types the `openai` package ships (made strict: no unknown key anywhere, lists read
eagerly) and against the rules fine-tuning enforces; each example is what its agent's model was
sent (system message, tools) plus what it answered, for the root or for every frame."""

from __future__ import annotations

import collections.abc
import json
import time
import types
import typing
from pathlib import Path
from typing import Any, NotRequired, Required

import pytest
import yaml
from conftest import Cli
from openai.types.chat.completion_create_params import CompletionCreateParamsBase
from openai_server import OpenAIServer, Reply
from pydantic import ConfigDict, TypeAdapter, with_config
from typing_extensions import TypedDict, is_typeddict

from p2e.api import run_rollout
from p2e.conversation import Conversation
from p2e.errors import InvalidArgument
from p2e.events import AgentReply, Limits, ToolCall, UserMessage
from p2e.rollouts.export import write_trajectories
from p2e.rollouts.store import RolloutInfo, RolloutStore, Row
from p2e.store import EventLog

# --- the schema: OpenAI's request types for the keys a fine-tuning line has -------------------------

_strict: dict[Any, Any] = {}


def strict(tp: Any) -> Any:
    """`tp` (one of openai's TypedDict params) as pydantic validates it strictly: every TypedDict
    forbids unknown keys and takes no coercion, an `Iterable` is a list (pydantic reads an
    Iterable lazily, so would not check its items)."""
    if is_typeddict(tp):
        if tp not in _strict:
            hints = typing.get_type_hints(tp, include_extras=True)
            fields = {}
            for key, hint in hints.items():
                required = tp.__total__  # (openai's modules postpone annotations: see `Required`)
                while typing.get_origin(hint) in (Required, NotRequired):
                    required = typing.get_origin(hint) is Required
                    (hint,) = typing.get_args(hint)
                fields[key] = (Required if required else NotRequired)[strict(hint)]
            _strict[tp] = with_config(ConfigDict(extra="forbid", strict=True))(TypedDict(tp.__name__, fields))  # type: ignore[operator]
        return _strict[tp]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (collections.abc.Iterable, list):
        return list[strict(args[0])]  # type: ignore[misc]
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(strict(a) for a in args)]  # noqa: UP007
    if origin is typing.Annotated:
        return strict(args[0])
    return tp


_REQUEST = typing.get_type_hints(CompletionCreateParamsBase, include_extras=True)
_KEYS = {  # a line holds the request's messages, and may hold its tools and parallel_tool_calls
    "messages": _REQUEST["messages"],
    "tools": NotRequired[_REQUEST["tools"]],
    "parallel_tool_calls": NotRequired[_REQUEST["parallel_tool_calls"]],
}
Example = TypedDict("Example", _KEYS)  # type: ignore[misc]
EXAMPLE = TypeAdapter(strict(Example))


def fine_tuning_problems(example: dict[str, Any]) -> list[str]:
    """What OpenAI's fine-tuning checks of a chat example would refuse (beyond the types)."""
    problems = []
    messages, tools = example["messages"], example.get("tools", [])
    names = [t["function"]["name"] for t in tools]
    if tools and [t["type"] for t in tools] != ["function"] * len(tools):
        problems.append("only function tools can be trained on")
    if len(set(names)) != len(names):
        problems.append(f"tool names repeat: {names}")
    if [m["role"] for m in messages].count("system") != 1 or messages[0]["role"] != "system":
        problems.append("one system message, first")
    if messages[-1]["role"] != "assistant" or messages[-1].get("tool_calls"):
        problems.append("the last message is the assistant's answer")
    pending: list[str] = []
    for i, m in enumerate(messages):
        if m["role"] == "tool":
            if m["tool_call_id"] not in pending:
                problems.append(f"message {i} answers no open call: {m['tool_call_id']}")
            else:
                pending.remove(m["tool_call_id"])
            continue
        if pending:
            problems.append(f"message {i} comes before calls {pending} are answered")
        for call in m.get("tool_calls") or []:
            if call["function"]["name"] not in names:
                problems.append(f"a call to {call['function']['name']!r}, not one of the tools {names}")
            if not isinstance(json.loads(call["function"]["arguments"]), dict):
                problems.append("arguments are a JSON object")
            pending.append(call["id"])
    ids = [c["id"] for m in messages for c in m.get("tool_calls") or []]
    if len(set(ids)) != len(ids):
        problems.append(f"tool call ids repeat: {ids}")
    return problems


def check_line(line: str) -> dict[str, Any]:
    example = json.loads(line)
    assert EXAMPLE.validate_python(example) == example  # (strict: nothing dropped or coerced)
    assert set(example) <= {"messages", "tools", "parallel_tool_calls"}
    assert fine_tuning_problems(example) == []
    return example


def test_the_checks_refuse_what_openai_refuses() -> None:
    """The validator is not a rubber stamp: each of these lines is refused."""
    good = {
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": None, "tool_calls": [_call("c1", "f", "{}")]},
            {"role": "tool", "tool_call_id": "c1", "content": "r"},
            {"role": "assistant", "content": "a"},
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "parallel_tool_calls": True,
    }
    check_line(json.dumps(good))
    bad = [
        {**good, "metadata": {}},
        {**good, "parallel_tool_calls": "yes"},
        {**good, "messages": [{**good["messages"][0], "weight": "x"}, *good["messages"][1:]]},
        {**good, "messages": [*good["messages"][:2], {**good["messages"][2], "tool_calls": [{"id": "c1"}]}]},
        {**good, "messages": good["messages"][1:]},
        {**good, "messages": good["messages"][:4]},
        {**good, "messages": [*good["messages"][:3], good["messages"][4]]},
        {**good, "tools": []},
    ]
    for line in bad:
        with pytest.raises((AssertionError, ValueError)):
            check_line(json.dumps(line))


def _call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


# --- a real rollout: a lead with a tool that delegates to a clerk, over the OpenAI client ----------

HOSTILE = (
    "[bold red]boom[/] <script>alert(1)</script> {{ x }} \x00\x07\x1b[2J\r\n\u2028\u2029\x85 \U0001f600 ‮"
)
TASK = "Add these: " + HOSTILE
ANSWER = "The total is 7. " + HOSTILE + "y" * 100_000
CLERK_ANSWER = "2 " + HOSTILE

AGENTS = {
    "agents": {
        "lead": {
            "model": "openai/test-model",
            "persona": "LEAD [b]{{ agent.id }}[/b] <|im_start|> may use "
            "{% for t in tools %}{{ t.name }} {% endfor %}",
            "tools": ["calculator"],
            "can_delegate_to": ["clerk"],
        },
        "clerk": {
            "description": "adds <numbers> & [things]",
            "model": "openai/test-model",
            "persona": "CLERK: compute.",
            "tools": ["calculator"],
        },
    },
}


def _respond(body: dict[str, Any]) -> Reply:
    """The lead calls the calculator and delegates in one reply, the clerk calls the calculator;
    each answers once its tools have."""
    lead = body["messages"][0]["content"].startswith("LEAD")
    if body["messages"][-1]["role"] == "tool":
        return Reply(text=ANSWER if lead else CLERK_ANSWER)
    if lead:
        delegate = json.dumps({"agent": "clerk", "task": TASK})
        return Reply(
            text=None, tool_calls=[("calculator", '{"expression": "2 + 3"}'), ("delegate", delegate)]
        )
    return Reply(text="adding", tool_calls=[("calculator", '{"expression": "1 + 1"}')])


@pytest.fixture
def rollout(
    ray_session: None, store_url: str, namespace: str, tmp_path: Path, openai_server: OpenAIServer
) -> str:
    openai_server.responder = _respond
    agents = {**AGENTS, "providers": {"openai": {"base_url": openai_server.url, "max_retries": 0}}}
    (tmp_path / "agents.yaml").write_text(yaml.safe_dump(agents))
    spec = {
        "name": "chat",
        "agents": "agents.yaml",
        "teams": [{"id": "desk", "root": "lead"}],
        "scenarios": [{"id": "sum", "message": "What is 2 + 3 + 1 + 1? " + HOSTILE}],
        "limits": {"max_tool_calls_per_turn": 2},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    result = run_rollout(tmp_path / "spec.yaml", store_url=store_url, namespace=namespace)
    assert [r.status for r in result.rows] == ["done"], result.rows
    return result.id


def _rows(log: EventLog, rid: str) -> list[Row]:
    return RolloutStore(log).rows(rid)


def _export(log: EventLog, rid: str, path: Path, **kw: Any) -> list[dict[str, Any]]:
    n = write_trajectories(log, _rows(log, rid), path, **kw)
    text = path.read_text()
    assert len(text.splitlines()) == text.count("\n") == n  # no text breaks a line, for any reader
    return [check_line(line) for line in text.split("\n")[:-1]]


def test_every_frame_is_a_valid_example_of_what_its_model_was_sent(
    rollout: str,
    log: EventLog,
    tmp_path: Path,
    openai_server: OpenAIServer,
    store_env: dict[str, str],
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lead, clerk = _export(log, rollout, tmp_path / "all.jsonl", agent="all")
    # each example: a request the model got (system message, tools), then what it answered
    sent = [(r["messages"], r["tools"]) for r in openai_server.requests]
    for example in (lead, clerk):
        assert (example["messages"][:-1], example["tools"]) in sent
        assert example["parallel_tool_calls"] is True  # two calls per reply allowed
    assert lead["messages"][0]["content"] == "LEAD [b]lead[/b] <|im_start|> may use calculator delegate"
    assert [t["function"]["name"] for t in lead["tools"]] == ["calculator", "delegate"]
    delegate = lead["tools"][1]["function"]
    assert delegate["parameters"]["properties"]["agent"]["enum"] == ["clerk"]
    assert "adds <numbers> & [things]" in delegate["description"]
    # the delegate's frame as it saw it: its task, its call, its answer; the lead gets the answer
    assert [m["role"] for m in clerk["messages"]] == ["system", "user", "assistant", "tool", "assistant"]
    assert clerk["messages"][1]["content"] == TASK and clerk["messages"][-1]["content"] == CLERK_ANSWER
    assert [t["function"]["name"] for t in clerk["tools"]] == ["calculator"]
    results = {m["tool_call_id"]: m["content"] for m in lead["messages"] if m["role"] == "tool"}
    calls = {c["function"]["name"]: c["id"] for c in lead["messages"][2]["tool_calls"]}
    assert results == {calls["calculator"]: "5", calls["delegate"]: CLERK_ANSWER}
    assert lead["messages"][-1] == {"role": "assistant", "content": ANSWER}  # huge and hostile, intact

    # the default: the root's frames only; or one agent's
    assert _export(log, rollout, tmp_path / "root.jsonl") == [lead]
    assert _export(log, rollout, tmp_path / "clerk.jsonl", agent="clerk") == [clerk]
    with pytest.raises(InvalidArgument, match="unknown agent 'nope'; the agents are: clerk, lead"):
        _export(log, rollout, tmp_path / "nope.jsonl", agent="nope")
    assert not (tmp_path / "nope.jsonl").exists()
    # provenance, on request (OpenAI's upload may refuse the extra key)
    rows = _rows(log, rollout)
    assert write_trajectories(log, rows, tmp_path / "m.jsonl", agent="clerk", metadata=True) == 1
    meta = json.loads((tmp_path / "m.jsonl").read_text())["metadata"]
    assert meta["agent"] == "clerk" and meta["scenario"] == "sum" and meta["rollout"] == rollout

    # the command line (one rollout serves both: it is the slow part)
    monkeypatch.chdir(tmp_path)
    code, out, err = cli("rollout", "export", rollout, "--format", "chat", "--agent", "all", "-o", "a.jsonl")
    assert code == 0 and "wrote 2 trajectories to a.jsonl" in out, err
    assert [check_line(x) for x in Path("a.jsonl").read_text().splitlines()] == [lead, clerk]
    code, _, err = cli("rollout", "export", rollout, "--agent", "clerk")
    assert code == 2 and "add --format chat" in err
    code, out, err = cli("rollout", "export", "--help")
    assert code == 0 and "--agent" in out and "parallel_tool_calls" in " ".join(out.split())


# --- by hand, without Ray: a variant's overrides, one call per reply, failed episodes left out ---


def test_the_variant_and_limits_an_episode_ran_under_are_exported(log: EventLog, tmp_path: Path) -> None:
    agents = {"agents": {"lead": {"persona": "LEAD", "can_delegate_to": ["clerk"]}, "clerk": {}}}
    now = time.time()
    info = RolloutInfo(
        id="r1",
        name="r",
        spec_path=str(tmp_path / "spec.yaml"),
        spec={"agents": agents},
        created=now,
        updated=now,
    )
    RolloutStore(log).create(info)
    overrides = {"lead": {"persona": "OVERRIDDEN {{ agent.id }}"}}
    team = {"lead": ("clerk",), "clerk": ()}
    conv = Conversation.create(log, "lead", team, Limits(max_tool_calls_per_turn=1), overrides=overrides)
    call = ToolCall(id="c1", name="delegate", arguments={"agent": "clerk", "task": "t"})
    conv.submit(
        UserMessage(text="hi"),
        AgentReply(agent="lead", tool_calls=(call,)),
        AgentReply(agent="clerk", text="done"),
        AgentReply(agent="lead", text="final"),
    )
    row = Row(
        rollout="r1", episode="e", team="t", variant="v", scenario="s", repeat=0, seed=0, status="done",
        conversation=conv.id,
    )  # fmt: skip
    failed = row.model_copy(update={"episode": "f", "status": "failed"})
    assert write_trajectories(log, [row, failed], tmp_path / "x.jsonl", agent="all") == 2
    lead, clerk = [check_line(x) for x in (tmp_path / "x.jsonl").read_text().splitlines()]
    assert lead["messages"][0] == {"role": "system", "content": "OVERRIDDEN lead"}
    assert lead["parallel_tool_calls"] is False and clerk["parallel_tool_calls"] is False
    assert "tools" not in clerk  # it has none: the key is left out, not sent empty
    assert [m["content"] for m in clerk["messages"][1:]] == ["t", "done"]
