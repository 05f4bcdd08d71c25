"""Runtime policies of an agent: the context policy (what of a frame the model sees) and the
duplicate tool-call policy (what a repeated call does), as pure functions and through the agent
runner with the mock provider; plus the `duplicate_calls` evaluator over a stored conversation."""

from __future__ import annotations

import asyncio
import collections
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from p2e.agents import AgentSpec
from p2e.agents.spec import team_from_mapping
from p2e.errors import InvalidArgument
from p2e.evals import EvalContext, Target, builtin_registry
from p2e.events import AgentReply, Started, ToolCall, ToolResult, UserMessage
from p2e.llm import Message, ModelRequest, ModelResponse, Providers
from p2e.machine import INITIAL
from p2e.policies import ContextPolicy, DuplicatePolicy, apply_context
from p2e.policies.context import estimate_tokens
from p2e.policies.duplicates import ToolCache, canonical_arguments, run_calls_with_policy
from p2e.rollouts.spec import agent_specs, load_spec
from p2e.runtime.agent_step import AgentRunner
from p2e.runtime.driver import Driver
from p2e.runtime.interpret import advance
from p2e.runtime.steps import StepRequest
from p2e.store import EventLog
from p2e.store.aio import GroupCommit
from p2e.tools import REGISTRY, ToolContext, tool

ROOT = Path(__file__).resolve().parents[1]

# --- helpers ---------------------------------------------------------------------------------------


def user(text: str) -> Message:
    return Message(role="user", content=text)


def turn(i: int, output: str = "") -> list[Message]:
    """One agent turn: a reply calling `lookup(key=i)` and its tool result."""
    call = ToolCall(id=f"c{i}", name="lookup", arguments={"key": str(i)})
    return [
        Message(role="assistant", content=f"step {i}\nthinking more", tool_calls=(call,)),
        Message(role="tool", content=output or f"value {i}", tool_call_id=f"c{i}", name="lookup"),
    ]


def frame(n: int, task: str = "TASK: find the value") -> list[Message]:
    """A frame: its task, then `n` turns, the last one pending (its result not yet read)."""
    return [user(task), *(m for i in range(n) for m in turn(i))]


def check_pairs(messages: tuple[Message, ...] | list[Message]) -> None:
    """What providers demand: every tool message answers a call of the assistant message before it."""
    open_calls: set[str] = set()
    for m in messages:
        if m.role == "assistant":
            open_calls = {c.id for c in m.tool_calls}
        elif m.role == "tool":
            assert m.tool_call_id in open_calls, f"orphan tool message {m.tool_call_id}"
        else:
            open_calls = set()


def markers(messages: tuple[Message, ...]) -> list[Message]:
    return [m for m in messages if m.content.startswith("[context policy:")]


# --- context policy: pure ----------------------------------------------------------------------


def test_the_default_context_policy_shows_the_whole_frame() -> None:
    policy = ContextPolicy()
    assert policy.is_noop and AgentSpec(id="a").context == policy
    msgs = frame(30)
    assert apply_context(policy, msgs) == tuple(msgs)


def test_last_turns_keeps_the_task_the_latest_turns_and_says_what_was_left_out() -> None:
    msgs = frame(6)
    out = apply_context(ContextPolicy(mode="last_turns", turns=2), msgs)
    assert out[0] == msgs[0]  # the task
    (marker,) = markers(out)
    assert out[1] is marker
    assert "4 of your earlier replies and 4 tool results were left out" in marker.content
    assert list(out[2:]) == msgs[-4:]  # the last two turns, whole
    check_pairs(out)
    # fewer turns than the limit: nothing changes, no marker
    assert apply_context(ContextPolicy(mode="last_turns", turns=6), msgs) == tuple(msgs)


def test_the_pending_tool_results_and_the_task_survive_any_budget() -> None:
    big = "x" * 4000
    msgs = [user("TASK: sum the values"), *turn(0, big), *turn(1, big)]
    out = apply_context(ContextPolicy(mode="tokens", tokens=10), msgs)
    assert out[0].content == "TASK: sum the values"
    assert list(out[-2:]) == msgs[-2:]  # the last reply with its (pending) result, whole
    assert len(markers(out)) == 1 and msgs[1] not in out and msgs[2] not in out
    check_pairs(out)


def test_a_token_budget_keeps_the_newest_turns_that_fit() -> None:
    msgs = [Message(role="system", content="You are a."), *frame(40)]
    total = sum(estimate_tokens(m) for m in msgs)
    out = apply_context(ContextPolicy(mode="tokens", tokens=300), msgs)
    assert sum(estimate_tokens(m) for m in out) <= 300 < total
    assert out[0].role == "system" and out[1].content.startswith("TASK")
    assert out[-1] == msgs[-1] and out[-2] == msgs[-2]
    kept = [m.tool_call_id for m in out if m.role == "tool"]
    assert kept == [f"c{i}" for i in range(40 - len(kept), 40)]  # a contiguous run of the newest
    check_pairs(out)
    # a budget the frame fits: untouched
    assert apply_context(ContextPolicy(mode="tokens", tokens=total), msgs) == tuple(msgs)


def test_summarize_lists_the_first_line_of_each_left_out_message_deterministically() -> None:
    msgs = frame(5)
    policy = ContextPolicy(mode="last_turns", turns=1, overflow="summarize")
    out = apply_context(policy, msgs)
    (marker,) = markers(out)
    text = marker.content
    assert "not a model's summary" in text
    assert '- you: step 0; called lookup({"key": "0"})' in text
    assert "- result of lookup: value 3" in text
    assert "thinking more" not in text  # first lines only
    assert apply_context(policy, msgs) == out  # no model involved: the same every time
    check_pairs(out)


def test_summary_in_a_token_budget_is_cut_with_a_count_of_the_rest() -> None:
    msgs = frame(200)
    out = apply_context(ContextPolicy(mode="tokens", tokens=400, overflow="summarize"), msgs)
    (marker,) = markers(out)
    *listed, last = marker.content.splitlines()[1:]
    rest = re.fullmatch(r"- \.\.\. and (\d+) more", last)
    assert rest is not None, last
    left_out = len(msgs) - (len(out) - 1)  # the marker stands in for them
    assert len(listed) + int(rest[1]) == left_out
    assert sum(estimate_tokens(m) for m in out) <= 440  # the budget, give or take the note


def test_the_latest_user_message_is_kept_with_the_first() -> None:
    msgs = [user("first question"), *turn(0), Message(role="assistant", content="answer 1")]
    msgs += [user("second question"), *(m for i in range(1, 6) for m in turn(i))]
    out = apply_context(ContextPolicy(mode="last_turns", turns=1), msgs)
    contents = [m.content for m in out]
    assert contents[0] == "first question" and "second question" in contents
    assert contents.index("second question") < len(contents) - 2
    check_pairs(out)


def test_long_tool_results_are_truncated_with_a_marker() -> None:
    msgs = [user("task"), *turn(0, "a" * 50), *turn(1, "short")]
    out = apply_context(ContextPolicy(max_tool_result_chars=10), msgs)
    assert out[2].content == "aaaaaaaaaa… [truncated 40 chars]"
    assert out[4].content == "short"
    assert not ContextPolicy(max_tool_result_chars=10).is_noop


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"mode": "last_turns"}, "mode 'last_turns' needs `turns`"),
        ({"mode": "tokens"}, "mode 'tokens' needs `tokens`"),
        ({"turns": 3}, "`turns` is set but mode is 'full': add `mode: last_turns`"),
        ({"mode": "tokens", "tokens": 100, "turns": 3}, "add `mode: last_turns` (or remove `turns`)"),
        ({"mode": "last_turns", "turns": 2, "tokens": 9}, "add `mode: tokens`"),
        ({"overflow": "summarize"}, "set `mode: last_turns` or `mode: tokens`"),
        (
            {"mode": "last_turns", "turns": 0},
            "field 'context.turns': Input should be greater than or equal to 1",
        ),
        ({"mode": "sometimes"}, "field 'context.mode': Input should be 'full', 'last_turns' or 'tokens'"),
        ({"max_tool_result_chars": 0}, "context.max_tool_result_chars"),
        ({"turn": 3}, "field 'context.turn': unknown field"),
    ],
)
def test_bad_context_settings_name_the_agent_the_field_and_the_fix(context: dict, message: str) -> None:
    raw = {"agents": {"a": {"context": context}}}
    with pytest.raises(InvalidArgument) as e:
        team_from_mapping(raw, Path("."), "agents.yaml")
    assert "agents.yaml: agent 'a'" in str(e.value) and message in str(e.value)


# --- duplicate policy: pure --------------------------------------------------------------------

calls_made: collections.Counter[str] = collections.Counter()


@tool
def bump(key: str) -> str:
    """A tool with side effects: counts its calls per key."""
    calls_made[f"bump:{key}"] += 1
    return f"bumped {key} to {calls_made[f'bump:{key}']}"


@tool(side_effect_free=True)
def lookup(key: str) -> str:
    """A side-effect free read (counted, so a test can see whether it ran)."""
    calls_made[f"lookup:{key}"] += 1
    if key == "bad":
        raise ValueError("no such key")
    return f"value of {key}"


@tool(side_effect_free=True, cacheable=False)
def now_ish() -> str:
    """Side-effect free, but its answer changes: not cacheable."""
    calls_made["now_ish"] += 1
    return f"tick {calls_made['now_ish']}"


@tool
def flaky(key: str) -> str:
    """Side effects, and fails the first time."""
    calls_made[f"flaky:{key}"] += 1
    if calls_made[f"flaky:{key}"] == 1:
        raise RuntimeError("try again")
    return "ok"


TOOLS = REGISTRY.copy()
for _t in (bump, lookup, now_ish, flaky):
    TOOLS.register(_t)
ALLOWED = ("bump", "lookup", "now_ish", "flaky")
CTX = ToolContext(conversation="c", agent="a")


@pytest.fixture(autouse=True)
def _fresh_counts() -> None:
    calls_made.clear()


def run(
    policy: DuplicatePolicy,
    calls: list[ToolCall],
    history: list[Message] | None = None,
    cache: ToolCache | None = None,
) -> list[ToolResult]:
    return asyncio.run(
        run_calls_with_policy(
            policy,
            TOOLS,
            calls,
            CTX,
            ALLOWED,
            history or [],
            cache=cache if cache is not None else ToolCache(),
        )
    )


def call(cid: str, name: str, **args: Any) -> ToolCall:
    return ToolCall(id=cid, name=name, arguments=args)


def history_of(*pairs: tuple[ToolCall, ToolResult]) -> list[Message]:
    """A frame's messages after some calls and their results, shown as the transcript shows them."""
    msgs = [user("task")]
    for c, r in pairs:
        msgs.append(Message(role="assistant", tool_calls=(c,)))
        content = f"ERROR: {r.output}" if r.is_error else r.output
        msgs.append(Message(role="tool", content=content, tool_call_id=r.call_id, name=r.name))
    return msgs


def test_policy_none_runs_every_repeat_and_marks_nothing() -> None:
    first = call("c1", "bump", key="x")
    (r1,) = run(DuplicatePolicy(), [first])
    (r2,) = run(DuplicatePolicy(), [call("c2", "bump", key="x")], history_of((first, r1)))
    assert calls_made["bump:x"] == 2 and r2.output == "bumped x to 2" and r2.duplicate_of is None


def test_penalty_runs_the_repeat_and_marks_it() -> None:
    policy = DuplicatePolicy(mode="penalty")
    first = call("c1", "bump", key="x")
    (r1,) = run(policy, [first])
    assert r1.duplicate_of is None
    # arguments compare as canonical JSON: key order does not matter
    assert canonical_arguments({"b": 1, "a": [1, 2]}) == canonical_arguments({"a": [1, 2], "b": 1})
    again = ToolCall(id="c2", name="bump", arguments={"key": "x"})
    other = call("c3", "bump", key="y")
    r2, r3 = run(policy, [again, other], history_of((first, r1)))
    assert calls_made["bump:x"] == 2 and r2.output == "bumped x to 2"
    assert r2.duplicate_of == "c1" and r3.duplicate_of is None


def test_strict_does_not_run_a_side_effect_again_and_says_so() -> None:
    policy = DuplicatePolicy(mode="strict")
    first = call("c1", "bump", key="x")
    (r1,) = run(policy, [first])
    (r2,) = run(policy, [call("c2", "bump", key="x")], history_of((first, r1)))
    assert calls_made["bump:x"] == 1
    assert r2.call_id == "c2" and r2.duplicate_of == "c1" and not r2.is_error
    assert r2.output.startswith("[not run again: bump has side effects")
    assert r2.output.endswith("\nbumped x to 1")  # the earlier result


def test_strict_within_one_reply_runs_the_first_of_identical_calls_only() -> None:
    a, b, c = call("c1", "bump", key="x"), call("c2", "bump", key="x"), call("c3", "bump", key="y")
    r1, r2, r3 = run(DuplicatePolicy(mode="strict"), [a, b, c])
    assert calls_made == {"bump:x": 1, "bump:y": 1}
    assert r1.output == "bumped x to 1" and r1.duplicate_of is None
    assert r2.duplicate_of == "c1" and r2.output.endswith("bumped x to 1")
    assert r3.duplicate_of is None


def test_strict_runs_again_after_a_failed_call() -> None:
    policy = DuplicatePolicy(mode="strict")
    first = call("c1", "flaky", key="k")
    (r1,) = run(policy, [first])
    assert r1.is_error
    (r2,) = run(policy, [call("c2", "flaky", key="k")], history_of((first, r1)))
    assert calls_made["flaky:k"] == 2 and r2.output == "ok" and r2.duplicate_of is None


def test_strict_still_runs_side_effect_free_tools_and_marks_them() -> None:
    policy = DuplicatePolicy(mode="strict")
    first = call("c1", "lookup", key="k")
    (r1,) = run(policy, [first])
    (r2,) = run(policy, [call("c2", "lookup", key="k")], history_of((first, r1)))
    assert calls_made["lookup:k"] == 2 and r2.output == "value of k" and r2.duplicate_of == "c1"


def test_a_cache_ttl_serves_cacheable_tools_and_only_them() -> None:
    clock = [100.0]
    cache = ToolCache(clock=lambda: clock[0])
    policy = DuplicatePolicy(cache_ttl_s=60)
    for i in range(3):
        (r,) = run(policy, [call(f"l{i}", "lookup", key="k")], cache=cache)
        assert r.output == "value of k" and r.call_id == f"l{i}" and r.duplicate_of is None
    assert calls_made["lookup:k"] == 1
    clock[0] += 61  # past the ttl: it runs again
    run(policy, [call("l9", "lookup", key="k")], cache=cache)
    assert calls_made["lookup:k"] == 2
    # never cached: errors, tools declared not cacheable, tools with side effects
    for i in range(2):
        run(policy, [call(f"b{i}", "lookup", key="bad"), call(f"n{i}", "now_ish")], cache=cache)
        run(policy, [call(f"x{i}", "bump", key="x")], cache=cache)
    assert calls_made["lookup:bad"] == 2 and calls_made["now_ish"] == 2 and calls_made["bump:x"] == 2
    # the allowlist still holds for a cached tool
    (r,) = asyncio.run(
        run_calls_with_policy(policy, TOOLS, [call("z", "lookup", key="k")], CTX, ("bump",), cache=cache)
    )
    assert r.is_error and "not available" in r.output


def test_tool_flags_default_to_side_effects_and_the_builtins_declare_theirs() -> None:
    assert bump.side_effects and not bump.cacheable
    assert lookup.side_effect_free and lookup.cacheable
    assert now_ish.side_effect_free and not now_ish.cacheable
    for name in ("calculator", "weather", "clock"):
        t = REGISTRY.get(name)
        assert t.side_effect_free and t.cacheable == (name != "clock"), name
    assert REGISTRY.get("notes").side_effects and not REGISTRY.get("notes").cacheable
    # the ledger tools, in a process of their own (importing them registers them in REGISTRY,
    # where the other tests expect the built-ins only)
    probe = (
        "import p2e.tools.ledger as l; "
        "print([(t.name, t.side_effects, t.cacheable) for t in "
        "(l.transfer, l.reward, l.check_balance, l.transaction_history)])"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(
        [
            ("transfer", True, False),
            ("reward", True, False),
            ("check_balance", False, False),  # a read, but payments change it
            ("transaction_history", False, False),
        ]
    )
    with pytest.raises(InvalidArgument, match="cacheable=True needs side_effect_free=True"):

        @tool(cacheable=True)
        def pay(to: str) -> str:
            return to


@pytest.mark.parametrize(
    ("duplicates", "message"),
    [
        ({"mode": "sometimes"}, "field 'duplicates.mode': Input should be 'none', 'penalty' or 'strict'"),
        ({"cache_ttl_s": 0}, "field 'duplicates.cache_ttl_s': Input should be greater than 0"),
        ({"ttl": 5}, "field 'duplicates.ttl': unknown field"),
    ],
)
def test_bad_duplicate_settings_name_the_field(duplicates: dict, message: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        team_from_mapping({"agents": {"a": {"duplicates": duplicates}}}, Path("."), "agents.yaml")
    assert message in str(e.value)


# --- variants override the policies ------------------------------------------------------------


def test_variants_override_the_policies_as_whole_settings(tmp_path: Path) -> None:
    spec = AgentSpec(id="a", context={"mode": "tokens", "tokens": 500}, duplicates={"mode": "penalty"})
    v = spec.with_overrides({"context": {"mode": "last_turns", "turns": 4}, "duplicates": {"mode": "strict"}})
    assert v.context == ContextPolicy(mode="last_turns", turns=4)  # replaced whole: no tokens left
    assert v.duplicates.mode == "strict" and spec.context.mode == "tokens"
    with pytest.raises(ValidationError, match="mode 'last_turns' needs `turns`"):
        spec.with_overrides({"context": {"mode": "last_turns"}})

    rollout = {
        "name": "policies",
        "agents": str(ROOT / "experiments" / "agents.yaml"),
        "teams": [{"id": "desk", "root": "planner"}],
        "scenarios": [{"id": "s", "message": "hi"}],
        "variants": [
            {"name": "plain"},
            {"name": "short", "overrides": {"*": {"context": {"mode": "last_turns", "turns": 2}}}},
        ],
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(rollout))
    resolved = load_spec(path)
    plain, short = resolved.variants
    assert agent_specs(resolved, plain)["planner"].context.is_noop
    assert agent_specs(resolved, short)["writer"].context == ContextPolicy(mode="last_turns", turns=2)
    rollout["variants"] = [{"name": "bad", "overrides": {"planner": {"context": {"mode": "tokens"}}}}]
    path.write_text(yaml.safe_dump(rollout))
    with pytest.raises(InvalidArgument, match="mode 'tokens' needs `tokens`"):
        load_spec(path)


# --- through the agent runner, with the mock provider -------------------------------------------

RULES = {
    "payer": {
        "rules": [
            {"agent": "payer", "turn": 0, "tool_calls": [{"name": "bump", "arguments": {"key": "x"}}]},
            {"agent": "payer", "turn": 1, "tool_calls": [{"name": "bump", "arguments": {"key": "x"}}]},
            {"agent": "payer", "text": "done: {{ results | join(' / ') }}"},
        ]
    },
    "reader": {
        "rules": [
            {
                "agent": "reader",
                "match": "^(?!value of 5)",
                "role": "tool",
                "tool_calls": [{"name": "lookup", "arguments": {"key": "{{ turn }}"}}],
            },
            {
                "agent": "reader",
                "role": "user",
                "tool_calls": [{"name": "lookup", "arguments": {"key": "0"}}],
            },
            {"agent": "reader", "text": "read {{ turn }} values; task was: {{ task }}"},
        ]
    },
}


def team_yaml(**agents: dict[str, Any]) -> dict[str, Any]:
    return {"agents": agents, "providers": {"mock": {"rules": RULES}}}


class Recording:
    """Providers that remember every request (what the model was shown)."""

    def __init__(self, providers: Providers):
        self.providers, self.requests = providers, []  # type: ignore[var-annotated]

    def for_model(self, model: str) -> Recording:
        return self

    async def complete(self, request: ModelRequest) -> ModelResponse:
        self.requests.append(request)
        return await self.providers.for_model(request.model).complete(request)


def drive(runner: AgentRunner, task: str, overrides: dict[str, Any] | None = None) -> list[Message]:
    """Step one agent's frame to its answer, keeping its messages the way the transcript does."""

    async def go() -> list[Message]:
        messages = [user(task)]
        state = advance(
            INITIAL, [Started(root=runner.spec.id, team={runner.spec.id: ()}), UserMessage(text=task)]
        )
        for n in range(20):
            req = StepRequest(
                state=state.states[-1],
                conversation="c",
                branch="main",
                seq=len(messages),
                agent=runner.spec.id,
                turn=n,
                depth=0,
                messages=tuple(messages),
                overrides=overrides or {},
            )
            res = await runner.step(req)
            state = advance(state.states[-1], [res.reply, *res.results])
            messages.append(
                Message(role="assistant", content=res.reply.text, tool_calls=res.reply.tool_calls)
            )
            for r in res.results:
                content = f"ERROR: {r.output}" if r.is_error else r.output
                messages.append(Message(role="tool", content=content, tool_call_id=r.call_id, name=r.name))
            if not res.reply.tool_calls:
                return messages
        raise AssertionError("the agent never answered")

    return asyncio.run(go())


def runner_for(agent: str, settings: dict[str, Any]) -> tuple[AgentRunner, Recording]:
    team = team_from_mapping(
        team_yaml(**{agent: {"model": f"mock/{agent}", "tools": list(ALLOWED), **settings}}),
        ROOT / "experiments",
        "t",
    )
    rec = Recording(Providers(team.providers))
    return AgentRunner(agent, team, providers=rec, registry=TOOLS), rec  # type: ignore[arg-type]


def test_a_strict_agent_runs_a_repeated_side_effect_once() -> None:
    runner, _ = runner_for("payer", {"duplicates": {"mode": "strict"}})
    messages = drive(runner, "bump x")
    assert calls_made["bump:x"] == 1
    first, second = [m for m in messages if m.role == "tool"]
    assert first.content == "bumped x to 1"
    assert second.content.startswith("[not run again: bump has side effects")
    assert messages[-1].content.startswith("done: [not run again")


def test_a_variant_turns_the_duplicate_policy_on_and_off() -> None:
    runner, _ = runner_for("payer", {})
    drive(runner, "bump x")
    assert calls_made["bump:x"] == 2  # the default runs every call
    drive(runner, "bump x", overrides={"duplicates": {"mode": "strict"}})
    assert calls_made["bump:x"] == 3  # one more run, not two


def test_the_model_sees_the_frame_through_the_context_policy() -> None:
    runner, rec = runner_for("reader", {"context": {"mode": "last_turns", "turns": 2}})
    messages = drive(runner, "read the values")
    assert messages[-1].content == "read 6 values; task was: read the values"
    assert len(messages) == 1 + 6 * 2 + 1  # the frame itself is whole
    last = rec.requests[-1].messages
    assert [m.role for m in last] == ["system", "user", "user", "assistant", "tool", "assistant", "tool"]
    assert last[1].content == "read the values" and last[2].content.startswith("[context policy: 4 of")
    assert last[-1].content == "value of 5"
    check_pairs(last)
    # with the default policy the model sees everything
    runner, rec = runner_for("reader", {})
    drive(runner, "read the values")
    assert len(rec.requests[-1].messages) == 1 + 1 + 6 * 2


# --- end to end: the store records the duplicates, the evaluator counts them --------------------


def test_duplicates_are_recorded_in_the_store_and_scored(log: EventLog) -> None:
    team = team_from_mapping(
        team_yaml(payer={"model": "mock/payer", "tools": ["bump"], "duplicates": {"mode": "strict"}}),
        ROOT / "experiments",
        "t",
    )

    async def go() -> tuple[str, str | None]:
        # the local driver's wiring, with this module's tools
        runner = AgentRunner("payer", team, registry=TOOLS, store=log)
        d = Driver(log, GroupCommit(log.url, log.keys.ns), lambda agent: runner)
        cid = await d.create("payer", team.team_of("payer"))
        result = await d.send(cid, "bump x")
        return cid, result.answer

    cid, answer = asyncio.run(go())
    assert answer is not None and answer.startswith("done: [not run again")
    assert calls_made["bump:x"] == 1
    events = log.history(cid)
    results = [e for e in events if isinstance(e, ToolResult)]
    assert [r.duplicate_of for r in results] == [None, results[0].call_id]

    ev = builtin_registry().create("duplicate_calls")
    score = asyncio.run(ev.evaluate(EvalContext.for_target(events, Target(conversation=cid))))
    assert score.value == 0.5 and score.metrics["duplicates"] == 1 and score.metrics["calls"] == 2
    second = next(e for e in events if isinstance(e, AgentReply) and e.tool_calls and e.seq > 2)
    step = asyncio.run(ev.evaluate(EvalContext.for_target(events, Target(conversation=cid, seq=second.seq))))
    assert step.value == 0.0 and step.metrics["calls"] == 1


def test_duplicate_calls_counts_repeats_per_frame_and_not_retries_after_errors() -> None:
    def numbered(*events: Any) -> list[Any]:
        return [e.model_copy(update={"seq": i}) for i, e in enumerate(events)]

    def reply(*calls: ToolCall, agent: str = "a") -> AgentReply:
        return AgentReply(agent=agent, tool_calls=calls)

    def result(c: ToolCall, error: bool = False) -> ToolResult:
        return ToolResult(agent="a", call_id=c.id, name=c.name, output="x", is_error=error)

    w1, w2, w3 = (call(f"w{i}", "weather", city="Oslo") for i in (1, 2, 3))
    f1, f2 = call("f1", "calculator", expression="1/0"), call("f2", "calculator", expression="1/0")
    events = numbered(
        Started(root="a", team={"a": ()}),
        UserMessage(text="go"),
        reply(w1, f1),
        result(w1),
        result(f1, error=True),
        reply(w2, f2, w3),  # w2 repeats w1; f2 retries a failure; w3 repeats within the reply
        result(w2),
        result(f2),
        result(w3),
        AgentReply(agent="a", text="done"),
    )
    ev = builtin_registry().create("duplicate_calls")
    score = asyncio.run(ev.evaluate(EvalContext.for_target(events, Target(conversation="c"))))
    assert score.metrics == {"duplicates": 2.0, "calls": 5.0, "duplicate_fraction": 0.4}
    assert score.value == pytest.approx(0.6) and "2 of 5 tool call(s)" in score.rationale
    none = asyncio.run(ev.evaluate(EvalContext.for_target(events[:2], Target(conversation="c"))))
    assert none.value == 1.0 and none.rationale == "no tool calls"
    other = builtin_registry().create("duplicate_calls", agent="b")
    assert asyncio.run(other.evaluate(EvalContext.for_target(events, Target(conversation="c")))).value == 1.0
