"""`p2e chat`, `p2e agent` and `p2e conversation replay` as a user runs them (in a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from p2e.store import EventLog

ROOT = Path(__file__).resolve().parents[1]
P2E = [sys.executable, "-m", "p2e.cli"]


def p2e(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*P2E, *args],
        input=stdin,
        env={**os.environ, **env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def test_a_chat_session_with_rewind_and_resume(store_env: dict[str, str], log: EventLog) -> None:
    session = "\n".join(
        [
            "What is the weather in Oslo?",
            "/rewind 1",  # mid-turn: the agents had not answered yet
            "hello?",  # refused, with the way out
            "/resume",  # the agents finish the turn on the new branch
            "/branches",
            "/nonsense",
            "/exit",
        ]
    )
    proc = p2e(store_env, "chat", "planner", "--local", "-c", "trip", stdin=session)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "weather(city='Oslo')" in out and "delegate -> writer" in out
    assert "trip answers" in out
    assert "the agents were mid-turn there: /resume" in out
    assert "this branch ends in the middle of a turn" in out
    assert "unknown command '/nonsense'" in out
    assert "continue with: p2e chat resume trip" in out
    branches = {b.name: b for b in log.branches("trip")}
    assert set(branches) == {"main", "b1"}
    assert branches["b1"].length == branches["main"].length  # the resumed turn ran to the end again

    again = p2e(store_env, "chat", "resume", "trip", "--local", stdin="And in Lima?\n")
    assert again.returncode == 0, again.stderr
    assert "weather(city='Lima')" in again.stdout
    assert log.branch("trip", "b1").length > branches["b1"].length


def test_chat_errors(store_env: dict[str, str]) -> None:
    proc = p2e(store_env, "chat", "nobody", "--local")
    assert (
        proc.returncode == 2
        and "unknown agent 'nobody'; the agents are: planner, researcher, writer" in proc.stderr
    )
    proc = p2e(store_env, "chat", "resume", "--local")
    assert proc.returncode == 2 and "say which conversation to resume" in proc.stderr
    proc = p2e(store_env, "chat", "resume", "ghost", "--local")
    assert proc.returncode == 2 and "unknown conversation 'ghost'" in proc.stderr


def test_agent_list_and_show(store_env: dict[str, str], tmp_path: Path) -> None:
    proc = p2e(store_env, "agent", "list")
    assert proc.returncode == 0 and "planner" in proc.stdout and "researcher, writer" in proc.stdout
    proc = p2e(store_env, "agent", "show", "planner")
    assert proc.returncode == 0 and "You can delegate to:" in proc.stdout
    bad = tmp_path / "agents.yaml"
    bad.write_text("agents:\n  a:\n    modle: x\n")
    proc = p2e(store_env, "agent", "list", "--agents", str(bad))
    assert proc.returncode == 2 and "field 'modle': unknown field" in proc.stderr


def test_replay_reports_a_match(store_env: dict[str, str], log: EventLog) -> None:
    assert (
        p2e(store_env, "chat", "planner", "--local", "-c", "rec", stdin="Weather in Rome?\n").returncode == 0
    )
    proc = p2e(store_env, "conversation", "replay", "rec")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "matched: rec/main re-ran as rec-replay" in proc.stdout
    assert [e.kind for e in log.history("rec-replay")] == [e.kind for e in log.history("rec")]
