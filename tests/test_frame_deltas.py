"""Agent actors are sent only the new messages of a frame (`p2e.runtime.frames`), and every model
still sees exactly the messages it would see if each step carried the whole frame: across many
sends, a rewind to an earlier seq, replicas serving the same frame, and a restarted agent actor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray
from openai_server import OpenAIServer
from test_runtime import AGENTS, Script, calls

import p2e.api
from p2e.llm.base import Message
from p2e.runtime.frames import FrameCache, SentFrames
from p2e.runtime.steps import StepRequest
from p2e.transcript import Transcript


def script() -> Script:
    return Script(
        boss=[
            "first",
            "second",
            calls(("delegate", {"agent": "mid", "task": "ask leaf"})),
            "boss: sunny",
            "again",
            "after the restart",
        ],
        mid=[calls(("delegate", {"agent": "leaf", "task": "weather twice"})), "mid: sunny"],
        # three steps in one frame over two replicas: 0 (whole), 1 (whole), 0 (the new ones)
        leaf=[calls(("weather", {"city": "Paris"})), calls(("weather", {"city": "Lisbon"})), "sunny"],
    )


def run(
    server: OpenAIServer, store_url: str, namespace: str, tmp_path: Path, frame_cache: int
) -> tuple[dict[str, list[Any]], list[str | None], dict[str, list[Any]]]:
    """The same conversation with `frame_cache`: what each model was shown (in order), the
    answers, and the agent actors' health at the end."""
    path = tmp_path / f"agents-{frame_cache}.yaml"
    path.write_text(AGENTS.format(url=server.url) + f"frame_cache: {frame_cache}\n")
    server.reset()
    s = script()
    server.responder = s
    rt = p2e.api.init(agents=path, store_url=store_url, namespace=f"{namespace}-{frame_cache}")
    try:
        chat = rt.chat("boss", "deltas")
        answers = [chat.send(t).answer for t in ("one", "two", "delegate please")]
        chat.rewind(2)  # back to (started, "one", "first"): a branch the agents have not seen
        answers.append(chat.send("two, differently").answer)
        ray.kill(rt.agents["boss"][0], no_restart=False)  # its cache goes with it
        answers.append(chat.send("after the restart").answer)
        health = {a: [ray.get(h.health.remote()) for h in hs] for a, hs in rt.agents.items()}
    finally:
        rt.shutdown()
    return {a: [b["messages"] for b in bodies] for a, bodies in s.seen.items()}, answers, health


def test_models_see_the_same_messages_as_with_whole_frames(
    ray_session: None, openai_server: OpenAIServer, store_url: str, namespace: str, tmp_path: Path
) -> None:
    whole, answers0, health0 = run(openai_server, store_url, namespace, tmp_path, frame_cache=0)
    delta, answers, health = run(openai_server, store_url, namespace, tmp_path, frame_cache=4096)
    assert answers == answers0 == ["first", "second", "boss: sunny", "again", "after the restart"]
    assert delta == whole
    boss = [[m["content"] for m in messages[1:]] for messages in delta["boss"]]
    assert boss[4] == ["one", "first", "two, differently"]  # the rewound branch, nothing of "two"
    assert boss[5] == [*boss[4], "again", "after the restart"]
    assert [len(m) for m in delta["leaf"]] == [2, 4, 6]  # system, task, then call and result each
    # with whole frames nothing is cached; with the cache the agents took the earlier messages
    # from it: boss's 2nd to 4th step, leaf's third (replica 0 again); the restarted boss had
    # nothing and asked for the whole frame once
    assert all(h["frame_hits"] == h["frame_misses"] == 0 for hs in health0.values() for h in hs)
    assert [h["frame_hits"] for h in health["leaf"]] == [1, 0]
    assert (health["boss"][0]["frame_hits"], health["boss"][0]["frame_misses"]) == (0, 1)
    assert health["mid"][0]["frame_hits"] == 1


def request(frame: str, messages: list[Message]) -> StepRequest:
    return StepRequest(
        conversation="c",
        branch="main",
        seq=1,
        agent="a",
        turn=0,
        depth=1,
        messages=tuple(messages),
        frame=frame,
    )


def test_a_step_carries_only_what_the_replica_has_not_seen() -> None:
    host, agent = SentFrames(8), FrameCache(8)
    frame = [Message(role="user", content="task")]
    for i in range(3):
        req = request("f", frame)
        sent = host.delta(req)
        assert (sent.base, len(sent.messages)) == ((0, 1) if i == 0 else (2 * i - 1, 2))
        full = agent.resolve(sent)
        assert full is not None and full.messages == req.messages and full.base == 0
        host.sent(req)
        frame += [Message(role="assistant", content=f"a{i}"), Message(role="user", content=f"u{i}")]


def test_an_agent_without_the_earlier_messages_asks_for_all_of_them() -> None:
    host = SentFrames(8)
    frame = [Message(role="user", content="task"), Message(role="assistant", content="x")]
    host.sent(request("f", frame[:1]))
    sent = host.delta(request("f", frame))
    assert sent.base == 1
    assert FrameCache(8).resolve(sent) is None  # restarted: empty
    small = FrameCache(1)
    small.resolve(request("f", frame[:1]))
    small.resolve(request("g", frame[:1]))  # evicts f
    assert small.resolve(sent) is None and small.misses == 1
    assert FrameCache(0).resolve(request("f", frame)) is not None  # 0 keeps nothing, serves whole


def test_a_copied_or_rebuilt_transcript_names_its_frames_anew() -> None:
    t = Transcript()
    t.frames, t.tasks, t.ids = [[Message(role="user", content="task")]], ["task"], ["x.1"]
    copy = t.copy()
    assert copy.frame_id() not in ("", t.frame_id())
    assert copy.frames == t.frames
