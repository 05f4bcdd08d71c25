"""80-column terminals: ids shown whole, any unique start of an id taken, conversations by page."""

from __future__ import annotations

import time

import pytest
from conftest import Cli

from p2e.conversation import Conversation
from p2e.events import AgentReply, Failed, UserMessage
from p2e.rollouts.store import RolloutInfo, RolloutStore, Row
from p2e.scripted import ScriptedTeam
from p2e.store import EventLog

RID = "quickstart-with-a-long-name-e386f1"
VARIANTS = ("baseline-with-long-name", "temperature-0.9-and-a-persona")


def _conv(log: EventLog, name: str, cid: str, answer: bool = True) -> Conversation:
    conv = Conversation.create(log, "boss", {"boss": []}, name=name, cid=cid)
    if not answer:
        conv.submit(Failed(code="limit", message="boom"))
    else:
        ScriptedTeam({"boss": [AgentReply(agent="boss", text="ok")]}, {}).run(
            conv, conv.submit(UserMessage(text="hi"))
        )
    return conv


@pytest.fixture
def world(log: EventLog, store_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> EventLog:
    """`demo`, a failed conversation, two episodes of rollout RID (ids e386..., e387...); 80 columns."""
    monkeypatch.setenv("COLUMNS", "80")
    _conv(log, "demo", "a92e03fd2420")
    _conv(log, "broke", "b0b0b0b0b0b0", answer=False)
    store = RolloutStore(log)
    now = time.time()
    spec = {"variants": [{"name": v} for v in VARIANTS]}
    store.create(
        RolloutInfo(id=RID, name="q", spec_path="q.yaml", spec=spec, created=now, updated=now, status="done")
    )
    store.create(
        RolloutInfo(id="other-000001", name="o", spec_path="o.yaml", spec={}, created=now, updated=now)
    )
    for i, (cid, variant) in enumerate(zip(("e386f1c2a9b7", "e387aa00bb11"), VARIANTS, strict=True)):
        episode = f"{i}f1c2a9b7d0af0000"
        _conv(log, f"{RID}.{episode[:10]}.1", cid)
        store.put_row(
            Row(
                rollout=RID,
                episode=episode,
                team="t",
                variant=variant,
                scenario="weather-in-oslo",
                repeat=0,
                seed=0,
                status="done" if i else "failed",
                error=None if i else "the model timed out after 30 s",
                primary=0.5,
                conversation=cid,
            )
        )
    return log


def _fits(out: str) -> None:
    assert out.strip()
    assert max(len(line) for line in out.splitlines()) <= 80, out


def test_tables_at_80_columns_show_whole_ids_and_names(cli: Cli, world: EventLog) -> None:
    code, out, _ = cli("conversation", "list")
    assert code == 0
    _fits(out)
    for cid in ("a92e03fd2420", "e386f1c2a9b7", "e387aa00bb11", "b0b0b0b0b0b0"):
        assert cid in out
    assert f"{RID}.0f1c2a9b7d.1" in out and "…" not in out

    code, out, _ = cli("rollout", "list")
    assert code == 0 and RID in out and "other-000001" in out
    _fits(out)

    code, out, _ = cli("rollout", "show", RID, "--rows")
    assert code == 0
    _fits(out)
    for whole in (*VARIANTS, "e386f1c2a9b7", "e387aa00bb11"):
        assert whole in out  # on one line: no id cut, no name broken mid-word
    assert "timed out" in out

    code, out, _ = cli("rollout", "compare", RID)
    assert code == 0 and VARIANTS[1] in out
    _fits(out)


def test_a_wide_terminal_shows_every_column(
    cli: Cli, world: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    _, out, _ = cli("conversation", "list")
    assert "root agent" in out and "checked out" in out
    _, out, _ = cli("rollout", "show", RID, "--rows")
    assert "0f1c2a9b7d0af0000" in out and "wall s" in out  # the episode id, whole


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["conversation", "show", "a92e"], "a92e03fd2420 / main"),  # an id's start: the id, whole
        (["conversation", "show", "dem"], "demo / main"),  # a name's start
        (["conversation", "show", "demo", "-b", "ma"], "demo / main"),  # a branch's start
        (["conversation", "stack", "e386"], "e386f1c2a9b7 / main"),
        (["artifact", "show", "dem/ma/1"], "demo/main/1"),
        (["artifact", "list", "a92"], "demo/main/0"),
        (["eval", "show", "e387"], "scores of e387aa00bb11/main"),
        (["rollout", "show", "quick"], RID),
        (["rollout", "compare", "quickstart-with"], VARIANTS[1]),
        (["conversation", "list", "--rollout", "quick"], "e386f1c2a9b7"),
    ],
)
def test_every_id_takes_a_unique_start(cli: Cli, world: EventLog, args: list[str], expect: str) -> None:
    code, out, err = cli(*args)
    assert code == 0, err
    assert expect in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["conversation", "show", "e38"],
            "conversation 'e38' is ambiguous: it begins e386f1c2a9b7, e387aa00bb11",
        ),
        (["conversation", "show", "zz"], "unknown conversation 'zz'"),
        (["conversation", "show", "demo", "-b", "x"], "has no branch 'x' (its branches: main)"),
        (["rollout", "show", "nope"], "no rollout 'nope'"),
        (["rollout", "show", "o"], "no rollout"),  # `o` begins nothing but other-...: found
        (["rollout", "show", ""], "no rollout ''"),
        (["artifact", "show", "e38/main/1"], "is ambiguous"),
        (["conversation", "list", "--rollout", "zzz"], "no rollout 'zzz'"),
    ],
)
def test_an_ambiguous_or_unknown_start_is_one_line(
    cli: Cli, world: EventLog, args: list[str], message: str
) -> None:
    code, out, err = cli(*args)
    if args[-1] == "o":  # the only rollout id starting with o
        assert code == 0 and "other-000001" in out
        return
    assert code == 2, out
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    if "ambiguous" in message:
        assert "give more characters" in err


def test_an_ambiguous_rollout_names_the_candidates(cli: Cli, world: EventLog) -> None:
    now = time.time()
    RolloutStore(world).create(
        RolloutInfo(id="quickstart-abc123", name="q", spec_path="q.yaml", spec={}, created=now, updated=now)
    )
    code, _, err = cli("rollout", "show", "quick")
    assert code == 2 and "rollout 'quick' is ambiguous" in err and RID in err and "quickstart-abc123" in err


def test_list_filters_and_pages(cli: Cli, world: EventLog) -> None:
    code, out, _ = cli("conversation", "list", "--limit", "2")
    assert code == 0
    assert "e387aa00bb11" in out and "e386f1c2a9b7" in out and "demo" not in out  # newest first
    assert "1-2 of 4" in out and "next page: p2e conversation list --limit 2 --offset 2" in out

    code, out, _ = cli("conversation", "list", "--limit", "2", "--offset", "2")
    assert "b0b0b0b0b0b0" in out and "a92e03fd2420" in out and "e387" not in out and "the last page" in out

    _, out, _ = cli("conversation", "list", "--status", "failed")
    assert "b0b0b0b0b0b0" in out and "a92e03fd2420" not in out
    _, out, _ = cli("conversation", "list", "--status", "done", "--rollout", RID[:6], "--limit", "1")
    assert "e387aa00bb11" in out and "e386f1c2a9b7" not in out
    assert f"next page: p2e conversation list --rollout {RID} --status done --limit 1 --offset 1" in out

    _, out, _ = cli("conversation", "list", "--since", "1h")
    assert "a92e03fd2420" in out
    _, out, _ = cli("conversation", "list", "--since", "2999-01-01")
    assert "no conversations match" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--status", "bogus"], "--status 'bogus': use one of new, running, idle, finished, failed, done"),
        (["--since", "2 hours"], "--since '2 hours': give a duration such as 30m"),
        (["--since", "2024-13-45"], "--since '2024-13-45'"),
        (["--limit", "0"], "Invalid value for '--limit'"),
        (["--offset", "-1"], "Invalid value for '--offset'"),
    ],
)
def test_bad_list_options_are_one_clear_line(
    cli: Cli, world: EventLog, args: list[str], message: str
) -> None:
    code, out, err = cli("conversation", "list", *args)
    assert code == 2 and message in " ".join(err.split()) and "Traceback" not in err + out
