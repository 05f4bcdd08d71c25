"""Reflection, supervisor-enforced deadlines and evaluator-guided branching, driven in-process
(the same Driver a supervisor runs) on the real store with the mock provider."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from p2e.agents import TeamConfig
from p2e.agents.spec import team_from_mapping
from p2e.api import local_chat
from p2e.conversation import Conversation
from p2e.errors import InvalidArgument
from p2e.evals.store import ScoreStore
from p2e.events import AgentReply, Critique, Failed, Limits
from p2e.machine import CallAgent, Command, pending
from p2e.runtime.agent_step import AgentRunner
from p2e.runtime.driver import Driver
from p2e.runtime.guided_search import read_tree
from p2e.runtime.hosted import Hosted
from p2e.runtime.local import local_driver
from p2e.runtime.replay import replay_branch
from p2e.runtime.steps import EpisodeOutcome, EpisodeRequest
from p2e.runtime.turns import Spend, Turn, TurnDriver
from p2e.store import EventLog
from p2e.store.aio import GroupCommit
from p2e.store.log import new_id

WRITER_RULES = {
    # a draft first; after any review it fixes the unit, and repeats itself after that
    "writer": {
        "rules": [
            {"match": "Fixed:", "text": "{{ last }}"},
            {"match": "Review your answer|reviewer", "text": "Fixed: 21 degrees Celsius."},
            {"text": "21 degrees."},
        ]
    },
    "critic": {"rules": [{"text": "The unit is missing."}]},
    # guided search: four candidate models, one of them right
    "bad1": {"rules": [{"text": "It is raining."}]},
    "bad2": {"rules": [{"text": "Cloudy, maybe."}]},
    "good": {"rules": [{"text": "Snow, heavy at times."}]},
    "bad3": {"rules": [{"text": "No idea."}]},
    "seeded": {"rules": [{"text": "answer {{ seed }}"}]},
    "slow": {"latency_ms": 3000, "rules": [{"text": "late"}]},
}


PERSONA = "You are a test agent."


def make_team(agents: dict[str, Any], rules: dict[str, Any] | None = None, **extra: Any) -> TeamConfig:
    """A team with inline personas and the mock rules above (plus `rules`)."""
    agents = {a: {"persona": PERSONA, **body} for a, body in agents.items()}
    raw = {"agents": agents, "providers": {"mock": {"rules": {**WRITER_RULES, **(rules or {})}}}, **extra}
    return team_from_mapping(raw, Path("."), "test agents")


def chat(
    team: TeamConfig, agent: str, store_url: str, namespace: str, text: str, limits: Limits | None = None
):
    c = local_chat(agent, agents=team, store_url=store_url, namespace=namespace, limits=limits)
    try:
        return c.send(text, timeout=60)
    finally:
        c.close()


# --- reflection ---------------------------------------------------------------------------------


def test_self_review_revises_the_answer_before_it_is_given(
    store_url: str, namespace: str, log: EventLog
) -> None:
    team = make_team({"writer": {"model": "mock/writer", "reflection": {"rounds": 3}}})
    turn = chat(team, "writer", store_url, namespace, "How warm is it?")
    assert turn.answer == "Fixed: 21 degrees Celsius."
    events = log.history(turn.conversation)
    kinds = [e.kind for e in events]
    # draft, review, revision, review, the same revision again: it stands (2 of 3 rounds used)
    assert kinds == [
        "started",
        "user_message",
        "agent_reply",
        "critique",
        "agent_reply",
        "critique",
        "agent_reply",
    ]
    assert [e.text for e in events if isinstance(e, AgentReply)] == [
        "21 degrees.",
        "Fixed: 21 degrees Celsius.",
        "Fixed: 21 degrees Celsius.",
    ]
    assert all(e.critic is None for e in events if isinstance(e, Critique))


def test_reviews_stop_after_the_rounds_allowed(store_url: str, namespace: str, log: EventLog) -> None:
    team = make_team({"writer": {"model": "mock/writer", "reflection": {"rounds": 1}}})
    turn = chat(team, "writer", store_url, namespace, "How warm is it?")
    assert turn.answer == "Fixed: 21 degrees Celsius."
    assert sum(isinstance(e, Critique) for e in log.history(turn.conversation)) == 1


def test_a_critic_agent_reviews_and_the_branch_replays_exactly(
    store_url: str, namespace: str, log: EventLog
) -> None:
    team = make_team(
        {
            "writer": {"model": "mock/writer", "reflection": {"critic": "critic"}},
            "critic": {"model": "mock/critic"},
        }
    )
    assert team.team_of("writer") == {"writer": (), "critic": ()}
    turn = chat(team, "writer", store_url, namespace, "How warm is it?")
    assert turn.answer == "Fixed: 21 degrees Celsius."
    events = log.history(turn.conversation)
    (critique,) = [e for e in events if isinstance(e, Critique)]
    assert critique.critic == "critic" and critique.text == "The unit is missing."
    assert critique.usage is not None and critique.usage.completion_tokens > 0

    # the critic's tokens count toward the conversation's spend
    def tokens(kinds: Any) -> int:
        return sum(
            e.usage.prompt_tokens + e.usage.completion_tokens
            for e in events
            if isinstance(e, kinds) and e.usage is not None
        )

    spent = Conversation.open(log, turn.conversation).state.tokens
    assert spent == tokens(AgentReply | Critique) > tokens(AgentReply)
    report = asyncio.run(replay_branch(log, team, turn.conversation))
    assert report.matched, report.differences


@pytest.mark.parametrize(
    ("reflection", "problem"),
    [
        ({"critic": "nobody"}, "'reflection.critic': 'nobody' must be another agent"),
        ({"critic": "writer"}, "'reflection.critic': 'writer' must be another agent"),
        ({"rounds": 0}, "reflection.rounds"),
        ({"rounds": 2, "extra": 1}, "reflection.extra"),
    ],
)
def test_bad_reflection_settings_are_named(reflection: dict[str, Any], problem: str) -> None:
    with pytest.raises(InvalidArgument, match="agent 'writer'") as e:
        make_team({"writer": {"model": "mock/writer", "reflection": reflection}})
    assert problem in str(e.value)


# --- budgets ------------------------------------------------------------------------------------


def test_the_supervisor_ends_a_conversation_whose_deadline_passes_mid_call(
    store_url: str, namespace: str, log: EventLog
) -> None:
    team = make_team({"writer": {"model": "mock/slow"}})
    turn = chat(team, "writer", store_url, namespace, "hello", limits=Limits(deadline_s=0.5))
    assert turn.status == "failed"
    last = log.history(turn.conversation)[-1]
    assert isinstance(last, Failed) and last.code == "deadline"
    assert "while waiting for agent 'writer'" in last.message


# --- guided branching ---------------------------------------------------------------------------

GUIDED = {
    "search": "best_of_n",
    "candidates": [
        {"model": "mock/bad1"},
        {"model": "mock/bad2"},
        {"model": "mock/good"},
        {"model": "mock/bad3"},
    ],
    "value": {"id": "contains", "params": {"ignore_case": True}},
}


def run_episode(
    team: TeamConfig,
    log: EventLog,
    root: str,
    message: str,
    reference: str,
    overrides: dict[str, dict[str, Any]] | None = None,
    **limits: Any,
):
    async def go():
        driver = local_driver(log, team)
        try:
            req = EpisodeRequest(
                cid=f"ep{abs(hash((root, message))) % 10**8}",
                name=f"ep-{root}-{len(message)}",
                root=root,
                graph=team.team_of(root),
                limits=Limits(**limits),
                message=message,
                reference=reference,
                overrides=overrides or {},
            )
            return await driver.episode(req)
        finally:
            await driver.writer.close()

    return asyncio.run(go())


def test_best_of_n_continues_on_the_best_child_and_keeps_the_tree(log: EventLog) -> None:
    team = make_team({"forecaster": {"model": "mock/bad1", "guide": GUIDED}})
    out = run_episode(team, log, "forecaster", "Weather in Oslo?", reference="snow")
    assert out.status == "done" and out.answer == "Snow, heavy at times.", out.error
    nodes = read_tree(log, out.conversation)
    assert [n.label for n in nodes] == [
        "model=mock/bad1",
        "model=mock/bad2",
        "model=mock/good",
        "model=mock/bad3",
    ]
    assert [n.value for n in nodes] == [0.0, 0.0, 1.0, 0.0]
    assert [n.chosen for n in nodes] == [False, False, True, False]
    assert all(n.parent == "main" and n.fork_at == 2 and n.terminal for n in nodes)
    chosen = nodes[2]
    # the conversation continues on the chosen child, which is checked out
    assert out.branch == chosen.branch == log.conversation(out.conversation).active
    # every child is a branch of its own, scored in the store
    branches = {b.name for b in log.branches(out.conversation)}
    assert {n.branch for n in nodes} <= branches
    scores = {s.target.branch: s.value for s in ScoreStore(log).all(out.conversation)}
    assert scores == {n.branch: n.value for n in nodes}
    # the episode's spend counts every child, not only the chosen one
    one = log.history(out.conversation, chosen.branch)[-1]
    assert isinstance(one, AgentReply) and one.usage is not None
    per_child = one.usage.prompt_tokens + one.usage.completion_tokens
    assert out.tokens == sum(n.tokens for n in nodes) >= 4 * per_child - 16


def test_the_chosen_branch_replays_exactly(log: EventLog) -> None:
    team = make_team({"forecaster": {"model": "mock/bad1", "guide": GUIDED}})
    out = run_episode(team, log, "forecaster", "Weather in Bergen?", reference="snow")
    report = asyncio.run(replay_branch(log, team, out.conversation, out.branch))
    assert report.matched, report.differences
    replayed = log.history(report.replay)
    assert [e.text for e in replayed if isinstance(e, AgentReply)] == ["Snow, heavy at times."]


def test_a_search_a_variant_asked_for_replays_without_searching_again(log: EventLog) -> None:
    team = make_team({"forecaster": {"model": "mock/bad1"}})  # the file has no guide: the variant does
    out = run_episode(
        team,
        log,
        "forecaster",
        "Weather in Narvik?",
        reference="snow",
        overrides={"forecaster": {"guide": GUIDED}},
    )
    assert out.answer == "Snow, heavy at times." and len(read_tree(log, out.conversation)) == 4
    report = asyncio.run(replay_branch(log, team, out.conversation, out.branch))
    assert report.matched, report.differences
    assert read_tree(log, report.replay) == []  # followed the recorded choice, searched nothing


def test_seeded_children_differ_by_seed(log: EventLog) -> None:
    guide = {"seeds": 3, "value": {"id": "contains"}}
    team = make_team({"solver": {"model": "mock/seeded", "guide": guide}})
    out = run_episode(team, log, "solver", "pick", reference="answer 1")
    assert out.answer == "answer 1"
    nodes = read_tree(log, out.conversation)
    assert [(n.label, n.value, n.chosen) for n in nodes] == [
        ("seed=0", 0.0, False),
        ("seed=1", 1.0, True),
        ("seed=2", 0.0, False),
    ]


def test_a_guided_delegate_is_searched_at_its_own_turns(log: EventLog) -> None:
    boss = {
        "rules": [
            {"role": "tool", "text": "Boss says: {{ last }}"},
            {"delegate": {"agent": "forecaster", "task": "forecast for {{ last }}"}},
        ]
    }
    team = make_team(
        {
            "boss": {"model": "mock/boss", "can_delegate_to": ["forecaster"]},
            # valued by its own answer (the step that pops the frame), not the boss's
            "forecaster": {
                "model": "mock/bad1",
                "guide": {**GUIDED, "value": {**GUIDED["value"], "per": "step"}},
            },
        },
        rules={"boss": boss},
    )
    out = run_episode(team, log, "boss", "Oslo", reference="snow")
    assert out.answer == "Boss says: Snow, heavy at times."
    nodes = read_tree(log, out.conversation)
    assert len(nodes) == 4 and sum(n.chosen for n in nodes) == 1
    assert all(n.agent == "forecaster" and n.terminal for n in nodes)


def test_beam_and_best_first_search_step_by_step(log: EventLog) -> None:
    # `counter` answers with a tool call first, then a final answer; a step evaluator values
    # the step's text, so the search picks the child whose steps say "good"
    stepper = {
        "rules": [
            {"role": "tool", "text": "done {{ seed }}"},
            {"tool_calls": [{"name": "calculator", "arguments": {"expression": "{{ seed }} + 1"}}]},
        ]
    }
    for search, extra in (("beam", {"width": 2, "depth": 2}), ("best_first", {"budget": 6})):
        guide = {
            "search": search,
            "scope": "step",
            "seeds": 3,
            "value": {"id": "step_digit", "per": "step"},
            **extra,
        }
        team = make_team(
            {"solver": {"model": "mock/stepper", "tools": ["calculator"], "guide": guide}},
            rules={"stepper": stepper},
            evaluator_modules=["evaluators_for_tests"],
        )
        out = run_episode(team, log, "solver", f"go {search}", reference="")
        nodes = read_tree(log, out.conversation)
        chosen = [n for n in nodes if n.chosen]
        assert out.status == "done", out.error
        assert out.answer == "done 2", (search, [n.model_dump() for n in nodes])
        levels = sorted({n.level for n in chosen})
        assert levels == [0, 1]  # a path of two steps: the tool call, then the answer
        if search == "beam":
            assert len(nodes) == 3 + 2 * 3  # 3 children, then 3 for each of the 2 kept
        else:
            assert len(nodes) <= 6
            assert any(n.visits == 2 for n in nodes)  # the node expanded was visited again


class TakeTheGoodModel:
    """A turn policy of the test's own: runs the agent's turn on a fork with another model."""

    def __init__(self) -> None:
        self.turns = 0

    def turn(self, driver: TurnDriver, hosted: Hosted, cmd: CallAgent) -> Turn | None:
        if cmd.frame.agent != "forecaster":
            return None
        policy = self

        class OnAFork:
            async def run(self) -> list[Command]:
                policy.turns += 1
                child = await driver.fork(hosted, "alt", {"forecaster": {"model": "mock/good"}})
                todo = pending(child.conv.state)
                while todo:  # the policy's own steps: not handed to the policy again
                    todo = await driver.perform(child, todo.pop(0)) + todo
                await driver.adopt(hosted, child)
                return pending(hosted.conv.state)

        return OnAFork()

    def spent(self, hosted: Hosted) -> Spend:
        return Spend(tokens=1000)


def test_a_turn_policy_handed_to_the_driver_drives_the_turn(log: EventLog) -> None:
    team = make_team({"forecaster": {"model": "mock/bad1"}})
    policy = TakeTheGoodModel()

    async def go() -> EpisodeOutcome:
        driver = Driver(
            log, GroupCommit(log.url, log.keys.ns), lambda a: AgentRunner(a, team), team=team, policy=policy
        )
        try:
            req = EpisodeRequest(
                cid=new_id(),
                name=f"policy-{new_id()[:8]}",
                root="forecaster",
                graph=team.team_of("forecaster"),
                limits=Limits(),
                message="Oslo?",
            )
            return await driver.episode(req)
        finally:
            await driver.writer.close()

    out = asyncio.run(go())
    assert out.answer == "Snow, heavy at times." and policy.turns == 1
    assert out.branch == "alt" == log.conversation(out.conversation).active
    state = Conversation.open(log, out.conversation).state
    assert out.tokens == state.tokens + 1000  # what the policy says it spent off the branch counts


def test_the_cli_shows_the_search_tree_and_the_chosen_path(
    log: EventLog, store_env: dict[str, str], cli
) -> None:
    team = make_team({"forecaster": {"model": "mock/bad1", "guide": GUIDED}})
    out = run_episode(team, log, "forecaster", "Weather in Tromso?", reference="snow")
    code, text, _ = cli("conversation", "tree", out.conversation)
    assert code == 0
    lines = [line for line in text.splitlines() if "── g" in line]
    assert len(lines) == 4
    assert text.count("chosen") == 1
    chosen = text.split(f"── {out.branch} ")[1].split("── g")[0]  # its lines, however wrapped
    assert "chosen" in chosen and "value 1.000" in chosen and "mock/good" in chosen
    assert "main at seq 2" in text
    bad = out.conversation.replace("ep", "nope")
    code, text, err = cli("conversation", "tree", bad)
    assert code == 2 and f"unknown conversation {bad!r}" in err
    # the children are ranked by their stored scores, the chosen one first
    code, text, _ = cli("eval", "top", out.conversation)
    assert code == 0, text
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in text.splitlines() if line.startswith("│")]
    ranked = [r[1] for r in rows]
    assert ranked[0] == out.branch and set(ranked) >= {"g1", "g2", "g3", "g4"}, text


def test_bad_guide_settings_are_named() -> None:
    cases = [
        ({"candidates": [{"model": "mock/good"}], "value": {"id": "contains"}}, "at least 2 entries"),
        ({"seeds": 3, "candidates": [{}, {}], "value": {"id": "contains"}}, "either `candidates`"),
        ({"seeds": 3}, "guide.value"),
        ({"seeds": 3, "search": "beam", "value": {"id": "contains"}}, "set `scope: step`"),
        ({"candidates": [{"tools": []}, {}], "value": {"id": "contains"}}, "may not change tools"),
        (
            {"candidates": [{"temperature": 9}, {}], "value": {"id": "contains"}},
            "field 'guide': Value error, candidates[0]: field 'temperature'",
        ),
    ]
    for guide, problem in cases:
        with pytest.raises(InvalidArgument, match="agent 'solver'") as e:
            make_team({"solver": {"model": "mock/good", "guide": guide}})
        assert problem in str(e.value), (guide, str(e.value))


def test_a_guided_variant_in_a_rollout_reaches_the_best_models_score(
    ray_session: None, store_url: str, namespace: str, log: EventLog
) -> None:
    from p2e.api import run_rollout
    from p2e.rollouts.spec import load_spec

    spec = load_spec(Path(__file__).resolve().parent.parent / "experiments" / "guided.yaml")
    result = run_rollout(spec, store_url=store_url, namespace=namespace)
    by: dict[str, list] = {}
    for row in result.rows:
        by.setdefault(row.variant, []).append(row)
    mean = {v: sum(r.primary or 0 for r in rows) / len(rows) for v, rows in by.items()}
    tokens = {v: sum(r.tokens for r in rows) for v, rows in by.items()}
    assert mean["guided"] == mean["careful"] == 1.0 > max(mean["sloppy"], mean["lazy"], mean["guess"])
    # four children a turn, every one paid for
    assert 3.5 * tokens["sloppy"] < tokens["guided"] < 4.5 * tokens["sloppy"]
    for row in by["guided"]:
        nodes = read_tree(log, row.conversation)
        (chosen,) = [n for n in nodes if n.chosen]
        assert len(nodes) == 4 and chosen.branch == row.branch and chosen.value == 1.0
    for row in by["careful"]:
        assert read_tree(log, row.conversation) == []  # plain variants fork nothing


def test_a_search_that_passes_the_token_budget_ends_the_episode_with_a_budget_event(log: EventLog) -> None:
    team = make_team({"forecaster": {"model": "mock/bad1", "guide": GUIDED}})
    # one child fits the budget, four do not: the children that were not chosen count too
    out = run_episode(team, log, "forecaster", "Weather in Oslo?", reference="snow", max_tokens=40)
    assert out.status == "failed"
    last = log.history(out.conversation, out.branch)[-1]
    assert isinstance(last, Failed) and last.code == "budget"
    assert "counting guided-search children" in last.message
    assert out.tokens > 40


def test_the_plan_counts_the_children_of_guided_steps() -> None:
    from p2e.rollouts.plan import summarize_plan
    from p2e.rollouts.spec import load_spec

    spec = load_spec(Path(__file__).resolve().parent.parent / "experiments" / "guided.yaml")
    s = summarize_plan(spec)
    # 4 plain variants x 8 scenarios at one call each, the guided one at 4 children per turn
    assert (s.episodes, s.min_model_calls) == (40, 32 + 8 * 4)
    assert s.max_model_calls == (32 + 8 * 4) * spec.limits.max_steps


def test_the_ray_meter_sums_counters_and_hands_them_over_within_a_second(ray_session: None) -> None:
    from actors import metrics as m
    from p2e.events import Usage

    meter = m.RayMeter()
    seen: list[tuple[str, float, dict]] = []
    for name in ("steps", "tokens", "cost"):
        getattr(meter, name).inc = lambda v, tags, name=name: seen.append((name, v, tags))
    reply = AgentReply(agent="a", text="x", model="mock/x", usage=Usage(prompt_tokens=3, completion_tokens=4))

    async def go() -> None:
        for _ in range(5):
            meter.reply(reply)
        assert seen == []  # summed, not yet handed over
        await asyncio.sleep(m.FLUSH_S + 0.2)

    asyncio.run(go())
    tags = {"agent": "a", "model": "mock/x", "rollout": "", "variant": ""}  # outside a rollout: empty
    assert sorted(seen) == [("steps", 5, tags), ("tokens", 35, tags)]
