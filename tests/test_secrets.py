"""Secrets stay out of results: rows, exports, the rollout record, every key of the store (and
so its append-only file), and the errors that name a store URL."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import redis
import yaml
from conftest import Cli

from p2e.api import local_chat, run_rollout
from p2e.errors import StoreUnavailable
from p2e.redact import MASK, mask_url
from p2e.rollouts.export import write_trajectories
from p2e.rollouts.store import RolloutStore
from p2e.store import EventLog, connect
from p2e.tools import REGISTRY

ROOT = Path(__file__).resolve().parent.parent
# The keys that tests/secret_tools.py echoes (not imported here: importing it would register its
# `leak` tool in this process for the whole session; the runtime imports it where it runs).
TOOL_KEY = "sk-proj-ToolEchoed0123456789abcdefXYZ"
MODEL_KEY = "ghp_ModelEchoed0123456789abcdefghijklmnop"


@pytest.fixture(autouse=True)
def _registry_left_as_found() -> Iterator[None]:
    """A local run imports secret_tools (tool_modules): its tool leaves with the test."""
    before = set(REGISTRY._tools)
    yield
    for name in set(REGISTRY._tools) - before:
        REGISTRY._tools.pop(name, None)


INLINE_KEY = "inline-hunter2-provider-key"
"""Not shaped like any known key: only not storing it keeps it out."""
SECRETS = (TOOL_KEY, MODEL_KEY, INLINE_KEY)

RULES = {
    "rules": [
        {  # the model pays with a reason that quotes a token, and runs the tool that prints a key
            "agent": "bot",
            "role": "user",
            "match": "^leak ok",
            "tool_calls": [
                {
                    "name": "reward",
                    "arguments": {"agent": "helper", "amount": "1", "work": f"token {MODEL_KEY}"},
                },
                {"name": "leak", "arguments": {"label": "ok"}},
            ],
        },
        {
            "agent": "bot",
            "role": "user",
            "match": "^leak fail",
            "tool_calls": [{"name": "leak", "arguments": {"label": "fail"}}],
        },
        {  # the answer repeats the tool's output and adds a token of its own
            "agent": "bot",
            "role": "tool",
            "match": "^ok: ",
            "text": "Found {{ results | join('; ') }} and " + MODEL_KEY,
        },
        # no default: the `fail` scenario's tool turn matches nothing, and the model's error
        # quotes the last message (the key) into the failed episode's error
    ]
}

SPEC = {
    "name": "secrets",
    "agents": {
        "agents": {
            "bot": {
                "model": "mock/leaky",
                "persona": "You answer.",
                "tools": ["leak", "reward"],
                "can_delegate_to": ["helper"],
            },
            "helper": {"model": "mock/leaky", "persona": "You help."},
        },
        "tool_modules": ["secret_tools", "p2e.tools.ledger"],
        "evaluator_modules": ["secret_tools"],
        "providers": {"mock": {"rules": {"leaky": RULES}}, "openai": {"api_key": INLINE_KEY}},
    },
    "teams": [{"id": "t", "root": "bot"}],
    "scenarios": [{"id": "ok", "message": "leak ok"}, {"id": "fail", "message": "leak fail"}],
    "evaluators": [{"id": "quoting", "per": "episode"}],
    "ledger": {"balance": 10},
    "limits": {"max_steps": 8},
}


def _values(r: redis.Redis, key: bytes) -> list[bytes]:
    """Every byte string a key holds, whatever its type."""
    kind = r.type(key).decode()
    if kind == "string":
        return [r.get(key) or b""]
    if kind == "hash":
        return [x for kv in r.hgetall(key).items() for x in kv]
    if kind == "list":
        return r.lrange(key, 0, -1)
    if kind == "set":
        return list(r.smembers(key))
    if kind == "zset":
        return r.zrange(key, 0, -1)
    if kind == "stream":
        return [x for _, fields in r.xrange(key) for kv in fields.items() for x in kv]
    raise AssertionError(f"{key!r}: unexpected type {kind}")


def leaks(text: str | bytes) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [s for s in SECRETS if s.encode() in data]


def test_a_rollout_that_echoes_keys_stores_and_exports_none(
    ray_session: None, store_url: str, namespace: str, store_home: Path, tmp_path: Path, log: EventLog
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC, sort_keys=False))
    result = run_rollout(spec, store_url=store_url, namespace=namespace)
    rows = {r.scenario: r for r in result.rows}
    assert rows["ok"].status == "done" and rows["fail"].status == "failed"
    # the secrets were there to leak: masked, not dropped
    assert rows["ok"].answer is not None and rows["ok"].answer.count(MASK) == 2
    assert rows["fail"].error is not None and MASK in rows["fail"].error
    assert not [leaks(r.model_dump_json()) for r in result.rows if leaks(r.model_dump_json())]

    # exports
    result.to_jsonl(tmp_path / "rows.jsonl")
    result.to_parquet(tmp_path / "rows.parquet")
    assert write_trajectories(log, result.rows, tmp_path / "chat.jsonl", min_score=None) == 1
    assert not leaks((tmp_path / "rows.jsonl").read_bytes())
    table = pq.read_table(tmp_path / "rows.parquet").to_pylist()
    assert MASK in json.dumps(table) and not leaks(json.dumps(table))
    chat = (tmp_path / "chat.jsonl").read_text()
    assert MASK in chat and not leaks(chat)

    # the rollout record keeps where the inline key came from, not the key
    info = RolloutStore(log).get(result.id)
    assert info.spec["agents"]["providers"]["openai"]["api_key"] == f"<inline key from {spec}: not stored>"

    # every value of every key of the rollout's namespace (events, rows, record, scores, ledger)
    r = redis.Redis.from_url(store_url)
    keys = list(r.scan_iter(match=f"{namespace}:*", count=1000))
    assert any(k.endswith(b":scores") for k in keys) and any(b":ledger:" in k for k in keys)
    found = {k.decode(): sorted({s for v in [k, *_values(r, k)] for s in leaks(v)}) for k in keys}
    assert {k: v for k, v in found.items() if v} == {}

    # a resumed rollout re-reads the spec file (and its key) and runs what is missing
    store = RolloutStore(log)
    r.hdel(store.rows_key(result.id), rows["ok"].episode)
    again = run_rollout(spec, store_url=store_url, namespace=namespace, resume=result.id)
    assert {x.scenario: x.status for x in again.rows} == {"ok": "done", "fail": "failed"}
    assert not leaks(r.get(f"{namespace}:rollout:{result.id}") or b"")
    r.close()

    # and so the embedded store's append-only file never saw them
    if not os.environ.get("P2E_TEST_REDIS_URL"):
        aof = [p for p in (store_home / "valkey").rglob("*.aof*") if p.is_file()]
        assert aof and not [p.name for p in aof if leaks(p.read_bytes())]


def test_snapshots_of_the_machine_state_hold_no_key(
    store_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state keeps a delegation's task (model text) in its frame; a snapshot stores it."""
    monkeypatch.setenv("P2E_SNAPSHOT_EVERY", "2")
    chat = local_chat(
        "planner", "s", agents=ROOT / "experiments/agents.yaml", store_url=store_url, namespace=namespace
    )
    try:
        chat.send(f"Weather in Paris? My key is {TOOL_KEY}")
    finally:
        chat.close()
    r = redis.Redis.from_url(store_url)
    snaps = [k for k in r.scan_iter(match=f"{namespace}:*:snap", count=1000)]
    values = [v for k in snaps for v in _values(r, k)]
    r.close()
    assert values and any(b"Find the facts" in v for v in values)  # the planner's task to the researcher
    assert not [v for v in values if leaks(v)] and any(MASK.encode() in v for v in values)


STORE = "redis://:hunter2@127.0.0.1:1/0"


def test_an_unreachable_store_is_named_without_its_password(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(StoreUnavailable) as e:
        connect(STORE, "p2etest-nothing").conversations()
    assert "hunter2" not in str(e.value) and "127.0.0.1:1" in str(e.value)
    monkeypatch.setenv("P2E_REDIS_URL", STORE)
    for args in (("conversation", "list"), ("rollout", "list"), ("store", "status")):
        code, out, err = cli(*args)
        assert code != 0 and "127.0.0.1:1" in out + err, args
        assert "hunter2" not in out + err, args


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:hunter2@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("rediss://user:hunter2@cache.example:6380", "rediss://user:***@cache.example:6380"),
        ("redis://127.0.0.1:6379/0?password=hunter2&db=1", "redis://127.0.0.1:6379/0?password=***&db=1"),
        ("unix:///tmp/valkey.sock?password=hunter2", "unix:///tmp/valkey.sock?password=***"),
        ("unix://:hunter2@/tmp/valkey.sock?db=1", "unix://:***@/tmp/valkey.sock?db=1"),
        (
            "rediss://u:hunter2@h:6380/0?ssl_keyfile=/k.pem&ssl_password=hunter2",
            "rediss://u:***@h:6380/0?ssl_keyfile=/k.pem&ssl_password=***",
        ),
        ("https://hunter2@host/v1", "https://***@host/v1"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ],
)
def test_mask_url(url: str, shown: str) -> None:
    assert mask_url(url) == shown
