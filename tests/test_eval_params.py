"""What makes a stored score current: the evaluator's id, version and parameters. `p2e eval run`
with other parameters (or a new version) scores again; with the same ones it scores nothing."""

from __future__ import annotations

import asyncio

import pytest
from conftest import Cli
from test_eval_store import chat_branch

from p2e.evals import builtin_registry
from p2e.evals.registry import EvalContext, evaluator
from p2e.evals.runner import evaluate_branch
from p2e.evals.store import ScoreStore
from p2e.store import EventLog


def test_eval_run_with_other_params_scores_again(
    cli: Cli, log: EventLog, store_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "220")
    chat_branch(log, "params", 2)  # two steps: "answer 0", "answer 1"
    run = ["eval", "run", "params", "-e", "regex"]

    code, out, err = cli(*run, "-p", "regex.pattern=answer 0")
    assert code == 0 and "2 new scores" in out, err
    code, out, _ = cli(*run, "-p", "regex.pattern=answer 0")
    assert code == 0 and "0 new scores" in out and "--rerun" in out
    code, out, _ = cli(*run, "-p", "regex.pattern=answer")
    assert code == 0 and "2 new scores" in out
    values = {s.target.seq: s.value for s in ScoreStore(log).all("params")}
    assert values == {2: 1.0, 4: 1.0}  # the new pattern's scores replaced the old ones
    code, out, _ = cli(*run, "-p", "regex.pattern=answer 0")  # back to the first: scored again
    assert code == 0 and "2 new scores" in out
    assert {s.target.seq: s.value for s in ScoreStore(log).all("params")} == {2: 1.0, 4: 0.0}


@evaluator(id="length", version="1")
def length_v1(ctx: EvalContext) -> float:
    return 1.0


@evaluator(id="length", version="2")
def length_v2(ctx: EvalContext) -> float:
    return 0.5


def test_a_new_evaluator_version_scores_again(log: EventLog) -> None:
    conv = chat_branch(log, "versions", 2)
    one, two = builtin_registry(), builtin_registry()
    one.register(length_v1)
    two.register(length_v2)
    assert len(asyncio.run(evaluate_branch(log, conv.branch, [one.create("length")]))) == 2
    assert asyncio.run(evaluate_branch(log, conv.branch, [one.create("length")])) == []
    again = asyncio.run(evaluate_branch(log, conv.branch, [two.create("length")]))
    assert [(s.version, s.value) for s in again] == [("2", 0.5), ("2", 0.5)]
    assert asyncio.run(evaluate_branch(log, conv.branch, [two.create("length")])) == []
