"""The runtime end to end: Ray actors, the real store, the real `openai` client over HTTP.

The agents talk to the OpenAI-compatible test server (tests/openai_server.py); each agent's
replies are scripted per agent, so the tests check what the team did (events in the store) and
what each model was shown (the requests the server received).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from openai_server import OpenAIServer, Reply

import p2e.api
from p2e.api import Runtime
from p2e.events import AgentReply, ToolResult

AGENTS = """
agents:
  boss:
    model: openai/test-model
    persona: "You are boss."
    tools: [calculator]
    can_delegate_to: [mid]
  mid:
    model: openai/test-model
    persona: "You are mid."
    tools: [clock, explode, slow]
    can_delegate_to: [leaf]
  leaf:
    model: openai/test-model
    persona: "You are leaf."
    tools: [weather]
    replicas: 2
providers:
  openai:
    base_url: {url}
    api_key: test-key
    timeout_s: 10
    max_retries: 2
    backoff_s: 0.01
tool_modules: [tools_for_tests]
evaluators:
  - id: tool_called
    per: step
    params:
      name: calculator
  - id: max_steps
    per: episode
    params:
      limit: 20
limits:
  max_depth: 4
  max_steps: 30
"""


class Script:
    """Per-agent queues of replies; the agent is read from the system message."""

    def __init__(self, **replies: list[Reply | str]):
        self.replies = {a: list(r) for a, r in replies.items()}
        self.lock = threading.Lock()
        self.seen: dict[str, list[dict[str, Any]]] = {a: [] for a in replies}

    def __call__(self, body: dict[str, Any]) -> Reply | str:
        agent = body["messages"][0]["content"].removeprefix("You are ").rstrip(".")
        with self.lock:
            self.seen[agent].append(body)
            if not self.replies.get(agent):
                return Reply(status=400, error=f"script has no reply left for {agent}")
            return self.replies[agent].pop(0)


def calls(*pairs: tuple[str, dict[str, Any] | str]) -> Reply:
    return Reply(text=None, tool_calls=[(n, a if isinstance(a, str) else json.dumps(a)) for n, a in pairs])


@pytest.fixture
def runtime(
    ray_session: None, openai_server: OpenAIServer, store_url: str, namespace: str, tmp_path: Path
) -> Iterator[Runtime]:
    agents = tmp_path / "agents.yaml"
    agents.write_text(AGENTS.format(url=openai_server.url))
    rt = p2e.api.init(agents=agents, store_url=store_url, namespace=namespace)
    yield rt
    rt.shutdown()


def tool_messages(body: dict[str, Any]) -> dict[str, str]:
    """tool_call_id -> content of the tool messages a model was shown."""
    return {m["tool_call_id"]: m["content"] for m in body["messages"] if m["role"] == "tool"}


def test_delegation_two_levels_deep_with_tools_at_each_level(
    runtime: Runtime, openai_server: OpenAIServer
) -> None:
    script = Script(
        boss=[
            calls(("calculator", {"expression": "6*7"}), ("delegate", {"agent": "mid", "task": "ask leaf"})),
            "boss: 42 and sunny",
        ],
        mid=[calls(("clock", {}), ("delegate", {"agent": "leaf", "task": "weather in Oslo"})), "mid: sunny"],
        leaf=[calls(("weather", {"city": "Oslo"})), "leaf: sunny"],
    )
    openai_server.responder = script
    chat = runtime.chat("boss", "deep")
    result = chat.send("what is 6*7, and the weather?")
    assert result.status == "idle" and result.answer == "boss: 42 and sunny"

    events = chat.history()
    agents = [(e.kind, getattr(e, "agent", "")) for e in events]
    assert agents == [
        ("started", ""),
        ("user_message", ""),
        ("agent_reply", "boss"),
        ("tool_result", "boss"),  # calculator runs before the delegation is pushed
        ("agent_reply", "mid"),
        ("tool_result", "mid"),  # clock
        ("agent_reply", "leaf"),
        ("tool_result", "leaf"),  # weather
        ("agent_reply", "leaf"),  # pops back to mid
        ("agent_reply", "mid"),  # pops back to boss
        ("agent_reply", "boss"),
    ]
    assert [e.seq for e in events] == list(range(len(events)))
    calc = next(e for e in events if isinstance(e, ToolResult) and e.name == "calculator")
    assert calc.output == "42" and not calc.is_error

    # each model saw its own frame: the task, its tool results, and its delegate's answer
    leaf2 = script.seen["leaf"][1]
    assert leaf2["messages"][1] == {"role": "user", "content": "weather in Oslo"}
    assert '"city":"Oslo"' in next(iter(tool_messages(leaf2).values())).replace(" ", "")
    mid2 = script.seen["mid"][1]
    assert "leaf: sunny" in tool_messages(mid2).values()
    boss2 = script.seen["boss"][1]
    assert set(tool_messages(boss2).values()) == {"42", "mid: sunny"}
    assert all("leaf" not in m.get("content", "") for m in boss2["messages"] if m["role"] == "user")
    # the delegate tool offers only the agent's own delegates
    mid_tools = {t["function"]["name"]: t["function"] for t in script.seen["mid"][0]["tools"]}
    assert set(mid_tools) == {"clock", "explode", "slow", "delegate"}
    assert mid_tools["delegate"]["parameters"]["properties"]["agent"]["enum"] == ["leaf"]


def test_several_tool_calls_in_one_reply_all_run_before_the_next_turn(
    runtime: Runtime, openai_server: OpenAIServer
) -> None:
    script = Script(
        boss=[
            calls(
                ("calculator", {"expression": "1+1"}),
                ("calculator", {"expression": "2+2"}),
                ("calculator", {"expression": "3+3"}),
            ),
            "2, 4, 6",
        ]
    )
    openai_server.responder = script
    result = runtime.chat("boss", "many").send("three sums")
    assert result.answer == "2, 4, 6"
    second = script.seen["boss"][1]
    assert sorted(tool_messages(second).values()) == ["2", "4", "6"]


def test_broken_model_output_becomes_tool_errors_the_model_sees(
    runtime: Runtime, openai_server: OpenAIServer
) -> None:
    script = Script(
        boss=[calls(("delegate", {"agent": "mid", "task": "misbehave"})), "boss done"],
        mid=[
            calls(
                ("no_such_tool", {}),
                ("clock", "{not json"),
                ("explode", {"wrong": 1}),
                ("explode", {"reason": "test"}),
                ("slow", {"seconds": 5}),
                ("weather", {"city": "Oslo"}),  # exists, but not in mid's allowlist
                ("delegate", {"agent": "boss", "task": "loop"}),  # not mid's delegate
            ),
            "mid recovered",
        ],
    )
    openai_server.responder = script
    result = runtime.chat("boss", "broken").send("go")
    assert result.answer == "boss done" and result.status == "idle"

    errors = {e.call_id: e.output for e in runtime.log.history("broken") if isinstance(e, ToolResult)}
    outputs = list(errors.values())
    assert len(outputs) == 7
    assert all(e.is_error for e in runtime.log.history("broken") if isinstance(e, ToolResult))
    text = "\n".join(outputs)
    assert "unknown tool 'no_such_tool'" in text
    assert "must be a JSON object" in text and "{not json" in text
    assert "invalid arguments for explode" in text
    assert "RuntimeError: exploded: test" in text
    assert "slow timed out after 0.3" in text  # cut at its timeout, not after its 5 s
    assert "not available to agent 'mid'" in text
    assert "mid may not delegate to 'boss'; it may delegate to: leaf" in text
    # and mid's model was shown every one of them before it answered
    assert len(tool_messages(script.seen["mid"][1])) == 7


def _wait_for_requests(script: Script, agent: str, n: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while len(script.seen[agent]) < n:
        assert time.monotonic() < deadline, f"{agent} never got request {n}"
        time.sleep(0.02)


def _assert_once_each(events: list[Any]) -> None:
    assert [e.seq for e in events] == list(range(len(events)))
    replies = [
        (e.agent, e.text, tuple(c.id for c in e.tool_calls)) for e in events if isinstance(e, AgentReply)
    ]
    assert len(replies) == len(set(replies)), f"an event was stored twice: {replies}"


def test_an_agent_actor_killed_mid_step_is_restarted_and_the_step_retried(
    runtime: Runtime, openai_server: OpenAIServer
) -> None:
    script = Script(
        boss=[calls(("delegate", {"agent": "mid", "task": "t"})), "boss done"],
        mid=[Reply(text="mid slow answer", delay_s=3.0), "mid answer"],
    )
    openai_server.responder = script
    chat = runtime.chat("boss", "agentkill")
    box: dict[str, Any] = {}
    th = threading.Thread(target=lambda: box.setdefault("r", chat.send("go")))
    th.start()
    _wait_for_requests(script, "mid", 1)
    ray.kill(runtime.agents["mid"][0], no_restart=False)  # dies while its model call is in flight
    th.join(60)
    assert not th.is_alive()
    result = box["r"]
    assert result.answer == "boss done" and result.status == "idle"
    assert len(script.seen["mid"]) == 2  # the step ran again on the restarted actor
    events = chat.history()
    _assert_once_each(events)
    mid = [e.text for e in events if isinstance(e, AgentReply) and e.agent == "mid"]
    assert mid == ["mid answer"]


def test_a_supervisor_killed_mid_conversation_continues_from_the_store(
    runtime: Runtime, openai_server: OpenAIServer
) -> None:
    script = Script(
        boss=[calls(("delegate", {"agent": "mid", "task": "t"})), "boss done"],
        mid=[calls(("clock", {})), Reply(text="mid slow", delay_s=2.0), "mid answer"],
    )
    openai_server.responder = script
    chat = runtime.chat("boss", "supkill")
    box: dict[str, Any] = {}
    th = threading.Thread(target=lambda: box.setdefault("r", chat.send("go")))
    th.start()
    _wait_for_requests(script, "mid", 2)  # mid's tool ran and was stored; its second call hangs
    stored_before = runtime.log.branch("supkill").length
    ray.kill(runtime.supervisors[0], no_restart=False)
    th.join(60)
    assert not th.is_alive()
    result = box["r"]
    assert result.answer == "boss done" and result.status == "idle"
    events = chat.history()
    _assert_once_each(events)
    assert stored_before == 5  # started, user, boss delegates, mid calls clock, clock result
    assert [e.kind for e in events[:stored_before]] == [
        "started",
        "user_message",
        "agent_reply",
        "agent_reply",
        "tool_result",
    ]
    user_messages = [e for e in events if e.kind == "user_message"]
    assert len(user_messages) == 1  # the message was not posted twice by the recovery
    mid = [e.text for e in events if isinstance(e, AgentReply) and e.agent == "mid" and e.text]
    assert mid == ["mid answer"]  # the interrupted call's answer was never stored


def test_variant_overrides_are_recorded_and_survive_a_supervisor_restart(
    runtime: Runtime, openai_server: OpenAIServer
) -> None:
    script = Script(boss=["one", "two"])
    openai_server.responder = script
    chat = runtime.chat("boss", "variant", overrides={"boss": {"temperature": 0.3}})
    assert chat.send("first").answer == "one"
    ray.kill(runtime.supervisors[0], no_restart=False)  # the restarted host knows nothing in memory
    assert chat.send("second").answer == "two"
    assert [body["temperature"] for body in script.seen["boss"]] == [0.3, 0.3]
    assert chat.history()[0].overrides == {"boss": {"temperature": 0.3}}  # type: ignore[union-attr]


def test_rewind_then_send_forks_and_a_finished_branch_continues(
    runtime: Runtime, openai_server: OpenAIServer
) -> None:
    openai_server.responder = Script(boss=["first", "second", "again"])
    chat = runtime.chat("boss", "forky")
    assert chat.send("one").answer == "first"
    assert chat.send("two").answer == "second"  # sending to an idle branch continues it
    branch = chat.rewind(2)  # keep the first exchange only (started, "one", "first")
    assert chat.send("two, differently").answer == "again"
    assert chat.branch().name == branch
    texts = [getattr(e, "text", "") for e in chat.history()]
    assert texts[1:] == ["one", "first", "two, differently", "again"]
    assert [getattr(e, "text", "") for e in chat.history("main")][1:] == ["one", "first", "two", "second"]


def test_the_same_team_runs_offline_on_the_mock_provider(
    ray_session: None, store_url: str, namespace: str
) -> None:
    rt = p2e.api.init(agents="experiments/agents.yaml", store_url=store_url, namespace=namespace)
    try:
        result = rt.chat("planner", "offline").send("What is the weather in Lisbon?")
    finally:
        rt.shutdown()
    assert result.status == "idle" and result.answer is not None and "Lisbon" in result.answer


def test_agents_placed_in_the_supervisor_run_without_an_actor(
    ray_session: None, store_url: str, namespace: str, tmp_path: Path
) -> None:
    team = yaml.safe_load(Path("experiments/agents.yaml").read_text())
    for spec in team["agents"].values():
        spec["placement"] = "supervisor"
    team["agents"]["writer"]["placement"] = "actor"  # a mix: the writer keeps its actor
    team["personas_dir"] = str(Path("experiments/personas").resolve())
    team["providers"]["mock"]["rules_dirs"] = [str(Path("experiments/mock").resolve())]
    (tmp_path / "agents.yaml").write_text(yaml.safe_dump(team))
    rt = p2e.api.init(agents=tmp_path / "agents.yaml", store_url=store_url, namespace=namespace)
    try:
        names = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}
        assert f"{namespace}:agent:writer:0" in names and f"{namespace}:agent:planner:0" not in names
        chat = rt.chat("planner", "in-process")
        result = chat.send("What is the weather in Lisbon?")
        agents = [e.agent for e in chat.history() if isinstance(e, AgentReply)]
    finally:
        rt.shutdown()
    assert result.status == "idle" and result.answer is not None and "Lisbon" in result.answer
    assert agents == ["planner", "researcher", "researcher", "planner", "writer", "planner"]


def test_actors_are_named_and_replicas_share_the_steps(
    runtime: Runtime, openai_server: OpenAIServer, namespace: str
) -> None:
    for name in (f"{namespace}:supervisor:0", f"{namespace}:agent:boss:0", f"{namespace}:agent:leaf:1"):
        assert ray.get_actor(name, namespace="p2e") is not None
    openai_server.responder = Script(
        boss=[calls(("delegate", {"agent": "mid", "task": "t"})), "done"] * 2,
        mid=[calls(("delegate", {"agent": "leaf", "task": "t"})), "mid"] * 2,
        leaf=["leaf 1", "leaf 2"],
    )
    chat = runtime.chat("boss", "replicas")
    assert chat.send("one").answer == "done" and chat.send("two").answer == "done"
    served = [ray.get(h.health.remote())["steps"] for h in runtime.agents["leaf"]]
    assert served == [1, 1]  # round-robin over the two leaf actors


def test_a_model_that_keeps_failing_ends_the_conversation_with_a_clear_error(
    runtime: Runtime, openai_server: OpenAIServer
) -> None:
    openai_server.responder = lambda body: Reply(status=400, error="model overloaded with nonsense")
    result = runtime.chat("boss", "modelfail").send("hello?")
    assert result.status == "failed" and result.answer is None
    assert result.error is not None and result.error.startswith("agent_error: agent 'boss'")
    assert "400" in result.error
    last = runtime.log.history("modelfail")[-1]
    assert last.kind == "failed" and "test-key" not in last.message  # type: ignore[union-attr]


def _wait_for_scores(runtime: Runtime, conv: str, n: int, timeout: float = 20) -> list[Any]:
    from p2e.evals.store import ScoreStore

    store = ScoreStore(runtime.log)
    deadline = time.monotonic() + timeout
    while True:
        scores = [s for s in store.all(conv) if s.status in ("done", "error")]
        if len(scores) >= n or time.monotonic() > deadline:
            return scores
        time.sleep(0.05)


def test_evaluator_actors_score_every_step_and_episode_without_holding_the_turn(
    runtime: Runtime, openai_server: OpenAIServer
) -> None:
    openai_server.responder = Script(
        boss=[calls(("calculator", {"expression": "1+1"})), "two", "three"],
    )
    chat = runtime.chat("boss", "scored")
    assert chat.send("1+1?").answer == "two"
    scores = _wait_for_scores(runtime, "scored", 3)  # 2 steps + the episode
    by = {(s.evaluator, s.target.seq): s for s in scores}
    assert len(scores) == 3 and all(s.status == "done" for s in scores)
    assert by[("tool_called", 2)].value == 1.0  # the step that called the calculator
    assert by[("tool_called", 4)].value == 0.0  # a step is judged on its own calls: the answer made none
    assert by[("max_steps", None)].value == 1.0
    # after a rewind, the new branch's steps are scored on that branch; inherited ones are shared
    chat.rewind(1)
    openai_server.responder = Script(boss=["no tools this time"])
    chat.resume()
    scores = _wait_for_scores(runtime, "scored", 5)
    on_b1 = [s for s in scores if s.target.branch == "b1"]
    assert sorted((s.evaluator, s.target.seq) for s in on_b1) == [("max_steps", None), ("tool_called", 2)]
    assert [s.value for s in on_b1 if s.evaluator == "tool_called"] == [0.0]
