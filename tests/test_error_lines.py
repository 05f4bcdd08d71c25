"""Errors raised inside Ray actors reach events, rows and the CLI as one clean line: the
original exception's type and message, not a colored remote traceback."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from pydantic import ValidationError

import p2e.api
from p2e.api import run_rollout
from p2e.errors import LINE_MAX, InvalidArgument, log_failure, one_line
from p2e.events import Failed, Limits
from p2e.store import EventLog

ROOT = Path(__file__).resolve().parent.parent


def assert_clean(line: str, names: str) -> None:
    assert "\x1b" not in line and "Traceback" not in line and "ray::" not in line, line
    assert "\n" not in line and len(line) <= LINE_MAX + 100, line
    assert names in line, line


@ray.remote
def _raise(kind: str) -> None:
    if kind == "p2e":
        raise InvalidArgument("the \x1b[31mwidget\x1b[0m is bent; straighten it\nsecond line")
    raise ValueError("bad value " + "x" * 1000)


@ray.remote
def _call_raise() -> None:
    ray.get(_raise.remote("value"))  # an actor or task calling another: nested task errors


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: _raise.remote("p2e"), "the widget is bent; straighten it"),
        (lambda: _raise.remote("value"), "ValueError: bad value xxx"),
        (lambda: _call_raise.remote(), "ValueError: bad value xxx"),
    ],
)
def test_a_remote_error_is_the_original_type_and_first_line(ray_session: None, make, expected: str) -> None:
    with pytest.raises(Exception) as info:
        ray.get(make())
    assert "ray::" in str(info.value)  # what was stored before: the remote traceback
    line = one_line(info.value)
    assert_clean(line, expected)
    assert len(line) <= LINE_MAX and "second line" not in line


def test_local_errors_become_one_line_too() -> None:
    assert one_line(KeyError()) == "KeyError"
    assert one_line(RuntimeError("\n\n  \x1b[1mboom\x1b[0m\tnow \x07\nmore")) == "RuntimeError: boom now"
    with pytest.raises(ValidationError) as info:
        Limits(max_steps="many")  # type: ignore[arg-type]
    assert one_line(info.value).startswith("ValidationError: max_steps: Input should be a valid integer")


def test_the_log_gets_the_traceback_of_a_bug_and_one_line_for_a_p2e_error(
    ray_session: None, caplog: pytest.LogCaptureFixture
) -> None:
    log = logging.getLogger("p2e.test")
    for kind in ("value", "p2e"):
        with pytest.raises(Exception) as info:
            ray.get(_raise.remote(kind))
        with caplog.at_level(logging.WARNING, "p2e.test"):
            log_failure(log, "step", info.value)
    bug, expected = caplog.records
    assert bug.levelname == "ERROR" and bug.exc_info is not None and "ray::" in caplog.text  # all of it
    assert expected.levelname == "WARNING" and expected.exc_info is None
    assert expected.getMessage() == "step: the widget is bent; straighten it"
    caplog.clear()
    with caplog.at_level(logging.DEBUG, "p2e.test"):
        log_failure(log, "step", info.value)
    assert caplog.records[0].exc_info is not None  # debugging: the traceback too


# --- end to end: a model that fails inside an AgentActor -------------------------------------------


@pytest.fixture
def failing_team(tmp_path: Path) -> Path:
    """One agent on a mock rules set that answers nothing: its model call raises in the actor."""
    mock = tmp_path / "mock"
    mock.mkdir()
    (mock / "mute.yaml").write_text(yaml.safe_dump({"rules": [{"agent": "nobody", "text": "-"}]}))
    team = {
        "agents": {"lead": {"model": "mock/mute", "persona": "You lead.", "placement": "actor"}},
        "providers": {"mock": {"rules_dirs": [str(mock)]}},
    }
    (tmp_path / "agents.yaml").write_text(yaml.safe_dump(team))
    return tmp_path / "agents.yaml"


def test_an_agent_error_in_a_conversation_is_one_clean_line(
    ray_session: None, store_url: str, namespace: str, failing_team: Path
) -> None:
    rt = p2e.api.init(agents=failing_team, store_url=store_url, namespace=namespace)
    try:
        result = rt.chat("lead", "mute").send("hello?")
        last = rt.log.history("mute")[-1]
    finally:
        rt.shutdown()
    assert result.status == "failed" and isinstance(last, Failed) and last.code == "agent_error"
    assert_clean(last.message, "agent 'lead': mock rules file ")
    assert "mute.yaml: no rule matches agent 'lead'" in last.message
    assert result.error == f"agent_error: {last.message}"


def test_an_agent_error_in_a_rollout_row_is_one_clean_line(
    ray_session: None, store_url: str, namespace: str, tmp_path: Path, failing_team: Path, log: EventLog
) -> None:
    spec = {
        "name": "mute",
        "agents": str(failing_team),
        "teams": [{"id": "t", "root": "lead"}],
        "scenarios": [{"id": "s", "message": "hello?"}],
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    (row,) = run_rollout(tmp_path / "spec.yaml", store_url=store_url, namespace=namespace).rows
    assert row.status == "failed" and row.error is not None
    assert_clean(row.error, "agent 'lead': mock rules file ")
    last = log.history(row.conversation)[-1]
    assert isinstance(last, Failed) and last.message in row.error


@ray.remote
def _raise_remote_p2e() -> None:
    ray.get(_raise.remote("p2e"))


def test_the_cli_turns_an_unexpected_error_into_one_line_and_exit_70(
    cli: Any, monkeypatch: pytest.MonkeyPatch, ray_session: None
) -> None:
    def broken(path: str) -> None:
        raise RuntimeError("the flux capacitor\nmelted")

    monkeypatch.setattr("p2e.cli.agent.load_team", broken)
    code, out, err = cli("agent", "list")
    assert code == 70 and "Traceback" not in out + err
    (line,) = err.strip().splitlines()
    assert line.startswith(
        "error: RuntimeError: the flux capacitor (unexpected: run again with P2E_LOG_LEVEL"
    )

    def remote_p2e(path: str) -> None:  # a p2e error raised in an actor, two calls deep: its own line
        ray.get(_raise_remote_p2e.remote())

    monkeypatch.setattr("p2e.cli.agent.load_team", remote_p2e)
    code, out, err = cli("agent", "list")
    assert code == InvalidArgument.exit_code and "Traceback" not in out + err
    assert err.startswith("error: the ") and "is bent; straighten it" in err and "\x1b" not in err, err
    assert "ray::" not in err
