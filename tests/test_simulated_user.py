"""A simulated user: an agent of the spec that answers the team after each of its answers, until
it declares its goal met or gives up (or `max_turns` is reached); its verdict is the `goal_met`
metric of the row, with the dialogue's `turns`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from conftest import Cli
from test_multiturn import user_messages
from test_rollouts import SPEC, spec_error

from p2e.api import run_rollout
from p2e.events import AgentReply, Limits, ToolResult
from p2e.rollouts.run import record_spec
from p2e.rollouts.spec import load_spec
from p2e.runtime.agent_step import AgentRunner
from p2e.runtime.driver import AgentHandle, Driver
from p2e.runtime.steps import (
    EpisodeOutcome,
    EpisodeRequest,
    SimulatedUser,
    StepRequest,
    StepResult,
    ToolsRequest,
)
from p2e.store import EventLog
from p2e.store.aio import GroupCommit

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "experiments" / "support_desk.yaml"
USER = SimulatedUser(agent="customer", goal="a refund for order 42", facts={"order": 42})


def test_the_simulated_user_declares_its_verdict_per_variant(
    ray_session: None, store_env: dict[str, str], log: EventLog, cli: Cli, tmp_path: Path
) -> None:
    result = run_rollout(EXAMPLE, store_url=store_env["P2E_REDIS_URL"], namespace=store_env["P2E_NAMESPACE"])
    rows = {r.variant: r for r in result.rows}
    met, gave_up = rows["baseline"], rows["curt"]
    assert met.status == "done" and met.goal_met is True and met.turns == 3
    assert (met.ended_by, met.end_reason) == ("user", "GOAL MET: my refund for order 42 is issued.")
    assert met.scores == {"goal_met": 1.0, "turns": 3.0} and met.primary == 1.0
    assert user_messages(log, met.conversation) == [
        "My order 42 arrived broken.",
        "A refund, please.",
        "Is my refund confirmed?",
    ]
    assert gave_up.status == "done" and gave_up.goal_met is False and gave_up.turns == 2
    assert (gave_up.ended_by, gave_up.end_reason) == ("user", "GIVE UP: the clerk does not help.")
    assert gave_up.scores == {"goal_met": 0.0, "turns": 2.0}
    by_variant = {s.variant: s for s in result.summary()}
    assert by_variant["baseline"].mean == 1.0 and by_variant["curt"].mean == 0.0
    (cmp,) = result.compare("baseline")
    assert cmp.variant == "curt" and cmp.difference == -1.0
    code, out, err = cli("rollout", "compare", result.id)
    assert code == 0 and "curt" in out and "-1.000" in out, err
    exported = [
        json.loads(line) for line in result.to_jsonl(tmp_path / "rows.jsonl").read_text().splitlines()
    ]
    assert {(r["variant"], r["goal_met"], r["ended_by"]) for r in exported} == {
        ("baseline", True, "user"),
        ("curt", False, "user"),
    }


def test_max_turns_ends_a_dialogue_without_a_verdict_and_the_user_spends_in_the_row(log: EventLog) -> None:
    team = load_spec(EXAMPLE).team_config
    runners = {a: AgentRunner(a, team, store=log) for a in ("clerk", "customer")}
    req = EpisodeRequest(
        cid="su-limit",
        name="su-limit",
        root="clerk",
        graph={"clerk": ()},
        limits=Limits(max_steps=10),
        message="My order 42 arrived broken.",
        user=USER,
        max_turns=2,
        episode="su-limit",
    )

    async def go() -> EpisodeOutcome:
        return await Driver(log, GroupCommit(log.url, log.keys.ns), runners.__getitem__).episode(req)

    out = asyncio.run(go())
    assert out.status == "done" and out.turns == 2 and out.goal_met is False
    assert (out.ended_by, out.end_reason) == ("limit", "max_turns 2 reached without the user's verdict")
    assert user_messages(log, out.conversation) == ["My order 42 arrived broken.", "A refund, please."]
    replies = [e for e in log.history(out.conversation) if isinstance(e, AgentReply)]
    assert {e.agent for e in replies} == {"clerk"}  # the user is not on the interaction stack
    team_tokens = sum(e.usage.prompt_tokens + e.usage.completion_tokens for e in replies)
    assert out.tokens > team_tokens  # the user's two model calls count in the row


def test_a_simulated_user_is_checked_when_the_spec_loads(tmp_path: Path) -> None:
    def scenario(**fields: object) -> dict:
        return {**SPEC, "scenarios": [{"id": "trip", "message": "hi", **fields}]}

    unknown = spec_error(tmp_path, scenario(user={"agent": "nobody", "goal": "snow"}))
    assert "scenario 'trip'" in unknown and "unknown agent 'nobody'" in unknown
    both = spec_error(
        tmp_path, scenario(user={"agent": "writer", "goal": "snow"}, turns=[{"message": "more"}])
    )
    assert "scripted turns or a simulated user, not both" in both
    assert "goal" in spec_error(tmp_path, scenario(user={"agent": "writer"}))
    single = load_spec(EXAMPLE.parent / "multiturn.yaml")
    assert all("user" not in s for s in record_spec(single)["scenarios"])  # its hash holds


class _Broken:
    """A user agent whose model fails for good."""

    async def step(self, req: StepRequest) -> StepResult:
        raise RuntimeError("the model is down")

    async def run_tools(self, req: ToolsRequest) -> list[ToolResult]:
        raise AssertionError("a simulated user runs no tools")


def test_a_failing_simulated_user_fails_the_episode(log: EventLog) -> None:
    team = load_spec(EXAMPLE).team_config
    agents: dict[str, AgentHandle] = {"clerk": AgentRunner("clerk", team, store=log), "customer": _Broken()}
    req = EpisodeRequest(
        cid="su-broken",
        name="su-broken",
        root="clerk",
        graph={"clerk": ()},
        limits=Limits(max_steps=10),
        message="My order 42 arrived broken.",
        user=USER,
        episode="su-broken",
    )

    async def go() -> EpisodeOutcome:
        return await Driver(log, GroupCommit(log.url, log.keys.ns), agents.__getitem__).episode(req)

    out = asyncio.run(go())
    assert out.status == "failed" and out.turns == 1 and out.goal_met is None
    assert out.ended_by == "error" and "simulated user 'customer'" in (out.error or "")
    assert "the model is down" in (out.error or "")
