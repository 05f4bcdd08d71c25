"""The branching event log (`p2e.store.EventLog`), checked the way a user of it would check it.

Everything here that uses the `log` fixture runs on the session's embedded Valkey and, in CI, again
on a stock Redis (`P2E_TEST_REDIS_URL`), each test in a namespace of its own. The crash test at the
end starts, kills and restarts a private embedded server of its own.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from p2e.errors import (
    Conflict,
    CorruptData,
    InvalidArgument,
    SequenceOutOfRange,
    StoreUnavailable,
    UnknownBranch,
    UnknownConversation,
)
from p2e.events import (
    AgentReply,
    Event,
    Failed,
    Finished,
    Limits,
    Started,
    ToolCall,
    ToolResult,
    Usage,
    UserMessage,
)
from p2e.redact import mask_url
from p2e.store import EventLog, connect
from p2e.store.server import ensure_embedded

# --- helpers ---------------------------------------------------------------------------------------


def said(*texts: str) -> list[Event]:
    return [UserMessage(text=t, ts=1.0) for t in texts]


def numbered(prefix: str, n: int) -> list[Event]:
    return said(*(f"{prefix}{i}" for i in range(n)))


def texts(events: list[Event]) -> list[str]:
    return [e.text for e in events]  # type: ignore[union-attr]


def as_stored(events: list[Event], first: int) -> list[Event]:
    """What reading `events` back must give when they were appended from seq `first`."""
    return [e.model_copy(update={"seq": first + i}) for i, e in enumerate(events)]


def every_kind() -> list[Event]:
    """One event of each kind, with unicode, quotes, nested models and default timestamps."""
    return [
        Started(root="boss", team={"boss": ("worker",), "worker": ()}, limits=Limits(max_depth=3)),
        UserMessage(text='héllo ✓ "quoted" \\ back\nslash\t{"json": [1]}'),
        AgentReply(
            agent="boss",
            tool_calls=(
                ToolCall(id="c1", name="delegate", arguments={"agent": "worker", "task": "sum 1..3"}),
                ToolCall(id="c2", name="calc", arguments={"x": [1, 2.5, None], "y": {"z": True}}),
            ),
            model="scripted",
            usage=Usage(prompt_tokens=12, completion_tokens=3, cost_usd=0.0001, latency_ms=1.5),
        ),
        AgentReply(agent="worker", text="6"),
        ToolResult(agent="boss", call_id="c2", name="calc", output="oops", is_error=True),
        ToolResult(agent="boss", call_id="c1", name="delegate", output="6"),
        Failed(code="max_steps", message="too many steps", ts=123.456789),
        Finished(reason="done"),
    ]


def dump(r: redis.Redis, ns: str) -> dict[bytes, object]:
    """Every key under the namespace with its whole content, to prove that nothing was written."""
    out: dict[bytes, object] = {}
    for key in r.scan_iter(match=f"{ns}:*", count=1000):
        kind = r.type(key)
        if kind == b"list":
            out[key] = r.lrange(key, 0, -1)
        elif kind == b"hash":
            out[key] = r.hgetall(key)
        elif kind == b"zset":
            out[key] = r.zrange(key, 0, -1, withscores=True)
        else:
            out[key] = r.dump(key)
    return out


def stored_events(log: EventLog) -> int:
    """How many event entries exist across every branch list of the namespace."""
    keys = list(log.r.scan_iter(match=f"{log.keys.ns}:conv:*:ev", count=1000))
    return sum(log.r.llen(k) for k in keys)


@pytest.fixture
def conv(log: EventLog) -> str:
    """A fresh conversation named `c`; its id."""
    return log.create_conversation("boss", "c").id


# --- conversations ---------------------------------------------------------------------------------


def test_create_conversation_is_readable_by_name_and_id(log: EventLog) -> None:
    before = time.time()
    info = log.create_conversation("boss", "first")
    assert (info.name, info.root, info.active, info.events, info.branches) == ("first", "boss", "main", 0, 1)
    assert before - 1 <= info.created <= time.time() + 1
    assert log.conversation("first") == info
    assert log.conversation(info.id) == info
    assert log.resolve("first") == info.id
    assert [b.name for b in log.branches("first")] == ["main"]
    assert log.branch("first").name == "main"
    assert log.history("first") == []


def test_create_without_a_name_is_named_by_its_id(log: EventLog) -> None:
    a, b = log.create_conversation("boss"), log.create_conversation("boss")
    assert a.id != b.id
    assert a.name == a.id
    assert log.conversation(a.id).name == a.id


def test_create_with_another_first_branch(log: EventLog) -> None:
    info = log.create_conversation("boss", "c", branch="trunk")
    assert info.active == "trunk"
    assert log.branch("c").name == "trunk"
    log.append("c", "trunk", said("x"))
    assert texts(log.history("c")) == ["x"]


def test_a_taken_name_is_refused_and_the_first_conversation_is_untouched(log: EventLog) -> None:
    first = log.create_conversation("boss", "dup")
    log.append("dup", "main", said("a"))
    with pytest.raises(InvalidArgument, match="'dup'"):
        log.create_conversation("other", "dup")
    assert [c.id for c in log.conversations()] == [first.id]
    assert log.conversation("dup").root == "boss"
    assert texts(log.history("dup")) == ["a"]


BAD_NAMES = ["", "-lead", ".dot", "_under", "has space", "a:b", "a/b", "a*", "ünï", "x" * 65, "tab\there"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_conversation_and_branch_names_are_refused(log: EventLog, name: str) -> None:
    if name:  # an empty conversation name means "none": the id is used
        with pytest.raises(InvalidArgument, match="not allowed"):
            log.create_conversation("boss", name)
    with pytest.raises(InvalidArgument, match="not allowed"):
        log.create_conversation("boss", "ok", branch=name)
    assert dump(log.r, log.keys.ns) == {}  # nothing half-created
    log.create_conversation("boss", "ok")
    with pytest.raises(InvalidArgument, match="not allowed"):
        log.fork("ok", "main", 0, name)
    assert [b.name for b in log.branches("ok")] == ["main"]


@pytest.mark.parametrize("what", ["conversation", "branch"])
def test_a_name_with_a_trailing_newline_is_refused(log: EventLog, what: str) -> None:
    with pytest.raises(InvalidArgument):
        if what == "conversation":
            log.create_conversation("boss", "c\n")
        else:
            log.create_conversation("boss", "c", branch="main\n")


@pytest.mark.parametrize("name", ["a", "0", "A-1.b_c", "x" * 64, "v1.2.3"])
def test_good_names_are_accepted(log: EventLog, name: str) -> None:
    info = log.create_conversation("boss", name, branch=name)
    assert log.conversation(name).id == info.id
    assert log.branch(name).name == name


def test_a_chosen_id(log: EventLog) -> None:
    info = log.create_conversation("boss", "named", cid="my-id-1")
    assert info.id == "my-id-1"
    assert log.conversation("my-id-1") == log.conversation("named") == info
    with pytest.raises(InvalidArgument):
        log.create_conversation("boss", "other", cid="my-id-1")  # an id is used once
    with pytest.raises(InvalidArgument, match="not allowed"):
        log.create_conversation("boss", "other", cid="bad id")
    assert [c.id for c in log.conversations()] == ["my-id-1"]
    unnamed = log.create_conversation("boss", cid="my-id-2")
    assert unnamed.name == "my-id-2"


@pytest.mark.parametrize("clash", ["name is another's id", "id is another's name"])
def test_ids_and_names_never_clash(log: EventLog, clash: str) -> None:
    a = log.create_conversation("boss", "alpha")
    try:
        if clash == "name is another's id":
            b = log.create_conversation("boss", a.id)
        else:
            b = log.create_conversation("boss", "beta", cid="alpha")
    except InvalidArgument:
        return  # refused: fine
    # accepted: then each must still be reachable by what it was called
    assert log.conversation(b.name).id == b.id
    assert log.conversation(a.name).id == a.id
    assert log.conversation(a.id).id == a.id


# --- appending and reading -------------------------------------------------------------------------


def test_append_returns_consecutive_seqs(log: EventLog, conv: str) -> None:
    assert log.append("c", "main", said("a")) == 0
    assert log.append("c", "main", said("b", "c", "d")) == 1
    assert log.append_to(conv, "main", said("e", "f")) == 4
    assert log.branch("c").length == 6
    assert log.conversation("c").events == 6
    assert texts(log.history("c")) == list("abcdef")
    assert [e.seq for e in log.history("c")] == list(range(6))


def test_events_read_back_equal_what_was_written_plus_seq(log: EventLog, conv: str) -> None:
    events = every_kind()
    assert all(e.seq is None for e in events)
    first = log.append("c", "main", events[:3])
    second = log.append("c", "main", events[3:])
    assert (first, second) == (0, 3)
    back = log.history("c")
    assert back == as_stored(events, 0)
    assert [type(e) for e in back] == [type(e) for e in events]
    for seq, e in enumerate(as_stored(events, 0)):
        assert log.event("c", None, seq) == e
        assert log.event(conv, "main", seq) == e


BIG = 2007
"""More events than one slice of the append script's RPUSH (Lua's unpack() is bounded)."""


def test_appending_nothing_is_refused(log: EventLog, conv: str) -> None:
    with pytest.raises(InvalidArgument):
        log.append("c", "main", [])
    assert log.branch("c").length == 0


def test_a_batch_larger_than_one_script_call(log: EventLog, conv: str) -> None:
    n = BIG
    assert log.append("c", "main", numbered("m", n)) == 0
    assert log.append("c", "main", said("last")) == n
    back = log.history("c")
    assert texts(back) == [f"m{i}" for i in range(n)] + ["last"]
    assert [e.seq for e in back] == list(range(n + 1))
    assert log.conversation("c").events == n + 1
    assert len(log.indexed("c", kind="user_message")) == n + 1


def test_history_ranges(log: EventLog, conv: str) -> None:
    assert log.history("c", start=0, end=5) == []  # empty branch
    log.append("c", "main", numbered("e", 10))
    want = [f"e{i}" for i in range(10)]
    assert texts(log.history("c")) == want
    assert texts(log.history("c", "main", 3, 7)) == want[3:7]
    assert texts(log.history("c", start=7)) == want[7:]
    assert texts(log.history("c", end=2)) == want[:2]
    assert [e.seq for e in log.history("c", start=4, end=6)] == [4, 5]
    assert log.history("c", start=5, end=5) == []
    assert log.history("c", start=7, end=3) == []
    assert texts(log.history("c", start=8, end=100)) == want[8:]  # end is clipped
    assert log.history("c", start=10) == []
    assert log.history("c", start=50, end=60) == []
    with pytest.raises(SequenceOutOfRange):
        log.history("c", start=-1)


@pytest.mark.parametrize("seq", [-1, 3, 100])
def test_a_single_event_out_of_range(log: EventLog, conv: str, seq: int) -> None:
    log.append("c", "main", said("a", "b", "c"))
    with pytest.raises(SequenceOutOfRange, match=str(seq)):
        log.event("c", None, seq)


def test_expected_length_mismatch_raises_conflict_and_writes_nothing(log: EventLog, conv: str) -> None:
    assert log.append("c", "main", said("a"), expected=0) == 0
    assert log.append("c", "main", said("b"), expected=1) == 1
    before = dump(log.r, log.keys.ns)
    for wrong in (0, 1, 3, 99):
        with pytest.raises(Conflict, match=f"expected {wrong}"):
            log.append("c", "main", said("x", "y"), expected=wrong)
    with pytest.raises(Conflict):
        log.append("c", "main", numbered("big", BIG), expected=0)
    assert dump(log.r, log.keys.ns) == before
    assert log.append("c", "main", said("c"), expected=2) == 2
    assert texts(log.history("c")) == ["a", "b", "c"]


def test_a_big_batch_is_one_atomic_script_call(log: EventLog, conv: str) -> None:
    """However long, a batch is one script: all stored, with consecutive seqs, or none of it."""
    real, calls = log._append, itertools.count()

    def counting(*args: object, **kwargs: object) -> object:
        next(calls)
        return real(*args, **kwargs)

    log._append = counting  # type: ignore[assignment]
    log.append_to(conv, "main", said("first"))
    before = dump(log.r, log.keys.ns)
    with pytest.raises(Conflict):
        log.append_to(conv, "main", numbered("m", BIG), expected=0)
    assert dump(log.r, log.keys.ns) == before
    assert log.append_to(conv, "main", numbered("m", BIG), expected=1) == 1
    assert next(calls) == 3  # one script call per append, whatever its size
    assert texts(log.history(conv)) == ["first"] + [f"m{i}" for i in range(BIG)]


def _run_threads(n: int, target: Callable[[int], None]) -> None:
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            target(i)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    if errors:
        raise errors[0]


def test_concurrent_appenders_get_distinct_gap_free_seqs(
    log: EventLog, store_url: str, namespace: str, conv: str
) -> None:
    writers, rounds, per = 4, 25, 3
    barrier = threading.Barrier(writers)
    firsts: dict[int, list[int]] = {}

    def writer(w: int) -> None:
        own = EventLog(store_url, namespace)
        try:
            barrier.wait(10)
            firsts[w] = [own.append_to(conv, "main", numbered(f"w{w}r{r}e", per)) for r in range(rounds)]
        finally:
            own.close()

    _run_threads(writers, writer)
    total = writers * rounds * per
    seqs = sorted(s + i for fs in firsts.values() for s in fs for i in range(per))
    assert seqs == list(range(total))  # distinct and gap-free
    back = log.history(conv)
    assert [e.seq for e in back] == list(range(total))
    for w, fs in firsts.items():
        assert fs == sorted(fs)  # one writer's appends keep their order
        for r, first in enumerate(fs):  # each batch is consecutive, at the seq it was told
            assert texts(back[first : first + per]) == [f"w{w}r{r}e{i}" for i in range(per)]
    assert log.conversation(conv).events == total
    assert len(log.indexed(conv, kind="user_message")) == total


def test_concurrent_appenders_with_expected_retry_until_they_win(
    log: EventLog, store_url: str, namespace: str, conv: str
) -> None:
    writers, rounds = 3, 15
    barrier = threading.Barrier(writers)
    conflicts = [0] * writers

    def writer(w: int) -> None:
        own = EventLog(store_url, namespace)
        try:
            barrier.wait(10)
            for r in range(rounds):
                while True:
                    length = own.branch(conv, "main").length
                    try:
                        assert own.append_to(conv, "main", said(f"w{w}r{r}"), expected=length) == length
                        break
                    except Conflict:
                        conflicts[w] += 1
        finally:
            own.close()

    _run_threads(writers, writer)
    back = log.history(conv)
    assert [e.seq for e in back] == list(range(writers * rounds))
    for w in range(writers):  # every event exactly once, in each writer's order
        assert [t for t in texts(back) if t.startswith(f"w{w}r")] == [f"w{w}r{r}" for r in range(rounds)]


# --- forks -----------------------------------------------------------------------------------------


def test_fork_at_start_middle_and_end(log: EventLog, conv: str) -> None:
    log.append("c", "main", numbered("m", 6))
    main = [f"m{i}" for i in range(6)]
    for at, name in [(0, "zero"), (3, "mid"), (6, "end")]:
        info = log.fork("c", "main", at, name)
        assert (info.name, info.parent, info.fork_at, info.length) == (name, "main", at, at)
        assert log.branch("c", name) == info
        assert texts(log.history("c", name)) == main[:at]
        assert log.history("c", name) == log.history("c", "main", 0, at)
        assert log.append("c", name, said(f"{name}-a", f"{name}-b")) == at
    for at, name in [(0, "zero"), (3, "mid"), (6, "end")]:
        back = log.history("c", name)
        assert texts(back) == [*main[:at], f"{name}-a", f"{name}-b"]
        assert [e.seq for e in back] == list(range(at + 2))
        assert log.branch("c", name).length == at + 2
    assert texts(log.history("c", "main")) == main  # the parent is untouched by its forks
    log.append("c", "main", said("m6"))
    assert texts(log.history("c", "mid")) == [*main[:3], "mid-a", "mid-b"]  # and vice versa
    assert texts(log.history("c", "end")) == [*main, "end-a", "end-b"]
    assert texts(log.history("c", "main")) == [*main, "m6"]


def test_fork_of_a_fork_of_a_fork(log: EventLog, conv: str) -> None:
    log.append("c", "main", numbered("m", 10))
    model = {"main": [f"m{i}" for i in range(10)]}
    chain = [("main", 6, "f1"), ("f1", 8, "f2"), ("f2", 9, "f3"), ("f3", 11, "f4")]
    for parent, at, name in chain:
        info = log.fork("c", parent, at, name)
        assert info.parent == parent and info.fork_at == at
        model[name] = model[parent][:at]
        own = [f"{name}-{i}" for i in range(3)]
        log.append("c", name, said(*own))
        model[name] += own
    for name, want in model.items():
        back = log.history("c", name)
        assert texts(back) == want, name
        assert [e.seq for e in back] == list(range(len(want)))
    # every level keeps a prefix of its parent, and the lineage says where each part lives
    f4 = log.branch("c", "f4")
    assert [(s.branch, s.lo, s.hi) for s in f4.segments] == [
        ("main", 0, 6),
        ("f1", 6, 8),
        ("f2", 8, 9),
        ("f3", 9, 11),
        ("f4", 11, 14),
    ]
    assert [log.owner(f4, s) for s in (0, 5, 6, 7, 8, 9, 10, 11, 13)] == [
        "main",
        "main",
        "f1",
        "f1",
        "f2",
        "f3",
        "f3",
        "f4",
        "f4",
    ]
    assert texts(log.history("c", "f4", 5, 12)) == model["f4"][5:12]  # a range across four lists
    log.append("c", "f1", said("late"))  # a parent growing leaves its descendants alone
    for name, want in model.items():
        if name != "f1":
            assert texts(log.history("c", name)) == want


def test_random_forks_and_appends_match_a_model(log: EventLog, conv: str) -> None:
    rng = random.Random(20240611)
    model: dict[str, list[str]] = {"main": []}
    appended = 0
    for step in range(80):
        name = rng.choice(sorted(model))
        if rng.random() < 0.3:
            at = rng.randint(0, len(model[name]))
            new = f"b{step}"
            log.fork("c", name, at, new)
            model[new] = model[name][:at]
        else:
            own = [f"s{step}e{i}" for i in range(rng.randint(1, 4))]
            assert log.append("c", name, said(*own)) == len(model[name])
            model[name] += own
            appended += len(own)
    for name, want in model.items():
        assert texts(log.history("c", name)) == want, name
        lo = rng.randint(0, len(want))
        hi = rng.randint(lo, len(want) + 2)
        assert texts(log.history("c", name, lo, hi)) == want[lo:hi], (name, lo, hi)
    assert stored_events(log) == appended  # forks copied nothing
    assert log.conversation("c").events == appended
    assert {b.name: b.length for b in log.branches("c")} == {n: len(v) for n, v in model.items()}


def test_forking_copies_no_event(log: EventLog, conv: str) -> None:
    log.append("c", "main", numbered("m", 50))
    assert stored_events(log) == 50
    for i in range(20):
        log.fork("c", "main", i * 2, f"f{i}")
        log.fork("c", f"f{i}", i, f"g{i}")
    assert stored_events(log) == 50
    assert len(log.branches("c")) == 41
    log.append("c", "g7", said("x", "y"))
    assert stored_events(log) == 52
    assert log.conversation("c").events == 52
    assert log.r.llen(log.keys.events(conv, "g7")) == 2
    assert not log.r.exists(log.keys.events(conv, "f3"))  # a branch without own events has no list


@pytest.mark.parametrize("at", [-1, 6, 100])
def test_forking_out_of_range(log: EventLog, conv: str, at: int) -> None:
    log.append("c", "main", numbered("m", 5))
    before = dump(log.r, log.keys.ns)
    with pytest.raises(SequenceOutOfRange, match=str(at)):
        log.fork("c", "main", at, "f")
    assert dump(log.r, log.keys.ns) == before


def test_forking_out_of_range_of_an_empty_branch(log: EventLog, conv: str) -> None:
    with pytest.raises(SequenceOutOfRange):
        log.fork("c", "main", 1, "f")
    assert log.fork("c", "main", 0, "f").length == 0


@pytest.mark.parametrize("existing", ["main", "taken"])
def test_forking_to_an_existing_branch_name(log: EventLog, conv: str, existing: str) -> None:
    log.append("c", "main", numbered("m", 4))
    log.fork("c", "main", 2, "taken")
    log.append("c", "taken", said("t"))
    before = dump(log.r, log.keys.ns)
    with pytest.raises(InvalidArgument, match=repr(existing)):
        log.fork("c", "main", 1, existing)
    assert dump(log.r, log.keys.ns) == before
    assert texts(log.history("c", "taken")) == ["m0", "m1", "t"]


def test_checkout_moves_the_active_branch(log: EventLog, conv: str) -> None:
    log.append("c", "main", said("a", "b"))
    log.fork("c", "main", 1, "alt")
    assert log.branch("c").name == "main"  # forking does not move it by default
    log.append("c", "alt", said("x"))
    info = log.checkout("c", "alt")
    assert info.name == "alt"
    assert log.conversation("c").active == "alt"
    assert log.branch("c").name == "alt"
    assert texts(log.history("c")) == ["a", "x"]
    log.fork("c", "alt", 2, "alt2", checkout=True)
    assert log.branch("c").name == "alt2"
    log.checkout(conv, "main")
    assert texts(log.history("c")) == ["a", "b"]
    with pytest.raises(UnknownBranch):
        log.checkout("c", "nope")
    assert log.branch("c").name == "main"


# --- unknown names ---------------------------------------------------------------------------------

UNKNOWN_CONV_CALLS: dict[str, Callable[[EventLog], object]] = {
    "conversation": lambda lg: lg.conversation("nope"),
    "branch": lambda lg: lg.branch("nope"),
    "branches": lambda lg: lg.branches("nope"),
    "history": lambda lg: lg.history("nope", "main"),
    "event": lambda lg: lg.event("nope", None, 0),
    "append": lambda lg: lg.append("nope", "main", said("x")),
    "fork": lambda lg: lg.fork("nope", "main", 0, "f"),
    "checkout": lambda lg: lg.checkout("nope", "main"),
    "indexed": lambda lg: lg.indexed("nope", kind="user_message"),
}


@pytest.mark.parametrize("call", UNKNOWN_CONV_CALLS)
def test_an_unknown_conversation_is_named(log: EventLog, conv: str, call: str) -> None:
    before = dump(log.r, log.keys.ns)
    with pytest.raises(UnknownConversation, match="'nope'") as e:
        UNKNOWN_CONV_CALLS[call](log)
    assert e.value.conversation == "nope"
    assert dump(log.r, log.keys.ns) == before


UNKNOWN_BRANCH_CALLS: dict[str, Callable[[EventLog], object]] = {
    "branch": lambda lg: lg.branch("c", "nope"),
    "history": lambda lg: lg.history("c", "nope"),
    "event": lambda lg: lg.event("c", "nope", 0),
    "fork": lambda lg: lg.fork("c", "nope", 0, "f"),
    "checkout": lambda lg: lg.checkout("c", "nope"),
}


@pytest.mark.parametrize("call", UNKNOWN_BRANCH_CALLS)
def test_an_unknown_branch_is_named_with_the_known_ones(log: EventLog, conv: str, call: str) -> None:
    log.append("c", "main", said("a"))
    log.fork("c", "main", 1, "alt")
    before = dump(log.r, log.keys.ns)
    with pytest.raises(UnknownBranch) as e:
        UNKNOWN_BRANCH_CALLS[call](log)
    assert e.value.branch == "nope"
    assert "'nope'" in str(e.value)
    assert "main, alt" in str(e.value)
    assert dump(log.r, log.keys.ns) == before


def test_appending_to_an_unknown_branch_writes_nothing(log: EventLog, conv: str) -> None:
    before = dump(log.r, log.keys.ns)
    with pytest.raises(UnknownBranch, match="'nope'") as e:
        log.append("c", "nope", said("x"))
    assert e.value.branch == "nope"
    assert dump(log.r, log.keys.ns) == before


def test_appending_to_an_unknown_branch_names_the_known_ones(log: EventLog, conv: str) -> None:
    with pytest.raises(UnknownBranch) as e:
        log.append("c", "nope", said("x"))
    assert "'c'" in str(e.value)
    assert "main" in str(e.value).replace("'nope'", "")


# --- metadata --------------------------------------------------------------------------------------


def test_conversations_and_branches_metadata(log: EventLog) -> None:
    assert log.conversations() == []
    t0 = time.time()
    a = log.create_conversation("boss", "a")
    b = log.create_conversation("helper", "b", branch="trunk")
    log.append("a", "main", numbered("m", 5))
    log.fork("a", "main", 3, "alt")
    log.append("a", "alt", said("x", "y"))
    log.fork("a", "alt", 4, "deep")
    log.append("b", "trunk", said("only"))

    convs = log.conversations()
    assert [(c.id, c.name, c.root) for c in convs] == [(a.id, "a", "boss"), (b.id, "b", "helper")]
    assert [(c.events, c.branches, c.active) for c in convs] == [(7, 3, "main"), (1, 1, "trunk")]
    assert t0 - 1 <= convs[0].created <= convs[1].created <= time.time() + 1
    assert log.conversation("a") == convs[0]

    branches = log.branches("a")
    assert [(x.name, x.parent, x.fork_at, x.length) for x in branches] == [
        ("main", None, 0, 5),
        ("alt", "main", 3, 5),
        ("deep", "alt", 4, 4),
    ]
    assert all(x.conversation == a.id for x in branches)
    assert branches[0].created <= branches[1].created <= branches[2].created
    assert branches[0].created == pytest.approx(convs[0].created)
    assert [log.branch("a", x.name) for x in branches] == branches


# --- snapshots -------------------------------------------------------------------------------------


def state(n: int, where: str) -> bytes:
    return json.dumps({"after": n, "on": where}).encode()


def test_the_newest_valid_snapshot_of_a_branch(log: EventLog, conv: str) -> None:
    log.append("c", "main", numbered("m", 10))
    main = log.branch("c")
    assert log.load_snapshot(main) is None
    for n in (3, 6, 9):
        log.save_snapshot(conv, "main", n, state(n, "main"))
    log.save_snapshot(conv, "main", 12, state(12, "main"))  # beyond the branch: not usable yet
    assert log.load_snapshot(main) == (9, state(9, "main"))
    assert log.load_snapshot(main, upto=8) == (6, state(6, "main"))
    assert log.load_snapshot(main, upto=6) == (6, state(6, "main"))
    assert log.load_snapshot(main, upto=2) is None
    log.append("c", "main", numbered("n", 3))
    assert log.load_snapshot(log.branch("c")) == (12, state(12, "main"))
    log.save_snapshot(conv, "main", 9, state(9, "again"))  # saving the same length replaces it
    assert log.load_snapshot(log.branch("c"), upto=10) == (9, state(9, "again"))


def test_a_fork_never_uses_its_parents_snapshot_past_the_fork_point(log: EventLog, conv: str) -> None:
    log.append("c", "main", numbered("m", 10))
    for n in (3, 6, 9):
        log.save_snapshot(conv, "main", n, state(n, "main"))
    f = log.fork("c", "main", 7, "f")
    assert log.load_snapshot(f) == (6, state(6, "main"))  # not main's 9: f diverges at 7
    log.append("c", "f", numbered("f", 4))
    f = log.branch("c", "f")
    assert log.load_snapshot(f) == (6, state(6, "main"))
    log.save_snapshot(conv, "f", 10, state(10, "f"))
    assert log.load_snapshot(f) == (10, state(10, "f"))
    assert log.load_snapshot(f, upto=9) == (6, state(6, "main"))
    assert log.load_snapshot(log.branch("c")) == (9, state(9, "main"))  # the parent's own, not f's
    at_snap = log.fork("c", "main", 9, "at9")  # a fork right at a parent's snapshot may use it
    assert log.load_snapshot(at_snap) == (9, state(9, "main"))
    early = log.fork("c", "main", 2, "early")
    assert log.load_snapshot(early) is None
    g = log.fork("c", "f", 8, "g")  # grandchild: main's 6 is valid, f's 10 and main's 9 are not
    log.append("c", "g", numbered("g", 5))
    assert log.load_snapshot(log.branch("c", "g")) == (6, state(6, "main"))
    log.save_snapshot(conv, "f", 8, state(8, "f"))
    assert log.load_snapshot(log.branch("c", "g")) == (8, state(8, "f"))
    assert g.fork_at == 8


# --- the artifact index ----------------------------------------------------------------------------


def test_the_index_holds_canonical_refs_by_kind_and_agent(log: EventLog, conv: str) -> None:
    log.append("c", "main", every_kind())  # seqs 0..7
    assert log.indexed("c", kind="agent_reply") == [("main", 2), ("main", 3)]
    assert log.indexed("c", kind="tool_result") == [("main", 4), ("main", 5)]
    assert log.indexed("c", kind="started") == [("main", 0)]
    assert log.indexed("c", agent="boss") == [("main", 0), ("main", 2), ("main", 4), ("main", 5)]
    assert log.indexed("c", agent="worker") == [("main", 3)]
    assert log.indexed("c", kind="agent_reply", agent="boss") == [("main", 2)]
    assert log.indexed("c", kind="user_message", agent="boss") == []
    assert log.indexed("c", kind="nothing") == []
    assert log.indexed("c", agent="nobody") == []
    assert log.indexed("c") == []

    log.fork("c", "main", 4, "alt")  # alt inherits seqs 0..3 (owned by main); nothing re-indexed
    assert log.indexed("c", kind="agent_reply") == [("main", 2), ("main", 3)]
    log.append("c", "alt", [AgentReply(agent="worker", text="7"), UserMessage(text="u")])
    assert log.indexed("c", kind="agent_reply") == [("main", 2), ("main", 3), ("alt", 4)]
    assert log.indexed("c", agent="worker") == [("main", 3), ("alt", 4)]
    assert log.indexed("c", kind="user_message") == [("main", 1), ("alt", 5)]

    alt = log.branch("c", "alt")
    for branch, seq in log.indexed("c", kind="agent_reply"):  # refs resolve to the right events
        assert log.event("c", branch, seq).kind == "agent_reply"
    assert log.owner(alt, 3) == "main" and log.owner(alt, 4) == "alt"
    assert set(log.index_keys("c")) == {
        "kind:started",
        "kind:user_message",
        "kind:agent_reply",
        "kind:tool_result",
        "kind:failed",
        "kind:finished",
        "agent:boss",
        "agent:worker",
    }


# --- foreign or corrupted data ---------------------------------------------------------------------


def test_a_non_json_event_in_a_list(log: EventLog, conv: str) -> None:
    log.append("c", "main", said("a", "b"))
    key = log.keys.events(conv, "main")
    log.r.rpush(key, b"this is not json")
    log.r.hset(log.keys.branch(conv, "main"), "length", 3)
    assert texts(log.history("c", end=2)) == ["a", "b"]  # the good part still reads
    for read in (
        lambda: log.history("c"),
        lambda: log.event("c", None, 2),
        lambda: log.history("c", start=1),
    ):
        with pytest.raises(CorruptData) as e:
            read()
        assert key in e.value.key and "seq 2" in e.value.key
        assert key in str(e.value)


@pytest.mark.parametrize(
    "junk",
    [b"", b"[1, 2]", b'{"kind": "mystery", "seq": 2}', b'{"seq": 2, "kind": "user_message"}', b"\xff\xfe"],
)
def test_foreign_entries_in_a_list_are_corrupt_data(log: EventLog, conv: str, junk: bytes) -> None:
    log.append("c", "main", said("a", "b"))
    key = log.keys.events(conv, "main")
    log.r.rpush(key, junk)
    log.r.hset(log.keys.branch(conv, "main"), "length", 3)
    with pytest.raises(CorruptData) as e:
        log.history("c")
    assert key in str(e.value)


def test_a_foreign_entry_pushed_without_bumping_the_length(log: EventLog, conv: str) -> None:
    log.append("c", "main", said("a"))
    key = log.keys.events(conv, "main")
    log.r.rpush(key, b"junk")
    assert texts(log.history("c")) == ["a"]  # not part of the history (yet)
    log.append("c", "main", said("b"))  # now the list and the seqs disagree
    with pytest.raises(CorruptData) as e:
        log.history("c")
    assert key in str(e.value)


def test_an_event_carrying_the_wrong_seq(log: EventLog, conv: str) -> None:
    log.append("c", "main", said("a"))
    key = log.keys.events(conv, "main")
    log.r.rpush(key, b'{"seq": 7, "kind": "finished", "ts": 1.0}')
    log.r.hset(log.keys.branch(conv, "main"), "length", 2)
    with pytest.raises(CorruptData, match="seq 7") as e:
        log.history("c")
    assert key in str(e.value)


def test_a_list_shorter_than_its_branch_says(log: EventLog, conv: str) -> None:
    log.append("c", "main", said("a", "b"))
    log.r.rpop(log.keys.events(conv, "main"))
    with pytest.raises(CorruptData, match="found 1") as e:
        log.history("c")
    assert log.keys.events(conv, "main") in str(e.value)


def test_one_entry_holding_two_events_is_corrupt_data(log: EventLog, conv: str) -> None:
    log.append("c", "main", said("a"))
    log.r.rpush(
        log.keys.events(conv, "main"),
        b'{"seq":1,"kind":"finished","ts":1.0},{"seq":2,"kind":"finished","ts":1.0}',
    )
    log.r.hset(log.keys.branch(conv, "main"), "length", 2)
    with pytest.raises(CorruptData):
        log.history("c")


@pytest.mark.parametrize(
    "field, value",
    [
        ("lineage", None),
        ("length", None),
        ("fork_at", None),
        ("created", None),
        ("parent", None),
        ("length", b"many"),
        ("lineage", b"not json"),
        ("lineage", b'[["main", "x", 1, 0]]'),
        ("lineage", b"[1]"),
        ("lineage", b"null"),
        ("lineage", b'{"a": 1}'),
    ],
)
def test_a_broken_branch_record(log: EventLog, conv: str, field: str, value: bytes | None) -> None:
    log.append("c", "main", said("a"))
    log.fork("c", "main", 1, "alt")
    key = log.keys.branch(conv, "alt")
    if value is None:
        log.r.hdel(key, field)
    else:
        log.r.hset(key, field, value)
    for read in (
        lambda: log.branch("c", "alt"),
        lambda: log.branches("c"),
        lambda: log.history("c", "alt"),
        lambda: log.fork("c", "alt", 0, "g"),
    ):
        with pytest.raises(CorruptData) as e:
            read()
        assert e.value.key == key
        assert key in str(e.value)
    assert texts(log.history("c", "main")) == ["a"]  # the rest of the conversation is fine


def test_a_branch_listed_without_a_record(log: EventLog, conv: str) -> None:
    log.r.zadd(log.keys.branches(conv), {"ghost": time.time()})
    with pytest.raises(CorruptData) as e:
        log.branches("c")
    assert e.value.key == log.keys.branch(conv, "ghost")


def test_a_conversation_in_the_index_without_a_record(log: EventLog) -> None:
    log.create_conversation("boss", "real")
    log.r.zadd(log.keys.convs, {"ghost1234": time.time()})
    with pytest.raises(CorruptData, match="no record") as e:
        log.conversations()
    assert e.value.key == log.keys.conv("ghost1234")
    log.r.hset(log.keys.names, "phantom", "ghost5678")  # a name pointing nowhere
    for read in (lambda: log.branch("phantom"), lambda: log.conversation("phantom")):
        with pytest.raises(CorruptData) as e:
            read()
        assert e.value.key == log.keys.conv("ghost5678")


@pytest.mark.parametrize(
    "field, value",
    [("root", None), ("created", None), ("events", b"lots"), ("created", b"yesterday")],
)
def test_a_broken_conversation_record(log: EventLog, conv: str, field: str, value: bytes | None) -> None:
    key = log.keys.conv(conv)
    if value is None:
        log.r.hdel(key, field)
    else:
        log.r.hset(key, field, value)
    for read in (log.conversations, lambda: log.conversation("c")):
        with pytest.raises(CorruptData) as e:
            read()
        assert e.value.key == key


def _wrong_type(log: EventLog, key: str) -> None:
    log.r.delete(key)
    log.r.set(key, b"a string where p2e keeps something else")


WRONG_TYPE: dict[str, tuple[Callable[[EventLog, str], str], Callable[[EventLog], object]]] = {
    # name: (the key to break, given the conversation id; the call that must notice)
    "events list, read": (lambda lg, cid: lg.keys.events(cid, "main"), lambda lg: lg.history("c")),
    "branch hash, listed": (lambda lg, cid: lg.keys.branch(cid, "main"), lambda lg: lg.branches("c")),
    "branch hash, read": (lambda lg, cid: lg.keys.branch(cid, "main"), lambda lg: lg.branch("c")),
    "conversation index": (lambda lg, cid: lg.keys.convs, lambda lg: lg.conversations()),
    "name index": (lambda lg, cid: lg.keys.names, lambda lg: lg.conversation("c")),
    "branch index": (lambda lg, cid: lg.keys.branches(cid), lambda lg: lg.branches("c")),
    "snapshots": (
        lambda lg, cid: lg.keys.snapshots(cid, "main"),
        lambda lg: lg.load_snapshot(lg.branch("c")),
    ),
    "kind index": (
        lambda lg, cid: lg.keys.by_kind(cid, "user_message"),
        lambda lg: lg.indexed("c", kind="user_message"),
    ),
    "events list, append": (
        lambda lg, cid: lg.keys.events(cid, "main"),
        lambda lg: lg.append("c", "main", said("more")),
    ),
}


# Pipelined reads happen to name the key (redis-py quotes the failing command); the others do not.
@pytest.mark.parametrize("case", list(WRONG_TYPE))
def test_a_key_of_the_wrong_type_is_corrupt_data_naming_it(log: EventLog, conv: str, case: str) -> None:
    log.append("c", "main", said("a"))
    log.save_snapshot(conv, "main", 1, b"{}")
    which, call = WRONG_TYPE[case]
    key = which(log, conv)
    _wrong_type(log, key)
    with pytest.raises(CorruptData) as e:
        call(log)
    assert key in str(e.value)


def test_a_key_of_the_wrong_type_never_leaks_a_redis_error(log: EventLog, conv: str) -> None:
    log.append("c", "main", said("a"))
    log.save_snapshot(conv, "main", 1, b"{}")
    for which, call in WRONG_TYPE.values():
        key = which(log, conv)
        raw = log.r.dump(key)
        _wrong_type(log, key)
        with pytest.raises(CorruptData, match="wrong type"):
            call(log)
        log.r.delete(key)
        if raw is not None:
            log.r.restore(key, 0, raw)
    assert texts(log.history("c")) == ["a"]


def test_a_failed_append_on_a_foreign_key_writes_nothing(log: EventLog, conv: str) -> None:
    log.append("c", "main", said("a"))
    _wrong_type(log, log.keys.events(conv, "main"))
    before = dump(log.r, log.keys.ns)
    with pytest.raises(CorruptData):
        log.append("c", "main", [AgentReply(agent="boss", text="x")])
    assert dump(log.r, log.keys.ns) == before


def test_a_foreign_field_in_a_snapshot_hash(log: EventLog, conv: str) -> None:
    log.append("c", "main", said("a", "b"))
    log.save_snapshot(conv, "main", 1, b"{}")
    log.r.hset(log.keys.snapshots(conv, "main"), "latest", b"{}")
    with pytest.raises(CorruptData):
        log.load_snapshot(log.branch("c"))


def test_a_foreign_ref_in_the_index(log: EventLog, conv: str) -> None:
    log.append("c", "main", said("a"))
    log.r.rpush(log.keys.by_kind(conv, "user_message"), b"not-a-ref")
    with pytest.raises(CorruptData):
        log.indexed("c", kind="user_message")


def test_a_name_pointing_to_undecodable_bytes(log: EventLog) -> None:
    log.r.hset(log.keys.names, "weird", b"\xff\xfe")
    with pytest.raises(CorruptData):
        log.conversation("weird")


# --- the store going away --------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


CALLS_NEEDING_THE_STORE: dict[str, Callable[[EventLog], object]] = {
    "ping": lambda lg: lg.ping(),
    "create": lambda lg: lg.create_conversation("boss", "c"),
    "conversations": lambda lg: lg.conversations(),
    "conversation": lambda lg: lg.conversation("c"),
    "branch": lambda lg: lg.branch("c"),
    "branches": lambda lg: lg.branches("c"),
    "history": lambda lg: lg.history("c"),
    "append": lambda lg: lg.append("c", "main", said("x")),
    "append_to": lambda lg: lg.append_to("0123456789ab", "main", said("x")),
    "fork": lambda lg: lg.fork("c", "main", 0, "f"),
    "checkout": lambda lg: lg.checkout("c", "main"),
    "save_snapshot": lambda lg: lg.save_snapshot("0123456789ab", "main", 1, b"{}"),
    "indexed": lambda lg: lg.indexed("c", kind="agent_reply"),
}


def test_a_closed_port_raises_store_unavailable_naming_the_url() -> None:
    url = f"redis://127.0.0.1:{_closed_port()}"
    log = EventLog(url, "p2etest-nowhere")
    try:
        for name, call in CALLS_NEEDING_THE_STORE.items():
            with pytest.raises(StoreUnavailable) as e:
                call(log)
            assert e.value.url == url, name
            assert f"cannot reach the store at {url}" in str(e.value), name
    finally:
        log.close()
    with pytest.raises(StoreUnavailable, match=url):
        connect(url, "p2etest-nowhere")


@pytest.fixture
def not_redis() -> Iterator[str]:
    """A port answered by something that hangs up at once (not a Redis server)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except OSError:
                continue
            c.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield f"redis://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    t.join(5)
    srv.close()


def test_a_port_that_hangs_up_raises_store_unavailable(not_redis: str) -> None:
    log = EventLog(not_redis, "p2etest-nowhere")
    try:
        for call in (lambda: log.ping(), lambda: log.conversations(), lambda: log.history("c")):
            with pytest.raises(StoreUnavailable) as e:
                call()
            assert e.value.url == not_redis
    finally:
        log.close()


# --- the server dying mid-command ------------------------------------------------------------------


def _valkeys_serving(data_dir: Path) -> list[int]:
    """Live valkey processes whose working directory is `data_dir` (a server chdirs to its dir)."""
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            if (
                Path(os.readlink(p / "cwd")) == data_dir
                and "valkey" in os.readlink(p / "exe")
                and (p / "stat").read_text().split(") ", 1)[1][0] != "Z"
            ):
                pids.append(int(p.name))
        except (OSError, IndexError):
            continue
    return pids


def _wait_dead(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] == "Z":
                return
        except (OSError, IndexError):
            return
        time.sleep(0.02)
    raise AssertionError(f"pid {pid} still alive")


def _wait_loaded(url: str, timeout: float = 30.0) -> None:
    """Until the server has loaded its data (see test_server.py: ensure_embedded does not wait)."""
    r = redis.Redis.from_url(url, socket_timeout=5)
    deadline = time.monotonic() + timeout
    while r.info("persistence")["loading"] and time.monotonic() < deadline:
        time.sleep(0.01)
    r.close()


@pytest.fixture
def private_home(tmp_path: Path) -> Iterator[Path]:
    """A P2E_HOME of this test's own; every server that served it is stopped afterwards.

    By pid and SIGTERM rather than `stop_embedded`, which takes seconds (see test_server.py)."""
    home = tmp_path / "home"
    yield home
    for pid in _valkeys_serving((home / "valkey").resolve()):
        os.kill(pid, signal.SIGTERM)
        try:
            _wait_dead(pid)
        except AssertionError:
            os.kill(pid, signal.SIGKILL)


def test_the_server_dying_mid_append_loses_nothing_acknowledged(private_home: Path) -> None:
    info = ensure_embedded(private_home)
    ns, batch = "crash", 1000

    def events(b: int) -> list[Event]:
        return [AgentReply(agent=f"a{i % 3}", text=f"{b}:{i}:" + "x" * 100, ts=1.0) for i in range(batch)]

    log = EventLog(info.url, ns)
    cid = log.create_conversation("boss", "c").id
    acked: list[int] = []
    failures: list[BaseException] = []
    in_flight = threading.Event()

    def writer() -> None:
        own = EventLog(info.url, ns)
        script = own._append

        def traced(*args: object, **kwargs: object) -> object:
            if len(acked) >= 5:  # the sixth append is on its way to the server
                in_flight.set()
            return script(*args, **kwargs)

        own._append = traced  # type: ignore[assignment]
        try:
            for b in itertools.count():
                assert own.append_to(cid, "main", events(b)) == b * batch
                acked.append(b)
        except BaseException as e:  # the store going away ends the loop
            failures.append(e)
        finally:
            in_flight.set()
            own.close()

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    assert in_flight.wait(60)
    os.kill(info.pid, signal.SIGKILL)  # while an append is being sent or run
    t.join(60)
    assert not t.is_alive()
    assert len(failures) == 1 and isinstance(failures[0], StoreUnavailable), failures
    shown = mask_url(info.url)  # an error names the store without its password
    assert failures[0].url == shown and info.password not in str(failures[0])
    _wait_dead(info.pid)

    with pytest.raises(StoreUnavailable, match=re.escape(shown)):
        log.history(cid)
    with pytest.raises(StoreUnavailable, match=re.escape(shown)):
        log.append_to(cid, "main", said("after the crash"))
    log.close()

    again = ensure_embedded(private_home)  # same data dir; the append-only file replays
    assert again.pid != info.pid and again.data_dir == info.data_dir
    _wait_loaded(again.url)  # ensure_embedded may return while the server still loads (a bug)
    after = EventLog(again.url, ns)
    try:
        length = after.branch(cid, "main").length
        done = len(acked)
        assert done * batch <= length <= (done + 1) * batch  # every acknowledged append is there
        assert length % batch == 0  # and no half-written one
        assert after.history(cid) == [
            e for b in range(length // batch) for e in as_stored(events(b), b * batch)
        ]
        assert after.r.llen(after.keys.events(cid, "main")) == length
        assert after.conversation(cid).events == length
        assert len(after.indexed(cid, kind="agent_reply")) == length
        assert sum(len(after.indexed(cid, agent=f"a{i}")) for i in range(3)) == length
        assert after.append_to(cid, "main", said("still works")) == length
    finally:
        after.close()


def test_secrets_are_masked_before_they_are_stored(log: EventLog, monkeypatch: pytest.MonkeyPatch) -> None:
    from p2e.redact import MASK, refresh_secrets

    monkeypatch.setenv("ACME_API_KEY", "acme-secret-value-123")
    refresh_secrets()
    try:
        info = log.create_conversation("lead")
        leaked = "my key is sk-proj-ABCDEFGHIJKLMNOPQRSTUV and acme-secret-value-123"
        log.append_to(info.id, "main", [Started(root="lead", team={"lead": ()}), UserMessage(text=leaked)])
        stored = log.history(info.id)[1].text  # type: ignore[union-attr]
        assert "sk-proj-ABCD" not in stored and "acme-secret" not in stored
        assert stored == f"my key is {MASK} and {MASK}"
    finally:
        monkeypatch.delenv("ACME_API_KEY")
        refresh_secrets()
