"""Multi-turn scenarios: scripted user turns, each sent on the episode's conversation once the
root has answered the one before (and only if its `when` matches that answer)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from conftest import Cli
from test_rollouts import SPEC, spec_error, write_spec

from p2e.api import run_rollout
from p2e.events import Limits, UserMessage
from p2e.rollouts.plan import expand
from p2e.rollouts.run import record_spec
from p2e.rollouts.spec import load_spec
from p2e.runtime.agent_step import AgentRunner
from p2e.runtime.driver import Driver
from p2e.runtime.steps import EpisodeOutcome, EpisodeRequest, Turn
from p2e.store import EventLog
from p2e.store.aio import GroupCommit

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "experiments" / "multiturn.yaml"


def user_messages(log: EventLog, conversation: str) -> list[str]:
    return [e.text for e in log.history(conversation) if isinstance(e, UserMessage)]


def test_single_turn_episode_ids_are_those_of_before(tmp_path: Path) -> None:
    """Computed for this spec before scenarios had turns: a rollout started then resumes."""
    ids = [e.id for e in expand(load_spec(write_spec(tmp_path, SPEC)))]
    assert ids[:2] == ["6eda88f8b95a3f4e", "b31c7c7d40c1390f"]


def test_turns_are_part_of_the_id_and_absent_from_a_single_turn_spec(tmp_path: Path) -> None:
    single = load_spec(write_spec(tmp_path, SPEC))
    assert all("turns" not in s for s in record_spec(single)["scenarios"])  # the spec hash holds
    scenarios = [{**SPEC["scenarios"][0], "turns": [{"message": "And tomorrow?"}]}]
    multi = expand(load_spec(write_spec(tmp_path, {**SPEC, "scenarios": scenarios})))
    first = expand(single)[0]
    assert multi[0].turns == (Turn(message="And tomorrow?"),) and multi[0].id != first.id


def test_bad_turns_are_one_line_problems_naming_the_scenario(tmp_path: Path) -> None:
    def scenario(turns: list[dict]) -> dict:
        return {**SPEC, "scenarios": [{"id": "trip", "message": "hi", "turns": turns}]}

    bad_regex = spec_error(tmp_path, scenario([{"message": "more", "when": "(unclosed"}]))
    assert (
        "scenarios[0].Scenario.turns[0].when" in bad_regex and "not a valid regular expression" in bad_regex
    )
    empty = spec_error(tmp_path, scenario([{"message": ""}]))
    assert "scenarios[0].Scenario.turns[0].message" in empty
    long = spec_error(
        tmp_path, {**scenario([{"message": "a"}, {"message": "b"}]), "limits": {"max_turns": 2}}
    )
    assert "scenario 'trip' has 3 user turns" in long and "max_turns 2" in long
    assert "max_turns is a whole number" in spec_error(tmp_path, {**SPEC, "limits": {"max_turns": 0}})
    assert "line 7, field 'scenarios[0].Scenario.turns[0].when'" in bad_regex  # its line


def test_jsonl_scenarios_hold_turns(tmp_path: Path) -> None:
    line = {"id": "trip", "message": "hi", "turns": [{"message": "more", "when": "(?i)hello"}]}
    (tmp_path / "s.jsonl").write_text(json.dumps(line) + "\n")
    (ep,) = expand(
        load_spec(
            write_spec(
                tmp_path,
                {**SPEC, "scenarios": [{"file": "s.jsonl"}], "variants": [{"name": "b"}], "repeats": 1},
            )
        )
    )
    assert ep.turns == (Turn(message="more", when="(?i)hello"),)
    bad = '{"id": "x", "message": "hi", "turns": [{"message": "more", "when": "("}]}\n'
    (tmp_path / "s.jsonl").write_text(bad)
    error = spec_error(tmp_path, {**SPEC, "scenarios": [{"file": "s.jsonl"}]})
    assert "s.jsonl" in error and "line 1" in error and "turns.0.when" in error


def test_a_turn_that_fails_ends_the_dialogue_failed(log: EventLog) -> None:
    """The third turn passes the step limit: the episode fails there, its two turns kept."""
    team = load_spec(EXAMPLE).team_config
    runner = AgentRunner("clerk", team, store=log)
    req = EpisodeRequest(
        cid="mt-fail",
        name="mt-fail",
        root="clerk",
        graph={"clerk": ()},
        limits=Limits(max_steps=2),
        message="My order 42 arrived broken.",
        turns=(Turn(message="A refund, please.", when="refund"), Turn(message="Is my refund confirmed?")),
    )

    async def go() -> EpisodeOutcome:
        return await Driver(log, GroupCommit(log.url, log.keys.ns), lambda agent: runner).episode(req)

    out = asyncio.run(go())
    assert out.status == "failed" and out.turns == 3 and "max_steps" in (out.error or "")
    assert (out.ended_by, out.end_reason) == ("error", "turn 3 failed")
    assert user_messages(log, out.conversation) == [req.message, *(t.message for t in req.turns)]


def test_a_multi_turn_rollout_records_turns_and_compares(
    ray_session: None, store_env: dict[str, str], log: EventLog, cli: Cli
) -> None:
    result = run_rollout(EXAMPLE, store_url=store_env["P2E_REDIS_URL"], namespace=store_env["P2E_NAMESPACE"])
    rows = {(r.variant, r.scenario): r for r in result.rows}
    full = rows["baseline", "refund"]
    assert full.status == "done" and full.turns == 3 and full.primary == 1.0
    assert full.answer == "Yes: refund issued for order 42."
    assert full.ended_by == "script" and full.end_reason == "turn 3, the script's last, was answered"
    assert user_messages(log, full.conversation) == [
        "My order 42 arrived broken.",
        "A refund, please.",
        "Is my refund confirmed?",
    ]
    cut = rows["curt", "refund"]  # the curt clerk offers no refund: the second turn is not sent
    assert cut.status == "done" and cut.turns == 1 and cut.primary == 0.0
    assert cut.ended_by == "script" and cut.end_reason.startswith(
        "turn 2: the answer to turn 1 did not match"
    )
    assert user_messages(log, cut.conversation) == ["My order 42 arrived broken."]
    assert rows["baseline", "hello"].turns == 1 and rows["baseline", "hello"].primary == 1.0
    by_variant = {s.variant: s for s in result.summary()}
    assert by_variant["baseline"].mean == 1.0 and by_variant["curt"].mean == 0.0
    (cmp,) = result.compare("baseline")
    assert cmp.pairs == 2 and cmp.difference == -1.0
    code, out, err = cli("rollout", "compare", result.id)
    assert code == 0, err
    assert "against baseline" in out and "curt" in out
    code, out, err = cli("rollout", "show", result.id, "--rows")
    assert code == 0 and "4/4 episodes" in out, err
