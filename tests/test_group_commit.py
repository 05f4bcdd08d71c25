"""The group commit and its RESP pipeline, against the real server (embedded Valkey, and stock
Redis when CI sets P2E_TEST_REDIS_URL)."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest
import redis
import uvloop

from p2e.conversation import Conversation
from p2e.errors import Conflict, StoreError, StoreUnavailable
from p2e.events import UserMessage
from p2e.store import EventLog
from p2e.store.aio import GroupCommit
from p2e.store.resp import Pipe, pack


def test_pack_encodes_bulk_strings_and_refuses_what_it_cannot_send() -> None:
    assert pack([["SET", "k", b"v\r\n", 7, 1.5]]) == (
        b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n$1\r\n7\r\n$3\r\n1.5\r\n"
    )
    with pytest.raises(TypeError, match="cannot send NoneType"):
        pack([["SET", "k", None]])


def test_concurrent_appends_are_grouped_and_each_lands_in_order(
    store_url: str, namespace: str, log: EventLog
) -> None:
    convs = [Conversation.create(log, "a", {"a": ()}) for _ in range(50)]

    async def go() -> GroupCommit:
        w = GroupCommit(store_url, namespace)

        async def talk(c: Conversation) -> None:
            for i in range(5):
                await w.append(c.id, "main", [UserMessage(text=f"{c.id} {i}")], expected=1 + i)

        await asyncio.gather(*(talk(c) for c in convs))
        await w.close()
        return w

    w = asyncio.run(go())
    assert w.appends == 250 and w.batches <= 25  # shared: 10 or more appends per round trip
    for c in convs:
        texts = [e.text for e in log.history(c.id)[1:]]
        assert texts == [f"{c.id} {i}" for i in range(5)]


def test_a_conflict_fails_only_its_own_append_and_errors_reach_the_caller(
    store_url: str, namespace: str, log: EventLog
) -> None:
    a, b = (Conversation.create(log, "a", {"a": ()}) for _ in range(2))
    log.r.set(f"{namespace}:plain", "x")

    async def go() -> list[object]:
        w = GroupCommit(store_url, namespace)
        try:
            return await asyncio.gather(
                w.append(a.id, "main", [UserMessage(text="stale")], expected=7),
                w.append(b.id, "main", [UserMessage(text="fine")], expected=1),
                w.command("HGET", f"{namespace}:plain", "f"),
                w.command("GET", f"{namespace}:plain"),
                w.command("HGET", f"{namespace}:nothing", "f"),
                return_exceptions=True,
            )
        finally:
            await w.close()

    stale, fine, wrongtype, value, missing = asyncio.run(go())
    assert isinstance(stale, Conflict) and "not the expected 7" in str(stale)
    assert fine == 1
    assert isinstance(wrongtype, redis.ResponseError) and "WRONGTYPE" in str(wrongtype)
    assert value == b"x" and missing is None
    assert [e.kind for e in log.history(b.id)] == ["started", "user_message"]
    assert len(log.history(a.id)) == 1


def test_the_script_is_loaded_again_after_the_server_forgets_it(
    store_url: str, namespace: str, log: EventLog
) -> None:
    c = Conversation.create(log, "a", {"a": ()})

    async def go() -> None:
        w = GroupCommit(store_url, namespace)
        await w.append(c.id, "main", [UserMessage(text="one")], expected=1)
        log.r.script_flush()
        await w.append(c.id, "main", [UserMessage(text="two")], expected=2)
        await w.close()

    asyncio.run(go())
    assert [e.text for e in log.history(c.id)[1:]] == ["one", "two"]


def test_a_missing_server_is_store_unavailable_naming_it() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    url = f"redis://127.0.0.1:{port}"

    async def go() -> None:
        w = GroupCommit(url)
        try:
            await w.append("c", "main", [UserMessage(text="x")])
        finally:
            await w.close()

    with pytest.raises(StoreUnavailable, match=str(port)):
        asyncio.run(go())


def test_a_server_that_never_answers_times_out_and_the_next_batch_reconnects() -> None:
    """Late replies must never be read as the next batch's: the connection is dropped."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []

    def accept() -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            accepted.append(conn)

    t = threading.Thread(target=accept, daemon=True)
    t.start()

    async def go() -> None:
        pipe = Pipe(f"redis://127.0.0.1:{port}", timeout=0.3)
        for _ in range(2):
            with pytest.raises(redis.TimeoutError, match=r"did not answer within 0\.3s"):
                await pipe.run([["PING"]])
        await pipe.aclose()

    try:
        asyncio.run(go())
        t.join(5)
        assert len(accepted) == 2  # the second batch opened a fresh connection
    finally:
        for s in accepted:
            s.close()
        listener.close()


def test_a_database_number_in_the_url_is_selected(store_url: str, namespace: str) -> None:
    key = f"{namespace}:db-check"

    async def go() -> None:
        pipe = Pipe(f"{store_url}/3")
        assert await pipe.run([["SET", key, "3"]]) == [b"OK"]
        await pipe.aclose()

    asyncio.run(go())
    r3 = redis.Redis.from_url(f"{store_url}/3")
    try:
        assert r3.get(key) == b"3"
        assert redis.Redis.from_url(store_url).get(key) is None
    finally:
        r3.delete(key)


def test_the_group_commit_runs_on_uvloop(store_url: str, namespace: str, log: EventLog) -> None:
    """Ray runs async actors (the supervisors) on uvloop whenever it is installed; the group
    commit once hung there (uvloop's transport is no `asyncio.Transport` subclass)."""
    convs = [Conversation.create(log, "a", {"a": ()}) for _ in range(20)]

    async def go() -> None:
        w = GroupCommit(store_url, namespace)
        appends = (w.append(c.id, "main", [UserMessage(text="on uvloop")], expected=1) for c in convs)
        await asyncio.wait_for(asyncio.gather(*appends), 10)
        assert await asyncio.wait_for(w.command("PING"), 5) == b"PONG"
        await w.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert isinstance(runner.get_loop(), uvloop.Loop)
        runner.run(go())
    for c in convs:
        assert [e.text for e in log.history(c.id)[1:]] == ["on uvloop"]


def test_an_argument_it_cannot_send_fails_at_the_call_and_nothing_else(
    store_url: str, namespace: str
) -> None:
    key = f"{namespace}:after-bad"

    async def go() -> None:
        w = GroupCommit(store_url, namespace)
        good = asyncio.ensure_future(w.command("SET", key, "1"))
        with pytest.raises(TypeError, match="cannot send NoneType"):
            await w.command("SET", key, None)
        assert await asyncio.wait_for(good, 5) == b"OK"
        await w.close()

    asyncio.run(go())
    assert redis.Redis.from_url(store_url).get(key) == b"1"


def test_a_failure_inside_the_writer_reaches_the_batch_and_the_next_batch_goes_out(
    store_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever goes wrong while a batch is sent, its callers get the error instead of waiting
    for ever, and the writer keeps serving."""

    async def go() -> None:
        w = GroupCommit(store_url, namespace)
        real = w._pipeline
        calls = []

        async def broken_once(batch: list) -> list[object]:
            calls.append(len(batch))
            if len(calls) == 1:
                raise RuntimeError("a bug in the writer")
            return await real(batch)

        monkeypatch.setattr(w, "_pipeline", broken_once)
        first = await asyncio.wait_for(
            asyncio.gather(w.command("PING"), w.command("PING"), return_exceptions=True), 5
        )
        assert [type(e) for e in first] == [RuntimeError, RuntimeError]
        assert await asyncio.wait_for(w.command("PING"), 5) == b"PONG"
        await w.close()

    asyncio.run(go())


def test_closing_fails_the_writes_still_pending(store_url: str, namespace: str) -> None:
    async def go() -> None:
        w = GroupCommit(store_url, namespace)
        pending = asyncio.ensure_future(w.command("PING"))
        await asyncio.sleep(0)  # queued; the writer has not sent it yet
        await w.close()
        with pytest.raises(StoreError, match="closed with this write pending"):
            await asyncio.wait_for(pending, 5)

    asyncio.run(go())
