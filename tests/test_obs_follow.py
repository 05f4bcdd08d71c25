"""The store follower and `p2e conversation watch`: what observers see of a growing store."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from conftest import Cli

from p2e.api import local_chat
from p2e.conversation import Conversation
from p2e.evals.score import Score, Target
from p2e.evals.store import ScoreStore
from p2e.events import AgentReply, Failed, Finished, Limits, UserMessage
from p2e.obs import BranchBatch, ScoreBatch, StoreFollower
from p2e.obs.watch import WatchView
from p2e.store import EventLog

ROOT = Path(__file__).resolve().parents[1]
AGENTS = str(ROOT / "experiments" / "agents.yaml")


def bot(log: EventLog, name: str) -> Conversation:
    return Conversation.create(log, "bot", {"bot": ()}, limits=Limits(max_steps=1000), name=name)


def batches(updates: list[object]) -> list[BranchBatch]:
    return [u for u in updates if isinstance(u, BranchBatch)]


def test_a_delegation_is_seen_event_by_event_with_the_stack(store_url: str, namespace: str) -> None:
    chat = local_chat("planner", "trip", agents=AGENTS, store_url=store_url, namespace=namespace)
    try:
        follower = StoreFollower(chat.log, ["trip"])
        first = batches(follower.poll())
        assert [s.event.kind for b in first for s in b.steps] == ["started"]
        assert follower.poll() == []  # nothing moved, nothing read
        chat.send("Weather in Paris?")
        (batch,) = batches(follower.poll())
    finally:
        chat.close()
    assert batch.conversation.name == "trip" and batch.branch.name == "main"
    seqs = [s.event.seq for s in batch.steps]
    assert seqs == list(range(1, 10))
    depths = [s.after.depth for s in batch.steps]
    # user, planner delegates (push), researcher calls tools, 2 results, researcher answers (pop),
    # planner delegates to the writer (push), writer answers (pop), planner answers
    assert depths == [1, 2, 2, 2, 2, 1, 2, 1, 1]
    assert all(a.before == b.after for a, b in zip(batch.steps[1:], batch.steps, strict=False))
    assert follower.state("trip", "main") is not None and follower.state("trip", "main").status == "idle"


def test_new_only_follows_conversations_created_later(log: EventLog) -> None:
    bot(log, "old").submit(UserMessage(text="before"))
    follower = StoreFollower(log, None, new_only=True)
    assert follower.poll() == []
    c = bot(log, "new")
    c.submit(UserMessage(text="hi"), AgentReply(agent="bot", text="hello"))
    got = batches(follower.poll())
    assert [(b.conversation.name, len(b.steps)) for b in got] == [("new", 3)]
    everything = StoreFollower(log, None)
    assert sorted(b.conversation.name for b in batches(everything.poll())) == ["new", "old"]


def test_a_fork_is_followed_from_its_fork_point(log: EventLog) -> None:
    c = bot(log, "forky")
    c.submit(UserMessage(text="q0"))
    c.submit(AgentReply(agent="bot", text="a0"))
    follower = StoreFollower(log, ["forky"])
    follower.poll()
    fork = c.rewind(1, "alt")  # keeps started + q0; the bot's turn is due again
    notice = batches(follower.poll())
    assert [(b.branch.name, b.steps) for b in notice] == [("alt", [])]  # the fork, nothing of its own yet
    fork.submit(AgentReply(agent="bot", text="other answer"))
    (b,) = batches(follower.poll())
    assert b.branch.name == "alt" and [s.event.seq for s in b.steps] == [2]
    assert b.steps[0].before.status == "running" and b.steps[0].after.status == "idle"  # state rebuilt at 2
    # one branch followed alone is read from seq 0, inherited events included
    only = StoreFollower(log, ["forky"], branch="alt")
    assert [s.event.seq for x in batches(only.poll()) for s in x.steps] == [0, 1, 2]


def test_scores_are_seen_when_added_and_when_rewritten(log: EventLog) -> None:
    c = bot(log, "scored")
    c.submit(UserMessage(text="q"), AgentReply(agent="bot", text="a"))
    follower = StoreFollower(log, ["scored"], score_every_s=0.0)  # (a judge may take its time)
    follower.poll()
    store = ScoreStore(log)
    target = Target(conversation=c.id, branch="main", seq=2)
    store.put([Score.pending("judge", "1", target)])
    (sb,) = [u for u in follower.poll() if isinstance(u, ScoreBatch)]
    assert [s.status for s in sb.scores] == ["pending"]
    follower.hot_s = 0.0  # long after the last event: only the pending mark keeps it asked
    store.put(
        [Score.done("judge", "1", target, 0.75, rationale="clear and correct")]
    )  # same field, new value
    (sb,) = [u for u in follower.poll() if isinstance(u, ScoreBatch)]
    assert [(s.status, s.value, s.rationale) for s in sb.scores] == [("done", 0.75, "clear and correct")]
    assert not [u for u in follower.poll() if isinstance(u, ScoreBatch)]


def test_watch_view_counts_usage_and_keeps_the_last_events(store_url: str, namespace: str) -> None:
    chat = local_chat("planner", "w", agents=AGENTS, store_url=store_url, namespace=namespace)
    try:
        chat.send("Weather in Oslo?")
        follower = StoreFollower(chat.log, ["w"], branch="main")
        view = WatchView(chat.log.conversation("w"), "main", keep=4)
        assert view.apply(follower.poll())
    finally:
        chat.close()
    assert [s.event.seq for s in view.recent] == [6, 7, 8, 9]
    assert view.tool_calls == 4  # delegate, clock, weather, delegate
    assert view.state.status == "idle" and not view.done


def test_watch_once_prints_the_stack_events_and_scores(
    cli: Cli, store_env: dict[str, str], log: EventLog
) -> None:
    c = bot(log, "w1")
    c.submit(UserMessage(text="what is 2+2?"))
    c.submit(AgentReply(agent="bot", text="4"))
    ScoreStore(log).put(
        [Score.done("exact", "1", Target(conversation=c.id, seq=2), 1.0, rationale="matches")]
    )
    code, out, err = cli("conversation", "watch", "w1", "--once")
    assert code == 0, err
    assert "w1 / main" in out and "idle" in out
    assert "what is 2+2?" in out and "bot" in out
    assert "exact" in out and "1.00" in out and "matches" in out
    code, out, err = cli("conversation", "watch", "nope", "--once")
    assert code == 2 and "unknown conversation 'nope'" in err


def test_watch_follows_until_the_conversation_ends(
    cli: Cli, store_env: dict[str, str], log: EventLog
) -> None:
    c = bot(log, "live")
    c.submit(UserMessage(text="q"), AgentReply(agent="bot", text="a"))
    result: dict[str, object] = {}
    watcher = threading.Thread(
        target=lambda: result.update(r=cli("conversation", "watch", "live", "--interval", "0.02"))
    )
    watcher.start()
    time.sleep(0.3)  # let it render a frame or two before the conversation moves on
    c.submit(UserMessage(text="last question"), AgentReply(agent="bot", text="last answer"))
    c.submit(Finished())
    watcher.join(timeout=20)
    assert not watcher.is_alive()
    code, out, _ = result["r"]  # type: ignore[misc]
    assert code == 0 and "last answer" in out and "finished" in out

    failing = bot(log, "doomed")
    failing.submit(UserMessage(text="q"))
    failing.submit(Failed(code="agent_error", message="the model is down"))
    code, out, _ = cli("conversation", "watch", "doomed")
    assert code == 1 and "agent_error" in out


def test_watch_until_idle_stops_once_the_root_answers(
    cli: Cli, store_env: dict[str, str], store_url: str, namespace: str
) -> None:
    chat = local_chat("planner", "idle", agents=AGENTS, store_url=store_url, namespace=namespace)
    try:
        result: dict[str, object] = {}
        args = ("conversation", "watch", "idle", "--until-idle", "--interval", "0.02")
        watcher = threading.Thread(target=lambda: result.update(r=cli(*args)))
        watcher.start()
        chat.send("Weather in Lima?")
        watcher.join(timeout=20)
    finally:
        chat.close()
    assert not watcher.is_alive()
    code, out, _ = result["r"]  # type: ignore[misc]
    assert code == 0 and "Lima" in out and "idle" in out
