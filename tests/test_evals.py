"""Evaluation core: scores, the registry, the built-ins, the model judge (over real HTTP), aggregates."""

from __future__ import annotations

import asyncio
import json
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from openai_server import OpenAIServer, Reply
from pydantic import ValidationError

from p2e.errors import InvalidArgument
from p2e.evals import (
    BoundEvaluator,
    EvalContext,
    Evaluator,
    Judge,
    Registry,
    Score,
    Target,
    UnknownEvaluator,
    Verdict,
    as_rubric,
    best_branch,
    branch_score,
    builtin_registry,
    by_branch,
    counts,
    default_registry,
    evaluator,
    load_rubric,
    ranked_branches,
)
from p2e.evals import registry as registry_module
from p2e.events import (
    AgentReply,
    Event,
    Finished,
    Started,
    ToolCall,
    ToolResult,
    Usage,
    UserMessage,
)
from p2e.llm.registry import Providers

CONV = "demo"


def numbered(*events: Event) -> list[Event]:
    """Events as read back from the store: numbered from 0."""
    return [e.model_copy(update={"seq": i}) for i, e in enumerate(events)]


def usage(cost: float, latency: float) -> Usage:
    return Usage(prompt_tokens=10, completion_tokens=5, cost_usd=cost, latency_ms=latency)


def episode(answer: str | None = "  The capital is\n Paris. ") -> list[Event]:
    """planner delegates to researcher, who searches and answers; planner answers the user."""
    events: list[Event] = [
        Started(root="planner", team={"planner": ("researcher",), "researcher": ()}),
        UserMessage(text="What is the capital of France?"),
        AgentReply(
            agent="planner",
            tool_calls=(
                ToolCall(id="c1", name="delegate", arguments={"agent": "researcher", "task": "find it"}),
            ),
            usage=usage(0.01, 100),
        ),
        AgentReply(
            agent="researcher",
            tool_calls=(
                ToolCall(id="c2", name="search", arguments={"q": "capital of France", "opts": {"n": 3}}),
            ),
            usage=usage(0.02, 200),
        ),
        ToolResult(agent="researcher", call_id="c2", name="search", output="Paris is the capital"),
        AgentReply(agent="researcher", text="Paris", usage=usage(0.01, 100)),
    ]
    if answer is not None:
        events += [AgentReply(agent="planner", text=answer, usage=usage(0.01, 100)), Finished()]
    return numbered(*events)


def run(ev: Evaluator, ctx: EvalContext) -> Score:
    return asyncio.run(ev.evaluate(ctx))


def score(
    evaluator_id: str,
    *,
    events: list[Event] | None = None,
    seq: int | None = None,
    reference: str | None = None,
    **params: Any,
) -> Score:
    ev = builtin_registry().create(evaluator_id, **params)
    target = Target(conversation=CONV, branch="main", seq=seq)
    history = events if events is not None else episode()
    return run(ev, EvalContext.for_target(history, target, reference=reference))


# --- scores -------------------------------------------------------------------------------------


def test_score_values_outside_unit_interval_are_refused() -> None:
    t = Target(conversation=CONV, seq=3)
    assert t.ref == "demo/main/3" and Target(conversation=CONV, branch="b1").ref == "demo/b1"
    assert Score.done("x", "1", t, 0.25).value == 0.25
    for bad in (1.5, -0.1, float("nan"), float("inf")):
        with pytest.raises(ValidationError, match="outside"):
            Score.done("x", "1", t, bad)
    with pytest.raises(ValidationError, match="reason"):
        Score(evaluator="x", version="1", target=t, status="error")
    with pytest.raises(ValidationError, match="needs a value"):
        Score(evaluator="x", version="1", target=t, status="done")
    pending = Score.pending("x", "1", t)
    assert pending.value is None and pending.running().status == "running"
    assert Score.failed("x", "1", t, "boom").error == "boom"
    assert Score.model_validate_json(Score.done("x", "1", t, 1.0).model_dump_json()).value == 1.0


# --- built-ins ----------------------------------------------------------------------------------


def test_exact_match_normalises_whitespace_and_optionally_case() -> None:
    s = score("exact_match", reference="The capital is Paris.")
    assert (s.status, s.value, s.evaluator, s.version) == ("done", 1.0, "exact_match", "2")
    assert s.target == Target(conversation=CONV)
    assert score("exact_match", reference="the capital is paris.").value == 0.0
    assert score("exact_match", reference="the capital is paris.", ignore_case=True).value == 1.0
    assert score("exact_match", reference="The capital is Paris.", collapse_whitespace=False).value == 0.0


def test_contains() -> None:
    assert score("contains", reference="Paris").value == 1.0
    assert score("contains", reference="paris").value == 0.0
    assert score("contains", reference="paris", ignore_case=True).value == 1.0
    assert score("contains", reference="is  Paris").value == 1.0  # whitespace collapsed on both sides
    assert score("contains", reference="Lyon").value == 0.0


def test_answer_matchers_read_the_final_root_answer_of_an_episode() -> None:
    """The researcher said "Paris", but the root never answered: that is a 0, and it says why."""
    s = score("contains", events=episode(answer=None), reference="Paris")
    assert (s.status, s.value, s.metrics) == ("done", 0.0, {"answered": 0.0})
    assert "no final answer" in s.rationale


def test_answer_matchers_read_a_step_targets_own_reply() -> None:
    """A step is judged on what that reply says (a delegate's answer, for guided search), not on
    the root's answer: seq 5 is the researcher's reply naming Paris."""
    events = episode(answer=None)
    assert score("contains", events=events, seq=5, reference="Paris").value == 1.0
    assert score("contains", events=events, seq=5, reference="Lyon").value == 0.0
    assert score("regex", events=events, seq=5, pattern="Par.s").value == 1.0


def test_answer_matchers_without_a_reference_are_errors_not_zeros() -> None:
    s = score("exact_match")
    assert s.status == "error" and s.value is None
    assert "reference" in (s.error or "")


def test_regex() -> None:
    assert score("regex", pattern=r"\bParis\b").value == 1.0
    assert score("regex", pattern=r"\bparis\b").value == 0.0
    assert score("regex", pattern=r"\bparis\b", ignore_case=True).value == 1.0
    assert score("regex", reference=r"capital is\s+\w+").value == 1.0  # the reference as the pattern
    assert score("regex", pattern=r"Paris\.", full=True).value == 0.0
    assert score("regex", pattern=r"The capital is\s+Paris\.", full=True).value == 1.0
    with pytest.raises(InvalidArgument, match="not a valid regular expression"):
        builtin_registry().create("regex", pattern="(unclosed")
    bad = score("regex", reference="(unclosed")
    assert bad.status == "error" and "reference answer" in (bad.error or "")
    assert score("regex").status == "error"


def test_tool_called() -> None:
    s = score("tool_called", name="search")
    assert (s.value, s.metrics) == (1.0, {"calls": 1.0})
    assert score("tool_called", name="search", arguments={"q": "capital of France"}).value == 1.0
    assert score("tool_called", name="search", arguments={"opts": {"n": 3}}).value == 1.0
    assert score("tool_called", name="search", arguments={"opts": {"n": 4}}).value == 0.0
    assert score("tool_called", name="search", arguments={"missing": 1}).value == 0.0
    assert score("tool_called", name="search", agent="planner").value == 0.0
    assert score("tool_called", name="delegate", arguments={"agent": "researcher"}).value == 1.0
    assert score("tool_called", name="weather").value == 0.0
    # on a step: only that step's calls count
    assert score("tool_called", name="search", seq=3).value == 1.0
    assert score("tool_called", name="search", seq=2).value == 0.0


def test_max_steps() -> None:
    s = score("max_steps", limit=4)
    assert (s.value, s.metrics["steps"]) == (1.0, 4.0)
    assert score("max_steps", limit=3).value == 0.0
    assert score("max_steps", limit=3, decay="linear").value == pytest.approx(2 / 3)
    assert score("max_steps", limit=2, decay="linear").value == 0.0
    with pytest.raises(InvalidArgument, match="limit"):
        builtin_registry().create("max_steps", limit=0)
    with pytest.raises(InvalidArgument, match="decay"):
        builtin_registry().create("max_steps", limit=3, decay="soft")


def test_cost_and_latency_against_a_budget() -> None:
    s = score("cost", budget_usd=0.1)
    assert s.value == pytest.approx(0.5) and s.metrics["cost_usd"] == pytest.approx(0.05)
    assert score("cost", budget_usd=0.05).value == 0.0
    assert score("cost", budget_usd=0.01).value == 0.0  # over budget: 0, with the raw sum kept
    assert score("cost", budget_usd=0.01).metrics["cost_usd"] == pytest.approx(0.05)
    step = score("cost", budget_usd=0.1, seq=3)  # one step: its own usage only
    assert step.value == pytest.approx(0.8) and step.metrics["cost_usd"] == pytest.approx(0.02)
    lat = score("latency", budget_ms=1000)
    assert lat.value == pytest.approx(0.5) and lat.metrics["latency_ms"] == pytest.approx(500)
    free = numbered(Started(root="a", team={"a": ()}), AgentReply(agent="a", text="hi"))
    s = score("cost", events=free, budget_usd=1)
    assert s.value == 1.0 and "without usage" in s.rationale
    with pytest.raises(InvalidArgument, match="budget_usd"):
        builtin_registry().create("cost", budget_usd=0)


# --- registry -----------------------------------------------------------------------------------


def test_registry_errors() -> None:
    r = builtin_registry()
    with pytest.raises(UnknownEvaluator, match=r"unknown evaluator 'nope'.*contains.*exact_match.*judge"):
        r.get("nope")
    with pytest.raises(InvalidArgument, match=r"no parameter 'patern'.*pattern"):
        r.create("regex", patern="x")
    with pytest.raises(InvalidArgument, match="needs parameter 'budget_ms'"):
        r.create("latency")
    with pytest.raises(InvalidArgument, match="parameter 'budget_ms'"):
        r.create("latency", budget_ms="fast")

    @evaluator(id="contains", version="9")
    def impostor(ctx: EvalContext) -> float:
        return 1.0

    with pytest.raises(InvalidArgument, match=r"'contains' is registered already.*impostor"):
        r.register(impostor)
    r.register(impostor, replace=True)
    assert r.get("contains").version == "9"
    assert builtin_registry().get("contains").version == "2"  # registries are independent

    with pytest.raises(InvalidArgument, match="not an evaluator"):
        r.register(lambda ctx: 1.0)
    with pytest.raises(InvalidArgument, match="evaluator id"):
        evaluator(id="bad id!")
    with pytest.raises(InvalidArgument, match="evaluate"):
        evaluator(id="cls")(type("NoEvaluate", (), {}))


def test_load_module_errors() -> None:
    r = Registry()
    with pytest.raises(InvalidArgument, match=r"cannot import evaluator module 'no_such_mod'.*PYTHONPATH"):
        r.load_module("no_such_mod")
    with pytest.raises(InvalidArgument, match="defines no evaluators"):
        r.load_module("p2e.errors")


def test_custom_evaluators_from_a_module() -> None:
    r = builtin_registry()
    assert r.load_module("evaluators_for_tests") == ["shouty", "length", "broken", "step_digit"]
    assert r.load_module("evaluators_for_tests") == ["shouty", "length", "broken", "step_digit"]  # idempotent
    events = numbered(Started(root="a", team={"a": ()}), AgentReply(agent="a", text="HELLO there"))
    ctx = EvalContext.for_target(events, Target(conversation=CONV))

    shouty = r.create("shouty")
    assert isinstance(shouty, Evaluator) and isinstance(shouty, BoundEvaluator)
    s = run(shouty, ctx)
    assert (s.evaluator, s.version, s.value) == ("shouty", "2", 1.0)
    assert s.metrics["ratio"] == pytest.approx(0.5)
    assert run(r.create("shouty", min_ratio=0.9), ctx).value == 0.0

    assert run(r.create("length", limit=22), ctx).value == pytest.approx(0.5)  # async class

    broken = run(r.create("broken"), ctx)
    assert broken.status == "error" and broken.value is None
    assert "1.5" in (broken.error or "") and "outside [0, 1]" in (broken.error or "")


def test_evaluator_exceptions_become_error_scores() -> None:
    @evaluator(id="raises")
    def raises(ctx: EvalContext) -> float:
        raise KeyError("missing thing")

    @evaluator(id="bad-score")
    def bad_score(ctx: EvalContext) -> Score:
        return Score.done("bad-score", "1", ctx.target, 2.0)  # refused when built

    @evaluator(id="wrong-type")
    def wrong_type(ctx: EvalContext) -> str:
        return "high"

    ctx = EvalContext.for_target(episode(), Target(conversation=CONV))
    r = Registry([raises, bad_score, wrong_type])
    s = run(r.create("raises"), ctx)
    assert s.status == "error" and "KeyError" in (s.error or "") and "missing thing" in (s.error or "")
    assert "outside [0, 1]" in (run(r.create("bad-score"), ctx).error or "")
    assert "returned str" in (run(r.create("wrong-type"), ctx).error or "")


def test_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    group = registry_module.ENTRY_POINT_GROUP
    eps = metadata.EntryPoints(
        [
            metadata.EntryPoint(name="shouty", value="evaluators_for_tests:shouty", group=group),
            metadata.EntryPoint(name="mod", value="evaluators_for_tests", group=group),
        ]
    )
    seen: list[str] = []

    def entry_points(*, group: str) -> metadata.EntryPoints:
        seen.append(group)
        return eps

    monkeypatch.setattr(registry_module.metadata, "entry_points", entry_points)
    r = default_registry()
    assert seen == ["p2e.evaluators"]
    assert {"shouty", "length", "broken", "judge", "exact_match"} <= set(r.ids())

    bad = metadata.EntryPoints([metadata.EntryPoint(name="x", value="no_such_mod:thing", group=group)])
    monkeypatch.setattr(registry_module.metadata, "entry_points", lambda *, group: bad)
    with pytest.raises(InvalidArgument, match=r"entry point 'x'.*fails to load"):
        default_registry()
    notev = metadata.EntryPoints([metadata.EntryPoint(name="y", value="json:dumps", group=group)])
    monkeypatch.setattr(registry_module.metadata, "entry_points", lambda *, group: notev)
    with pytest.raises(InvalidArgument, match="neither a module nor an @evaluator"):
        default_registry()


def test_default_registry_loads_named_modules() -> None:
    r = default_registry(["evaluators_for_tests"], entry_points=False)
    assert "length" in r and len(r) == 13  # 9 built-ins + 4 from the module


# --- the judge ----------------------------------------------------------------------------------

RUBRIC = {
    "criteria": [
        {"name": "correct", "weight": 3, "description": "The answer is right."},
        {"name": "concise", "weight": 1, "description": "No padding."},
    ]
}
MODEL = "openai/judge-model"


def providers(server: OpenAIServer) -> Providers:
    settings = {
        "base_url": server.url,
        "api_key": "k",
        "max_retries": 0,
        "prices": {"judge-model": [1.0, 2.0]},
    }
    return Providers({"openai": settings})


def judge(server: OpenAIServer, seq: int | None = None, **params: Any) -> Score:
    params.setdefault("rubric", RUBRIC)
    ev = builtin_registry().create("judge", model=MODEL, **params)
    ctx = EvalContext.for_target(
        episode(), Target(conversation=CONV, seq=seq), reference="Paris", providers=providers(server)
    )
    return run(ev, ctx)


def verdict(**criteria: float) -> str:
    return json.dumps({"criteria": criteria, "rationale": "looks right"})


def test_judge_valid_output_weighted(openai_server: OpenAIServer) -> None:
    openai_server.push(verdict(correct=1.0, concise=0.2))
    s = judge(openai_server)
    assert s.status == "done", s.error
    assert s.value == pytest.approx(0.75 * 1.0 + 0.25 * 0.2)  # weights 3:1 normalised
    assert s.metrics == {"correct": 1.0, "concise": 0.2}
    assert s.rationale == "looks right"
    assert (s.evaluator, s.version) == ("judge", "1")
    assert s.usage is not None and (s.usage.prompt_tokens, s.usage.completion_tokens) == (10, 5)
    assert s.usage.cost_usd == pytest.approx((10 * 1.0 + 5 * 2.0) / 1e6)

    [request] = openai_server.requests
    assert request["model"] == "judge-model" and request["temperature"] == 0
    system, user = request["messages"]
    assert system["role"] == "system" and "JSON" in system["content"]
    prompt = user["content"]
    assert "What is the capital of France?" in prompt  # the task
    assert "The capital is\n Paris." in prompt  # the final answer
    assert "## Reference answer\nParis" in prompt
    assert "correct (weight 0.75)" in prompt and "concise (weight 0.25)" in prompt
    assert "calls search(" in prompt and "search result for researcher: Paris is the capital" in prompt


def test_judge_grades_a_step(openai_server: OpenAIServer) -> None:
    openai_server.push("```json\n" + verdict(correct=0.5, concise=0.5) + "\n```")  # fences are fine
    s = judge(openai_server, seq=3, temperature=0.3)
    assert s.value == pytest.approx(0.5) and s.target.seq == 3
    request = openai_server.requests[0]
    assert request["temperature"] == 0.3
    prompt = request["messages"][1]["content"]
    assert "## The step to grade\n[3] researcher: calls search(" in prompt
    assert "[4]" not in prompt  # events after the step are not shown


def test_judge_retries_invalid_json_showing_the_error(openai_server: OpenAIServer) -> None:
    openai_server.push("I think it is pretty good, 8/10", verdict(correct=1.0, concise=1.0))
    s = judge(openai_server)
    assert s.status == "done" and s.value == 1.0
    assert len(openai_server.requests) == 2
    retry = openai_server.requests[1]["messages"]
    assert [m["role"] for m in retry] == ["system", "user", "assistant", "user"]
    assert retry[2]["content"] == "I think it is pretty good, 8/10"
    assert "could not be used: the reply holds no JSON object" in retry[3]["content"]
    assert '"correct": <score>' in retry[3]["content"]
    assert s.usage is not None and s.usage.prompt_tokens == 20  # both attempts paid for


def test_judge_never_valid_is_an_error_with_the_reason(openai_server: OpenAIServer) -> None:
    openai_server.push("{not: json}", '{"criteria": {"correct": 1}}', verdict(correct=1))
    s = judge(openai_server)
    assert s.status == "error" and s.value is None
    assert len(openai_server.requests) == 3  # 1 + 2 retries
    assert "no valid output in 3 attempt(s)" in (s.error or "")
    assert "missing criteria: concise" in (s.error or "")
    assert "not valid JSON" in openai_server.requests[1]["messages"][-1]["content"]
    assert s.usage is not None and s.usage.prompt_tokens == 30 and s.usage.cost_usd > 0


def test_judge_score_outside_unit_interval_is_retried_then_an_error(openai_server: OpenAIServer) -> None:
    openai_server.responder = lambda body: verdict(correct=1.5, concise=0.5)
    s = judge(openai_server, retries=1)
    assert s.status == "error" and len(openai_server.requests) == 2
    assert "less than or equal to 1" in (s.error or "") and "1.5" in (s.error or "")
    assert "criteria.correct" in openai_server.requests[1]["messages"][-1]["content"]

    openai_server.reset()
    openai_server.push(verdict(correct=-0.1, concise=0.5), verdict(correct=0.1, concise=0.5))
    s = judge(openai_server)
    assert s.status == "done" and s.value == pytest.approx(0.75 * 0.1 + 0.25 * 0.5)


def test_judge_unknown_criteria_are_invalid(openai_server: OpenAIServer) -> None:
    openai_server.push(verdict(correct=1, concise=1, style=1), verdict(correct=1, concise=0))
    s = judge(openai_server)
    assert s.value == pytest.approx(0.75)
    assert "unknown criteria: style" in openai_server.requests[1]["messages"][-1]["content"]


def test_judge_model_failure_is_an_error(openai_server: OpenAIServer) -> None:
    openai_server.push(Reply(status=404, error="no such model"))
    s = judge(openai_server)
    assert s.status == "error" and "model call failed" in (s.error or "") and "404" in (s.error or "")


def test_judge_template_override(openai_server: OpenAIServer, tmp_path: Path) -> None:
    openai_server.push(verdict(correct=1, concise=1))
    inline = "Rate {{ answer }} vs {{ reference }} on {% for c in criteria %}{{ c.name }} {% endfor %}"
    judge(openai_server, template=inline)
    assert openai_server.requests[0]["messages"][1]["content"] == (
        "Rate   The capital is\n Paris.  vs Paris on correct concise"
    )

    path = tmp_path / "mine.j2"
    path.write_text("Task: {{ task }}")
    openai_server.push(verdict(correct=1, concise=1))
    judge(openai_server, template=str(path))
    assert openai_server.requests[1]["messages"][1]["content"] == "Task: What is the capital of France?"

    with pytest.raises(InvalidArgument, match="not found"):
        judge(openai_server, template=str(tmp_path / "missing.j2"))
    with pytest.raises(InvalidArgument, match="inline judge template"):
        judge(openai_server, template="{% for %}")
    s = judge(openai_server, template="{{ no_such_variable }}")  # fails on render: an error score
    assert s.status == "error" and "no_such_variable" in (s.error or "")
    assert len(openai_server.requests) == 2  # no model call for a template that fails


def test_rubrics_inline_and_from_files(tmp_path: Path) -> None:
    r = as_rubric(RUBRIC)
    assert r.weights() == {"correct": 0.75, "concise": 0.25}
    assert as_rubric([{"name": "only"}]).weights() == {"only": 1.0}

    good = tmp_path / "good.yaml"
    good.write_text(
        "name: g\ncriteria:\n  - {name: a, weight: 1, description: x}\n  - {name: b, weight: 4}\n"
    )
    assert load_rubric(good).weights() == {"a": 0.2, "b": 0.8}
    assert Judge(model=MODEL, rubric=str(good)).rubric.name == "g"

    bad = tmp_path / "bad.yaml"
    bad.write_text("criteria:\n  - {name: a, weight: 1}\n  - {name: b, weight: -2}\n")
    with pytest.raises(InvalidArgument, match=r"bad\.yaml.*'criteria\[1\]\.weight'.*greater than 0"):
        load_rubric(bad)
    bad.write_text("criteria:\n  - {name: a}\n  - {name: a}\n")
    with pytest.raises(InvalidArgument, match="repeated: a"):
        load_rubric(bad)
    bad.write_text("criteria: []\n")
    with pytest.raises(InvalidArgument, match="'criteria'"):
        load_rubric(bad)
    bad.write_text("criteria: [{name: a, wieght: 2}]\n")
    with pytest.raises(InvalidArgument, match=r"'criteria\[0\]\.wieght'"):
        load_rubric(bad)
    bad.write_text("criteria: [unclosed\n")
    with pytest.raises(InvalidArgument, match="not valid YAML"):
        load_rubric(bad)
    with pytest.raises(InvalidArgument, match="not found"):
        load_rubric(tmp_path / "nope.yaml")
    with pytest.raises(InvalidArgument, match="inline rubric"):
        builtin_registry().create("judge", model=MODEL, rubric={"criteria": [{"weight": 1}]})
    with pytest.raises(InvalidArgument, match="provider/model"):
        builtin_registry().create("judge", model="no-provider", rubric=RUBRIC)


# --- aggregates ---------------------------------------------------------------------------------


def _s(branch: str, seq: int | None, value: float | None, evaluator_id: str = "e", **kw: Any) -> Score:
    target = Target(conversation=CONV, branch=branch, seq=seq)
    if value is None:
        status = kw.pop("status", "error")
        if status == "error":
            return Score.failed(evaluator_id, "1", target, "judge failed")
        return Score(evaluator=evaluator_id, version="1", target=target, status=status)
    return Score.done(evaluator_id, "1", target, value, **kw)


def test_branch_score_is_the_mean_of_done_steps_or_the_episode_score() -> None:
    steps = [
        _s("main", 1, 0.2),
        _s("main", 3, 0.6),
        _s("main", 5, None),
        _s("main", 7, None, status="pending"),
    ]
    agg = branch_score(steps)
    assert agg.value == pytest.approx(0.4) and agg.source == "steps"
    assert (agg.counts.done, agg.counts.error, agg.counts.pending, agg.counts.total) == (2, 1, 1, 4)

    with_episode = [*steps, _s("main", None, 0.9)]
    agg = branch_score(with_episode)
    assert (agg.value, agg.source) == (0.9, "episode")

    empty = branch_score([_s("main", 1, None)])
    assert (empty.value, empty.source, empty.counts.error) == (None, "none", 1)

    mixed = [_s("main", 1, 1.0, "a"), _s("main", 1, 0.0, "b", metrics={"cost_usd": 0.3})]
    assert branch_score(mixed, evaluator="a").value == 1.0
    assert branch_score(mixed, metric="cost_usd").value == pytest.approx(0.3)
    assert counts(mixed).done == 2


def test_best_branch_of_a_conversation() -> None:
    scores = [
        _s("main", 1, 0.2),
        _s("main", 3, 0.4),
        _s("b1", 3, 0.9),
        _s("b2", None, 0.5),
        _s("b2", 3, 1.0),  # the episode score wins over steps
        _s("b3", 3, None),
    ]
    grouped = by_branch(scores)
    assert sorted(grouped) == ["b1", "b2", "b3", "main"]
    ranked = ranked_branches(grouped)
    assert [b for b, _ in ranked] == ["b1", "b2", "main", "b3"]
    best = best_branch(grouped)
    assert best is not None and best[0] == "b1" and best[1].value == 0.9
    assert [b for b, _ in ranked_branches(grouped, higher_is_better=False)][:2] == ["main", "b2"]
    assert best_branch({"b3": grouped["b3"]}) is None
    assert best_branch({}) is None


def test_verdicts_carry_usage_onto_scores() -> None:
    @evaluator(id="paid")
    def paid(ctx: EvalContext) -> Verdict:
        return Verdict(value=0.5, usage=Usage(prompt_tokens=7, cost_usd=0.001))

    s = run(Registry([paid]).create("paid"), EvalContext.for_target(episode(), Target(conversation=CONV)))
    assert s.usage is not None and s.usage.prompt_tokens == 7
