"""The `p2e` command as a user runs it: output they read, exit codes they script against."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Cli

from p2e.conversation import Conversation
from p2e.events import AgentReply, ToolCall, UserMessage
from p2e.scripted import ScriptedTeam
from p2e.store import EventLog

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def demo(log: EventLog, store_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Conversation:
    monkeypatch.setenv("COLUMNS", "200")
    conv = Conversation.create(log, "boss", {"boss": ["helper"], "helper": []}, name="demo")
    replies = {
        "boss": [
            AgentReply(
                agent="boss",
                tool_calls=(
                    ToolCall(id="d1", name="delegate", arguments={"agent": "helper", "task": "look it up"}),
                ),
            ),
            AgentReply(agent="boss", text="It is sunny."),
        ],
        "helper": [
            AgentReply(
                agent="helper", tool_calls=(ToolCall(id="w1", name="weather", arguments={"city": "Oslo"}),)
            ),
            AgentReply(agent="helper", text="sunny"),
        ],
    }
    ScriptedTeam(replies, {"weather": lambda a: "sunny"}).run(conv, conv.submit(UserMessage(text="weather?")))
    return conv


def test_list_show_stack_and_branches(cli: Cli, demo: Conversation) -> None:
    code, out, _ = cli("conversation", "list")
    assert code == 0 and "demo" in out and "boss" in out

    code, out, _ = cli("conversation", "show", "demo")
    assert code == 0
    assert "delegate -> helper: look it up" in out and "weather(city='Oslo')" in out
    assert "status idle, 7 events, 4 steps, depth 1" in out

    code, out, _ = cli("conversation", "stack", "demo", "--at", "3")
    assert code == 0
    assert out.index("helper") < out.index("boss")  # the delegate is drawn above its caller
    assert "tools" in out and "delegating" in out

    code, out, _ = cli("conversation", "show", "demo", "--from", "5", "--to", "6")
    assert "It is sunny." in out and "look it up" not in out


def test_rewind_then_checkout(cli: Cli, demo: Conversation, log: EventLog) -> None:
    code, out, _ = cli("conversation", "rewind", "demo", "2", "--name", "retry")
    assert code == 0 and "retry" in out
    assert log.conversation("demo").active == "retry"
    assert log.branch("demo").length == 3

    code, out, _ = cli("conversation", "branches", "demo")
    assert "retry 3 events (0 own, forked at 3)" in out and "checked out" in out

    code, out, _ = cli("conversation", "checkout", "demo", "main")
    assert code == 0 and log.conversation("demo").active == "main"


def test_artifact_commands(cli: Cli, demo: Conversation) -> None:
    code, out, _ = cli("artifact", "list", "demo", "--kind", "tool_result")
    assert code == 0 and "demo/main/4" in out and "1 artifacts" in out

    code, out, _ = cli("artifact", "show", "demo/main/4")
    assert code == 0 and "answers demo/main/3" in out and '"output": "sunny"' in out

    code, out, _ = cli("artifact", "diff", "demo/main/5", "demo/main/6")
    assert code == 0 and '-text: "sunny"' in out and '+text: "It is sunny."' in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["conversation", "show", "nope"], "unknown conversation 'nope'"),
        (
            ["conversation", "stack", "demo", "--branch", "ghost"],
            "has no branch 'ghost' (its branches: main)",
        ),
        (
            ["conversation", "rewind", "demo", "7"],
            "sequence number 7 is out of range; this branch holds events 0..6",
        ),
        (["conversation", "rewind", "demo", "--", "-1"], "sequence number -1 is out of range"),
        (["conversation", "stack", "demo", "--at", "99"], "sequence number 99 is out of range"),
        (["conversation", "show", "demo", "--from", "9"], "sequence number 9 is out of range"),
        (["conversation", "checkout", "demo", "ghost"], "has no branch 'ghost'"),
        (
            ["conversation", "rewind", "demo", "1", "--name", "bad name!"],
            "branch name 'bad name!' is not allowed",
        ),
        (["artifact", "show", "demo/main"], "refs look like CONVERSATION/BRANCH/SEQ"),
        (["artifact", "show", "demo/main/42"], "unknown artifact 'demo/main/42'"),
        (["artifact", "diff", "demo/main/1", "nope/main/1"], "unknown artifact 'nope/main/1'"),
    ],
)
def test_bad_input_is_one_clear_line_and_a_nonzero_exit(
    cli: Cli, demo: Conversation, args: list[str], message: str
) -> None:
    code, out, err = cli(*args)
    assert code != 0
    assert message in " ".join(err.split())
    assert "Traceback" not in err + out


def test_unknown_kind_is_a_usage_error(cli: Cli, demo: Conversation) -> None:
    code, _, err = cli("artifact", "list", "demo", "--kind", "bogus")
    assert code == 2 and "unknown kind 'bogus'" in err


def test_the_demo_runs_and_leaves_an_inspectable_conversation(
    store_env: dict[str, str], log: EventLog
) -> None:
    env = {**os.environ, **store_env, "COLUMNS": "160"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "branching_demo.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "planner answers: Done: tomorrow is sunny" in proc.stdout
    assert "planner answers: Done: sunny tomorrow, and the invitation is a haiku." in proc.stdout
    branches = {b.name: b for b in log.branches("demo")}
    assert set(branches) == {"main", "b1"} and branches["b1"].parent == "main"
    assert log.conversation("demo").active == "b1"


def test_list_shows_the_healthy_conversations_and_names_a_broken_one(
    cli: Cli, demo: Conversation, log: EventLog
) -> None:
    log.r.zadd(log.keys.convs, {"ghost": 1.0})  # listed, but it has no record
    code, out, _ = cli("conversation", "list")
    assert code == 1
    assert "demo" in out
    assert "corrupt or foreign data at" in out and ":conv:ghost" in out
