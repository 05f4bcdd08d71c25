"""Recording to Rerun: a delegation conversation and a rollout's rows, written to .rrd files,
checked with `rerun rrd verify` and read back entity by entity; the options and `p2e view`."""

from __future__ import annotations

import stat
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import Cli

from p2e.api import local_chat
from p2e.conversation import Conversation
from p2e.errors import InvalidArgument
from p2e.evals.score import Score, Target
from p2e.evals.store import ScoreStore
from p2e.events import AgentReply, Limits, UserMessage
from p2e.obs import RerunOptions, ViewerUnavailable, observe, record_conversation, record_rows, recording_path
from p2e.obs.observer import start_recording
from p2e.redact import MASK, refresh_secrets
from p2e.store import EventLog

ROOT = Path(__file__).resolve().parents[1]
AGENTS = str(ROOT / "experiments" / "agents.yaml")
RERUN = str(Path(sys.executable).parent / "rerun")
KEY = "sk-proj-ZyXwVu9876543210TsRqPoNm"

Rows = dict[str, list[dict[str, Any]]]


def verify(path: Path) -> None:
    proc = subprocess.run([RERUN, "rrd", "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr + proc.stdout


def read_rrd(path: Path) -> Rows:
    """Every recording row per entity, as {component or timeline: value}, in index order. Wall
    clock values are only checked for presence (`time` is kept as a bool)."""
    from rerun.chunk import RrdReader

    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for chunk in RrdReader(path).stream():
        if chunk.entity_path.startswith("/__"):
            continue
        rb = chunk.to_record_batch()
        names = rb.schema.names
        for i in range(rb.num_rows):
            row: dict[str, Any] = {"static": chunk.is_static}
            for n in names:
                if n in ("step", "episode"):
                    row[n] = rb.column(n)[i].as_py()
                elif n == "time":
                    row[n] = rb.column(n)[i].is_valid
                elif ":" in n and not n.startswith("rerun."):
                    v = rb.column(n)[i].as_py()
                    row[n] = v[0] if isinstance(v, list) and len(v) == 1 else v
            out[chunk.entity_path.lstrip("/")].append(row)
    for rows in out.values():
        rows.sort(key=lambda r: (not r["static"], r.get("step", r.get("episode", -1))))
    return dict(out)


def texts(rows: Rows) -> list[str]:
    return [str(v) for rs in rows.values() for r in rs for k, v in r.items() if k.endswith(":text")]


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("ACME_TOKEN", "acme-0123456789-secret")
    refresh_secrets()
    yield "acme-0123456789-secret"
    monkeypatch.undo()
    refresh_secrets()


def test_a_delegation_conversation_recorded_and_read_back(
    store_url: str, namespace: str, tmp_path: Path, secret: str
) -> None:
    chat = local_chat("planner", "demo", agents=AGENTS, store_url=store_url, namespace=namespace)
    try:
        chat.send(f"Weather in Paris? (key {KEY}, token {secret})")
        log = chat.log
        store = ScoreStore(log)
        step = Target(conversation=chat.id, branch="main", seq=9)
        store.put(
            [
                Score.done("judge", "2", step, 0.75, rationale=f"Clear answer; it leaked {KEY}"),
                Score.done("contains", "1", Target(conversation=chat.id, branch="main"), 1.0),
            ]
        )
        fork = chat.rewind(1)  # a second branch: the same question, answered again
        chat.resume()
        file = tmp_path / "demo.rrd"
        n = record_conversation(log, "demo", file)
    finally:
        chat.close()
    assert n == 10 + 8  # main's 10 events, then the fork's own 8 (seqs 2..9)
    verify(file)
    rows = read_rrd(file)
    main = "conversations/demo/main"

    def at(entity: str) -> list[dict[str, Any]]:
        return [r for r in rows[entity] if not r["static"]]

    log_rows = {who: at(f"{main}/log/{who}") for who in ("system", "user", "planner", "researcher", "writer")}
    assert {w: len(r) for w, r in log_rows.items()} == {
        "system": 1,
        "user": 1,
        "planner": 4,  # delegate call; text + delegate call; final answer
        "researcher": 5,  # two tool calls, two results, findings
        "writer": 1,
    }
    assert [r["step"] for r in log_rows["researcher"]] == [3, 3, 4, 5, 6]
    assert all(r["time"] for r in log_rows["researcher"])  # on the wall-clock timeline too
    assert "researcher → weather(city='Paris')" in [r["TextLog:text"] for r in log_rows["researcher"]]
    assert log_rows["researcher"][-1]["TextLog:text"].startswith("researcher (answers planner): Findings:")
    assert log_rows["planner"][0]["TextLog:text"].startswith("planner → delegate to researcher:")

    depth = at(f"{main}/stack/depth")
    assert [r["step"] for r in depth] == list(range(10))
    assert [r["Scalars:scalars"] for r in depth] == [1, 1, 2, 2, 2, 2, 1, 2, 1, 1]
    frames = at(f"{main}/stack/frames")
    assert "**researcher** (agent)" in frames[1]["TextDocument:text"]

    graph = at(f"{main}/graph")
    last = graph[-1]
    assert sorted(last["GraphNodes:node_ids"]) == sorted(
        ["user", "agent:planner", "agent:researcher", "agent:writer", "tool:clock", "tool:weather"]
    )
    edges = {(e["first"], e["second"]) if isinstance(e, dict) else tuple(e) for e in last["GraphEdges:edges"]}
    assert edges == {
        ("user", "agent:planner"),
        ("agent:planner", "agent:researcher"),
        ("agent:researcher", "tool:clock"),
        ("agent:researcher", "tool:weather"),
        ("agent:planner", "agent:writer"),
    }
    assert [r["step"] for r in graph] == [0, 2, 3, 7]  # logged only when it grew

    usage = at(f"{main}/usage")
    assert len(usage) == 6 and all(len(r["Scalars:scalars"]) == 3 for r in usage)  # one per agent reply
    assert at(f"{main}/artifacts/researcher/weather")[0]["step"] == 5
    assert at(f"{main}/answer")[-1]["TextDocument:text"].startswith("In short: Paris")
    judge = at(f"{main}/scores/judge")
    assert [(r["step"], r["Scalars:scalars"]) for r in judge] == [(9, 0.75)]
    assert [(r["step"], r["Scalars:scalars"]) for r in at(f"{main}/scores/contains")] == [(9, 1.0)]
    assert "Clear answer" in at(f"{main}/rationales/judge")[0]["TextDocument:text"]

    alt = f"conversations/demo/{fork}"
    assert [r["step"] for r in at(f"{alt}/stack/depth")] == list(range(2, 10))  # own events only
    assert f"{alt}/log/user" not in rows  # the question is main's, inherited

    everything = texts(rows)
    assert not [t for t in everything if KEY in t or secret in t]
    assert sum(MASK in t for t in everything) >= 3

    from rerun.chunk import RrdReader

    assert RrdReader(file).blueprints(), "the recording carries its layout"


def test_rollout_rows_recorded_and_read_back(tmp_path: Path) -> None:
    rows = []
    for v, base in (("baseline", 0.5), ("tuned", 0.8)):
        for s in ("paris", "oslo"):
            for rep in range(2):
                rows.append(
                    {
                        "rollout": "r1",  # fields the observer does not know are ignored
                        "episode": f"{v}-{s}-{rep}",
                        "variant": v,
                        "scenario": s,
                        "repeat": rep,
                        "primary": base + (0.1 if s == "oslo" else 0.0),
                        "scores": {"judge": base, "contains": 1.0},
                        "steps": 5,
                        "tokens": 100 * (rep + 1),
                        "cost_usd": 0.001,
                        "wall_s": 0.5,
                        "conversation": f"c-{v}-{s}-{rep}",
                    }
                )
    rows.append({"episode": "x", "variant": "tuned", "scenario": "lima", "status": "failed", "primary": None})
    file = tmp_path / "rollout.rrd"
    assert record_rows(rows, "r1", file) == 9
    verify(file)
    got = read_rrd(file)
    base = "rollouts/r1"
    episodes = got[f"{base}/episodes"]
    assert [r["episode"] for r in episodes] == list(range(9))
    assert episodes[-1]["TextLog:level"] == "ERROR" and "failed" in episodes[-1]["TextLog:text"]
    bars = got[f"{base}/leaderboard"][-1]["BarChart:values"]
    assert [round(x, 6) for x in _flat(bars)] == [0.55, 0.85]  # baseline, tuned (by name)
    table = got[f"{base}/leaderboard/table"][-1]["TextDocument:text"]
    assert table.index("| 1 | tuned |") < table.index("| 2 | baseline |")
    grid = got[f"{base}/matrix"][-1]["TextDocument:text"].splitlines()
    assert grid[0] == "| variant \\ scenario | lima | oslo | paris |"
    assert grid[2:] == [
        "| baseline |  | 0.60 (n=2) | 0.50 (n=2) |",
        "| tuned | no score | 0.90 (n=2) | 0.80 (n=2) |",
    ]
    tuned = [r for r in got[f"{base}/score/tuned"] if not r["static"]]
    assert len(tuned) == 4 and all(
        r["Scalars:scalars"] in (0.8, 0.9) for r in tuned
    )  # the failed one has none
    assert len([r for r in got[f"{base}/tokens/baseline"] if not r["static"]]) == 4
    assert len([r for r in got[f"{base}/scores/judge/tuned"] if not r["static"]]) == 4


def _flat(v: Any) -> list[float]:
    if isinstance(v, dict):  # a tensor: {shape, buffer}
        return _flat(v.get("buffer", v))
    if isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str):  # a union: (type, values)
        return _flat(v[1])
    if isinstance(v, list):
        return [x for item in v for x in _flat(item)]
    return [float(v)]


def test_observe_records_what_happens_while_it_runs(store_url: str, namespace: str, tmp_path: Path) -> None:
    log = EventLog(store_url, namespace)
    before = Conversation.create(log, "bot", {"bot": ()}, limits=Limits(), name="before")
    before.submit(UserMessage(text="old"))
    file = tmp_path / "live.rrd"
    opts = RerunOptions.from_flags(rerun_save=file)
    with observe(opts, log, new_only=True, rollout="r2", ledger=True, interval=0.02) as obs:
        chat = local_chat("planner", "during", agents=AGENTS, store_url=store_url, namespace=namespace)
        chat.send("Weather in Oslo?")
        chat.close()
        obs.rollout_rows([{"episode": "e1", "variant": "v", "scenario": "s", "primary": 1.0}], "r2")
        obs.ledger({"planner": 1000, "researcher": Decimal("2.50")}, ts=time.time())
        obs.ledger({"planner": "990", "researcher": 12.5})
        late = Conversation.create(log, "bot", {"bot": ()}, limits=Limits(), name="late")
        late.submit(UserMessage(text="just before the end"), AgentReply(agent="bot", text="ok"))
    assert obs.error is None and obs.polls > 0
    log.close()
    verify(file)
    got = read_rrd(file)
    # following every new conversation records in compact detail: one text log per branch, one
    # delegation graph for all, no per-event documents
    during = [r["TextLog:text"] for r in got["conversations/during/main/log"]]
    assert during[1] == "user: Weather in Oslo?" and during[-1].startswith("planner: In short: Oslo")
    assert len(got["conversations/during/main/stack/depth"]) == 10
    assert not [e for e in got if e.startswith("conversations/during/main/stack/frames")]
    edges = max((r["GraphEdges:edges"] for r in got["conversations/graph"]), key=len)  # (wall clock only)
    assert len(edges) == 5 + 1  # the demo team's five, and the user -> bot of `late`
    assert len(got["conversations/late/main/stack/depth"]) == 3  # stored before close: not lost
    assert not [e for e in got if e.startswith("conversations/before")]
    assert [r["Scalars:scalars"] for r in got["ledger/researcher"] if not r["static"]] == [2.5, 12.5]
    assert [r["Scalars:scalars"] for r in got["ledger/planner"] if not r["static"]] == [1000, 990]
    assert len(got["rollouts/r2/episodes"]) == 1


def test_no_options_means_no_recording(log: EventLog) -> None:
    with observe(RerunOptions(), log) as obs:
        obs.rollout_rows([{"episode": "e", "variant": "v", "scenario": "s"}], "r")
        obs.ledger({"a": 1})
    assert not obs.active


def test_rerun_flags_are_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert RerunOptions.from_flags(rerun_connect="9876").connect == "rerun+http://127.0.0.1:9876/proxy"
    assert RerunOptions.from_flags(rerun_connect="gpu-box:9877").connect == "rerun+http://gpu-box:9877/proxy"
    url = "rerun+https://viewer.example.org/proxy"
    assert RerunOptions.from_flags(rerun_connect=url).connect == url
    with pytest.raises(InvalidArgument, match=r"rerun\+http://HOST:9876/proxy"):
        RerunOptions.from_flags(rerun_connect="http://gpu-box:9876")
    with pytest.raises(InvalidArgument, match=r"must end in \.rrd"):
        RerunOptions.from_flags(rerun_save="out.txt")
    (tmp_path / "d.rrd").mkdir()
    with pytest.raises(InvalidArgument, match="is a directory"):
        RerunOptions.from_flags(rerun_save=tmp_path / "d.rrd")
    opts = RerunOptions.from_flags(rerun=True)
    assert opts.enabled and opts.with_default_save(tmp_path / "r.rrd").save == tmp_path / "r.rrd"
    assert RerunOptions(save=Path("mine.rrd")).with_default_save(tmp_path / "r.rrd").save == Path("mine.rrd")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    if sys.platform.startswith("linux"):
        with pytest.raises(ViewerUnavailable, match="no display"):
            start_recording(opts, "x")
    monkeypatch.setenv("P2E_RERUN_VIEWER", str(tmp_path / "missing"))
    with pytest.raises(ViewerUnavailable, match="P2E_RERUN_VIEWER"):
        start_recording(opts, "x")


def test_observe_raises_viewer_problems_in_the_caller(
    log: EventLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recording is opened in the observer's thread; its failure must reach the caller."""
    monkeypatch.setenv("P2E_RERUN_VIEWER", str(tmp_path / "missing"))
    with pytest.raises(ViewerUnavailable, match="P2E_RERUN_VIEWER"), observe(RerunOptions(spawn=True), log):
        pytest.fail("the block must not run")


@pytest.fixture
def fake_viewer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in `rerun` executable that writes down how it was called, and a display."""
    calls = tmp_path / "viewer-calls.txt"
    exe = tmp_path / "rerun"
    exe.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("P2E_RERUN_VIEWER", str(exe))
    monkeypatch.setenv("DISPLAY", ":99")
    return calls


def wait_for(path: Path, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text()
        time.sleep(0.02)
    raise AssertionError(f"{path} was not written")


def test_view_opens_files_conversations_and_saved_rollouts(
    cli: Cli, store_env: dict[str, str], log: EventLog, tmp_path: Path, fake_viewer: Path
) -> None:
    c = Conversation.create(log, "bot", {"bot": ()}, limits=Limits(), name="viewme")
    c.submit(UserMessage(text="hi"), AgentReply(agent="bot", text="hello"))

    code, out, err = cli("view", "viewme")
    assert code == 0, err
    made = recording_path("conversation", "viewme")
    assert wait_for(fake_viewer).split() == [str(made)]
    verify(made)
    made.unlink()

    fake_viewer.unlink()
    existing = tmp_path / "given.rrd"
    assert (
        record_rows([{"episode": "e", "variant": "v", "scenario": "s", "primary": 0.5}], "r", existing) == 1
    )
    code, out, err = cli("view", str(existing), "--web", "--port", "9191")
    assert code == 0, err
    assert wait_for(fake_viewer).split() == [
        "--serve-web",
        "--web-viewer-port",
        "9191",
        str(existing.resolve()),
    ]
    assert "http://localhost:9191" in out

    fake_viewer.unlink()
    saved = recording_path("rollout", "r-saved")
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_bytes(existing.read_bytes())
    try:
        code, out, err = cli("view", "r-saved")
        assert code == 0, err
        assert wait_for(fake_viewer).split() == [str(saved)]
    finally:
        saved.unlink()


def test_view_says_what_is_wrong(
    cli: Cli, store_env: dict[str, str], log: EventLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = cli("view", str(tmp_path / "missing.rrd"))
    assert code == 2 and "no recording file" in err
    (tmp_path / "notes.txt").write_text("x")
    code, _, err = cli("view", str(tmp_path / "notes.txt"))
    assert code == 2 and "not a Rerun recording" in err
    code, _, err = cli("view", "nothing-by-that-name")
    assert code == 2 and "no recording file, conversation or rollout named 'nothing-by-that-name'" in err

    c = Conversation.create(log, "bot", {"bot": ()}, limits=Limits(), name="headless")
    c.submit(UserMessage(text="hi"))
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.delenv("P2E_RERUN_VIEWER", raising=False)
    if sys.platform.startswith("linux"):
        code, _, err = cli("view", "headless")
        assert code == 1 and "no display" in err and "--out" in err and "--web" in err
        assert not recording_path("conversation", "headless").exists()  # checked before any work
    out_file = tmp_path / "headless.rrd"
    code, out, err = cli("view", "headless", "--out", str(out_file))
    assert code == 0 and "2 events" in out, err
    verify(out_file)
    code, _, err = cli("view", str(out_file), "--out", str(tmp_path / "again.rrd"))
    assert code == 2 and "is a recording already" in err


def test_observe_command_records_named_conversations_until_done(
    cli: Cli, store_env: dict[str, str], log: EventLog, tmp_path: Path
) -> None:
    from p2e.events import Finished

    c = Conversation.create(log, "bot", {"bot": ()}, limits=Limits(), name="obs1")
    c.submit(UserMessage(text="q"), AgentReply(agent="bot", text="a"))
    c.submit(Finished())
    file = tmp_path / "obs.rrd"
    code, out, err = cli("observe", "obs1", "--rerun-save", str(file), "--until-done")
    assert code == 0, err
    assert "recorded 4 events" in out
    verify(file)
    assert len(read_rrd(file)["conversations/obs1/main/stack/depth"]) == 4
    code, _, err = cli("observe", "obs1")
    assert code == 2 and "--rerun-save" in err


def test_view_records_a_rollout_from_its_rows_in_the_store(
    cli: Cli, store_env: dict[str, str], log: EventLog, tmp_path: Path
) -> None:
    """The rollout module's own rows (its `Row` model) go through `RolloutRow` unchanged."""
    from p2e.rollouts.store import RolloutInfo, RolloutStore, Row

    store = RolloutStore(log)
    now = time.time()
    store.create(RolloutInfo(id="r-view", name="q", spec_path="q.yaml", spec={}, created=now, updated=now))
    for i, (variant, score) in enumerate((("a", 1.0), ("a", 0.0), ("b", 1.0))):
        store.put_row(
            Row(
                rollout="r-view",
                episode=f"e{i}",
                team="t",
                variant=variant,
                scenario="s",
                repeat=i,
                seed=i,
                status="done",
                primary=score,
                finished=0.0,
            )
        )
    file = tmp_path / "r.rrd"
    code, out, err = cli("view", "r-view", "--out", str(file))
    assert code == 0, err
    assert "3 episodes" in out
    verify(file)
    got = read_rrd(file)
    assert [round(x, 3) for x in _flat(got["rollouts/r-view/leaderboard"][-1]["BarChart:values"])] == [
        0.5,
        1.0,
    ]
    assert len(got["rollouts/r-view/episodes"]) == 3
