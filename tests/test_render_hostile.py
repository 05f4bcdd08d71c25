"""Whatever a model writes, every view shows it as it is: no crash, no text lost to Rich markup,
no terminal control.

A reply holding `[/note]` used to crash `p2e chat`, `conversation show` and `conversation watch`,
and `[bold]` or `[x]` vanished. Each view is driven here through its render function with
events built in memory (hypothesis draws the text), printed on a plain Rich console (the views
must be safe on any console); then once end to end through the CLI on a real store.
"""

from __future__ import annotations

import io
import re
import sys
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console, RenderableType

from p2e.cli.chat import turn_view
from p2e.cli.ledger import entries_table
from p2e.cli.render import events_table
from p2e.cli.rollout import rows_table
from p2e.cli.terminal import DataConsole
from p2e.cli.watch import render as watch_frame
from p2e.conversation import Conversation
from p2e.evals.score import Score, Target
from p2e.events import AgentReply, Event, Failed, Started, ToolCall, ToolResult, UserMessage
from p2e.ledger.base import Entry
from p2e.machine import INITIAL, apply
from p2e.obs.follow import BranchBatch, ScoreBatch, Step
from p2e.obs.watch import WatchView
from p2e.rollouts.store import RolloutInfo, RolloutStore, Row
from p2e.runtime.driver import TurnResult
from p2e.scripted import ScriptedTeam
from p2e.store import BranchInfo, ConversationInfo, EventLog

WIDTH = 20_000
"""Wide enough that no line wraps: a word of the input is a substring of the output."""

HOSTILE = st.sampled_from(
    [
        "[/note]",
        "[bold]",
        "[/]",
        "[x]",
        "[link=https://example.com]",
        "[/link]",
        "\\[",
        "[",
        "]",
        ":smile:",
        "\x1b[2J",
        "\x1b[31m",
        "\x1b]0;owned\x07",
        "\x00",
        "\x07",
        "\x08",
        "\r",
        "\r\n",
        "\t",
        "\n",
        "\x7f",
        "\x9b",
        "שלום",
        "مرحبا",
        "\u202e",
        "👍🏽",
        "👨\u200d👩\u200d👧",
        "e\u0301",
        "\u0301",
        "\ud800",
        "x" * 100,
    ]
)
SURROGATE = re.compile("[\ud800-\udfff]")
TEXT = st.lists(st.one_of(HOSTILE, st.text(max_size=20)), max_size=16).map("".join)


def shown(text: str) -> str:
    """What a reader must find: the text, each control character (newline and tab aside) or
    lone surrogate written as an escape, a CRLF as a newline."""
    out = []
    for c in text.replace("\r\n", "\n"):
        if c not in "\n\t" and unicodedata.category(c) in ("Cc", "Cs"):
            out.append(f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return "".join(out)


def words(text: str, limit: int | None = None) -> list[str]:
    """The words of `text` as shown; with `limit`, those a one-line summary cut to `limit`
    characters keeps whole."""
    ws = shown(text).split()
    if limit is None:
        return ws
    kept, used = [], 0
    for w in ws:
        used += len(w) + (1 if kept else 0)
        if used > limit - 1:
            break
        kept.append(w)
    return kept


def render(view: RenderableType, console: Console | None = None) -> str:
    console = console or Console(file=io.StringIO(), width=WIDTH, color_system=None, highlight=False)
    console.print(view)
    return console.file.getvalue()  # type: ignore[attr-defined]


CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def check(out: str, *expected: tuple[str, int | None]) -> None:
    """No control character reached the output (but newlines), and every word of each text
    (cut to its view's limit) is there."""
    assert not CONTROL.search(out), repr(CONTROL.search(out))
    for text, limit in expected:
        for w in words(text, limit):
            assert w in out, (w, text)


def check_title(out: str, title: str) -> None:
    """A title wraps to its table's width: its text is there once the line breaks are taken out."""
    assert "".join(shown(title).split()) in "".join(out.split())


def events(user: str, reply: str, tool: str, args: str, output: str, end: str) -> list[Event]:
    """A conversation through the machine: a question, a tool call, its result, an answer, an end."""
    evs: list[Event] = [
        Started(root="boss", team={"boss": ()}),
        UserMessage(text=user),
        AgentReply(agent="boss", tool_calls=(ToolCall(id="c1", name=tool, arguments={"q": args}),)),
        ToolResult(agent="boss", call_id="c1", name=tool, output=output),
        AgentReply(agent="boss", text=reply),
        Failed(code="agent_error", message=end),
    ]
    return [e.model_copy(update={"seq": i}) for i, e in enumerate(evs)]


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(user=TEXT, reply=TEXT, tool=TEXT, args=TEXT, output=TEXT, end=TEXT, title=TEXT)
def test_conversation_show_shows_any_text(
    user: str, reply: str, tool: str, args: str, output: str, end: str, title: str
) -> None:
    out = render(events_table(events(user, reply, tool, args, output, end), title))
    check(out, (user, 80), (reply, 80), (tool, None), (output, 60), (end, None))
    check_title(out, title)


def _view(evs: list[Event], name: str, branch: str, scores: list[Score]) -> WatchView:
    conv = ConversationInfo(id="c", name=name, root="boss", created=0, active=branch, events=len(evs))
    info = BranchInfo(
        conversation="c", name=branch, parent=None, fork_at=0, length=len(evs), created=0, lineage=[]
    )
    steps, state = [], INITIAL
    for e in evs:
        after = apply(state, e)
        steps.append(Step(e, state, after))
        state = after
    view = WatchView(conv, branch, keep=len(evs))
    view.apply([BranchBatch(conv, info, steps), ScoreBatch(conv, scores)])
    return view


@SETTINGS
@given(reply=TEXT, end=TEXT, name=TEXT, branch=TEXT, evaluator=TEXT, rationale=TEXT, note=TEXT)
def test_conversation_watch_shows_any_text(
    reply: str, end: str, name: str, branch: str, evaluator: str, rationale: str, note: str
) -> None:
    evaluator, branch = (SURROGATE.sub("", t) or "e" for t in (evaluator, branch))  # refused by Score
    score = Score(
        evaluator=evaluator,
        version="1",
        target=Target(conversation="c", branch=branch, seq=4),
        value=0.5,
        rationale=rationale,
    )
    view = _view(events("q", reply, "t", "a", "o", end), name, branch, [score])
    out = render(watch_frame(view, note))
    check(out, (reply, 80), (end, None), (name, None), (evaluator, None), (rationale, 100), (note, None))


@SETTINGS
@given(answer=TEXT, name=TEXT, error=TEXT, reply=TEXT)
def test_chat_shows_any_reply(answer: str, name: str, error: str, reply: str) -> None:
    result = TurnResult(
        conversation="c",
        name=name,
        branch="main",
        status="idle",
        answer=answer,
        error=error,
        length=6,
        steps=2,
    )
    out = render(turn_view(events("q", reply, "t", "a", "o", "x"), 1, result))
    check(out, (answer, None), (name, None), (error, None), (reply, 80))


@SETTINGS
@given(episode=TEXT, variant=TEXT, scenario=TEXT, error=TEXT, conversation=TEXT)
def test_rollout_rows_show_any_text(
    episode: str, variant: str, scenario: str, error: str, conversation: str
) -> None:
    row = Row(
        rollout="r",
        episode=episode,
        team="t",
        variant=variant,
        scenario=scenario,
        repeat=0,
        seed=0,
        status="failed",
        error=error,
        conversation=conversation,
    )
    out = render(rows_table([row]))
    check(out, (episode, None), (variant, None), (scenario, None), (error, 40), (conversation, None))


@SETTINGS
@given(reason=TEXT, cid=TEXT, title=TEXT)
def test_ledger_history_shows_any_reason(reason: str, cid: str, title: str) -> None:
    entry = Entry(
        seq=3,
        ts=0,
        kind="transfer",
        cid=cid,
        by="alice",
        amount=100,
        reason=reason,
        moves=(("alice", -100, 900), ("bob", 100, 1100)),
    )
    out = render(entries_table([entry], title, wallet="alice"))
    check(out, (reason, None), (cid, None))
    check_title(out, title)


@SETTINGS
@given(text=TEXT)
def test_the_cli_console_prints_any_string_as_it_is(text: str) -> None:
    console = DataConsole(file=io.StringIO(), width=WIDTH, color_system=None)
    out = render(f"note: {text}", console)
    check(out, (text, None))


def test_a_very_long_line_is_shown_whole() -> None:
    line = ("[bold]wörd[/] \x1b[2J " * 5000).strip()
    result = TurnResult(
        conversation="c", name="n", branch="main", status="idle", answer=line, length=1, steps=1
    )
    wide = Console(file=io.StringIO(), width=200_000, color_system=None)
    out = render(turn_view([], 0, result), wide)
    assert out.count("[bold]wörd[/]") == 5000 and out.count("\\x1b[2J") == 5000


def test_escapes_are_shown_not_obeyed() -> None:
    out = render(events_table(events("q", "\x1b]0;owned\x07hi\x1b[2J", "t", "a", "o", "x")))
    assert "\\x1b]0;owned\\x07hi\\x1b[2J" in out and "\x1b" not in out


# --- end to end: the CLI on a real store, a reply holding `[/note]` ---------------------------------

REPLY = "see [/note] and [bold]x[/bold], \x1b]0;owned\x07 [link=http://e]y"
SHOWN = "see [/note] and [bold]x[/bold], \\x1b]0;owned\\x07 [link=http://e]y"


@pytest.fixture
def stored(log: EventLog, store_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[EventLog]:
    monkeypatch.setenv("COLUMNS", "400")
    conv = Conversation.create(log, "boss", {"boss": []}, name="demo")
    ScriptedTeam({"boss": [AgentReply(agent="boss", text=REPLY)]}, {}).run(
        conv, conv.submit(UserMessage(text="[x]"))
    )
    yield log


@pytest.mark.parametrize(
    "args", [["conversation", "show", "demo"], ["conversation", "watch", "demo", "--once"]]
)
def test_cli_conversation_views_show_markup_as_text(cli: Cli, stored: EventLog, args: list[str]) -> None:
    code, out, err = cli(*args)
    assert code == 0, err
    assert SHOWN in out and "[x]" in out and "\x1b" not in out


def test_cli_rollout_show_rows_shows_markup_as_text(cli: Cli, stored: EventLog) -> None:
    store = RolloutStore(stored)
    store.create(
        RolloutInfo(id="r1", name="r", spec_path="s.yaml", spec={}, created=time.time(), updated=time.time())
    )
    row = dict(rollout="r1", team="t", repeat=0, seed=0, conversation="demo")
    store.put_row(Row(episode="e1", variant="[/note]", scenario="[bold]s", status="done", primary=1.0, **row))
    store.put_row(
        Row(episode="e2", variant="[/note]", scenario="[x]", status="failed", error="[/err] \x1b[2J", **row)
    )
    code, out, err = cli("rollout", "show", "r1", "--rows")
    assert code == 0, err
    assert "[/note]" in out and "[bold]s" in out and "[x]" in out and "[/err] \\x1b[2J" in out


def test_cli_ledger_history_shows_markup_as_text(cli: Cli, stored: EventLog) -> None:
    agents = str(Path(__file__).resolve().parents[1] / "experiments" / "agents.yaml")
    assert cli("ledger", "init", "--agents", agents, "--balance", "5", "-w", "alice", "-w", "bob")[0] == 0
    code, _, err = cli("ledger", "transfer", "alice", "bob", "1", "--reason", REPLY)
    assert code == 0, err
    code, out, err = cli("ledger", "history", "alice")
    assert code == 0, err
    assert SHOWN in out and "\x1b" not in out


def test_cli_chat_shows_a_reply_with_markup(
    cli: Cli, store_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mock").mkdir()
    (tmp_path / "mock" / "hostile.yaml").write_text(
        'default: "see [/note] and [bold]x[/bold], \\e]0;owned\\a"\n'
    )
    (tmp_path / "agents.yaml").write_text(
        "agents:\n  echo:\n    model: mock/hostile\nproviders:\n  mock:\n    rules_dirs: [mock]\n"
    )
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello [x]\n/history\n/exit\n"))
    monkeypatch.setenv("COLUMNS", "400")
    code, out, err = cli(
        "chat", "echo", "--local", "-c", "hostile", "--agents", str(tmp_path / "agents.yaml")
    )
    assert code == 0, err
    assert "see [/note] and [bold]x[/bold], \\x1b]0;owned\\x07" in out and "\x1b" not in out
    assert "hostile answers" in out and "hello [x]" in out
