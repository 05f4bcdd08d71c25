"""Evaluation against the real store: scores land on the right step and branch, none is lost or
doubled under concurrency, and the `p2e eval` commands a user runs."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from conftest import Cli

from p2e.conversation import Conversation
from p2e.evals import builtin_registry
from p2e.evals.registry import EvalContext, evaluator
from p2e.evals.runner import evaluate_branch
from p2e.evals.store import ScoreStore
from p2e.events import AgentReply, Limits, UserMessage
from p2e.store import EventLog

ROOT = Path(__file__).resolve().parents[1]


def chat_branch(log: EventLog, name: str, rounds: int) -> Conversation:
    conv = Conversation.create(log, "bot", {"bot": ()}, limits=Limits(max_steps=10_000), name=name)
    for i in range(rounds):
        conv.submit(UserMessage(text=f"q{i}"))
        conv.submit(AgentReply(agent="bot", text=f"answer {i}"))
    return conv


@evaluator(id="slow_len", version="1")
async def slow_len(ctx: EvalContext) -> float:
    """Yields to the loop so that many evaluations are in flight at once."""
    await asyncio.sleep(0.001)
    step = ctx.step()
    return min(1.0, len(getattr(step, "text", "")) / 10)


def test_a_thousand_steps_scored_concurrently_lose_and_double_nothing(log: EventLog) -> None:
    conv = chat_branch(log, "many", 1000)
    registry = builtin_registry()
    registry.register(slow_len)
    ev = registry.create("slow_len")
    scores = asyncio.run(evaluate_branch(log, conv.branch, [ev], concurrency=64))
    assert len(scores) == 1000 and all(s.status == "done" for s in scores)
    stored = ScoreStore(log).all("many")
    assert len(stored) == 1000
    assert len({s.target.ref for s in stored}) == 1000
    assert sorted(s.target.seq for s in stored) == [2 + 2 * i for i in range(1000)]
    # running it again scores nothing new and doubles nothing
    assert asyncio.run(evaluate_branch(log, conv.branch, [ev])) == []
    assert len(ScoreStore(log).all("many")) == 1000


def test_scores_land_on_the_right_step_and_branch_after_a_rewind(log: EventLog) -> None:
    conv = chat_branch(log, "forky", 2)  # seqs: 0 started, 1 q0, 2 a0, 3 q1, 4 a1
    registry = builtin_registry()
    max_steps = registry.create("max_steps", limit=10)
    contains = registry.create("contains")
    asyncio.run(evaluate_branch(log, conv.branch, [max_steps]))
    fork = conv.rewind(2)  # keeps q0/a0; b1's own events start at seq 3
    fork.submit(UserMessage(text="q1 again"))
    fork.submit(AgentReply(agent="bot", text="another answer"))
    new = asyncio.run(evaluate_branch(log, fork.branch, [max_steps]))
    assert [s.target.ref.split("/", 1)[1] for s in new] == ["b1/4"]  # the inherited step is not rescored
    store = ScoreStore(log)
    main_refs = sorted(s.target.ref.split("/", 1)[1] for s in store.of_branch(log.branch("forky", "main")))
    fork_refs = sorted(s.target.ref.split("/", 1)[1] for s in store.of_branch(fork.branch))
    assert main_refs == ["main/2", "main/4"]
    assert fork_refs == ["b1/4", "main/2"]  # inherited step's score is shared, not copied
    # an episode score belongs to its branch only; a missing reference is an error, not a 0
    asyncio.run(evaluate_branch(log, fork.branch, [contains], on="episode"))
    episode = [s for s in store.of_branch(fork.branch) if s.target.seq is None]
    assert len(episode) == 1 and episode[0].status == "error" and episode[0].value is None
    assert "reference" in (episode[0].error or "")
    assert not [s for s in store.of_branch(log.branch("forky", "main")) if s.target.seq is None]


def test_eval_commands(
    cli: Cli,
    log: EventLog,
    store_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "220")
    monkeypatch.chdir(ROOT)  # the default agents file and the mock judge's rules
    conv = chat_branch(log, "evalme", 2)
    conv.rewind(2).submit(UserMessage(text="again"))

    code, out, _ = cli("eval", "run", "evalme", "-b", "main", "--rubric", "experiments/rubrics/helpful.yaml")
    assert code == 0 and "2 new scores" in out and "correct 0.80, clear 0.90" in out
    episode = ["-e", "contains", "--reference", "answer 1", "--on", "episode"]
    code, out, _ = cli("eval", "run", "evalme", "-b", "main", *episode)
    assert code == 0 and "1 new scores" in out

    code, out, _ = cli("eval", "show", "evalme", "-b", "main")
    assert code == 0 and "judge: branch score 0.825 (steps); done 2" in out
    assert "contains: branch score 1.000 (episode); done 1" in out

    code, out, err = cli("eval", "top", "evalme")
    assert code == 2 and "several evaluators scored evalme (contains, judge)" in err
    code, out, _ = cli("eval", "top", "evalme", "-e", "judge")
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in out.splitlines() if "│" in line]
    by_branch = {r[1]: r for r in rows if r[0].isdigit()}
    assert code == 0
    assert by_branch["main"][2:5] == ["0.825", "steps", "2"]
    assert by_branch["b1"][2:5] == ["0.825", "steps", "1"]  # b1 inherits the scored step 2

    code, out, _ = cli("eval", "diff", "evalme/main/2", "evalme/b1/2")
    assert code == 0 and "+0.000" in out  # b1 inherits main's step 2, and its score

    for args, message in [
        (["eval", "run", "evalme"], "name at least one evaluator"),
        (["eval", "run", "evalme", "-e", "nope"], "unknown evaluator 'nope'"),
        (["eval", "run", "evalme", "-e", "regex", "-p", "broken"], "write EVALUATOR.NAME=VALUE"),
        (
            ["eval", "run", "evalme", "-e", "regex", "-p", "judge.x=1"],
            "--param for evaluators not run: judge",
        ),
        (["eval", "diff", "evalme/main/x", "evalme/main/2"], "a target is CONV/BRANCH/SEQ"),
        (["eval", "diff", "evalme/main/99", "evalme/main/2"], "the branch holds events 0..4"),
    ]:
        code, _, err = cli(*args)
        assert code != 0 and message in " ".join(err.split()), (args, err)


SEEN_RUNNING = threading.Event()


@evaluator(id="slow", version="1")
async def slow(ctx: EvalContext) -> float:
    """Finishes once the test has seen it running (or after 10 s, when the status never shows)."""
    deadline = time.monotonic() + 10
    while not SEEN_RUNNING.is_set() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return 1.0


def test_an_evaluation_is_pending_then_running_then_done(log: EventLog) -> None:
    conv = chat_branch(log, "statuses", 1)
    registry = builtin_registry()
    registry.register(slow)
    store = ScoreStore(log)
    SEEN_RUNNING.clear()

    async def watch() -> list[str]:
        task = asyncio.create_task(evaluate_branch(log, conv.branch, [registry.create("slow")]))
        seen: list[str] = []
        while not task.done():
            seen += [s.status for s in await asyncio.to_thread(store.all, "statuses")]
            if "running" in seen:
                SEEN_RUNNING.set()
            await asyncio.sleep(0.02)
        await task
        return seen

    seen = asyncio.run(watch())
    assert "running" in seen
    assert [s.status for s in store.all("statuses")] == ["done"]
