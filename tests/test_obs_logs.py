"""Structured logs carry the ids of the work they are about; secrets never leave the process."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from p2e.errors import InvalidArgument
from p2e.events import AgentReply, ToolCall, encode, event_adapter
from p2e.obs import bind, configure_logging, log_context
from p2e.redact import MASK, RedactingFilter, Redactor, refresh_secrets

KEY = "sk-proj-AbCdEf0123456789GhIjKlMnOp"
ENV_SECRET = "tok_9f8e7d6c5b4a3210"


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A private logger with p2e's handler on it (the root logger is left alone)."""
    name = "p2e.test.obs"
    out = io.StringIO()
    lg = logging.getLogger(name)
    lg.propagate = False
    configure_logging("DEBUG", "json", stream=out, logger=name)
    yield lg, out
    for h in list(lg.handlers):
        lg.removeHandler(h)


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(x) for x in out.getvalue().splitlines()]


def test_json_lines_carry_the_ids_of_the_context(logger: tuple[logging.Logger, io.StringIO]) -> None:
    lg, out = logger
    with log_context(conversation="c1", branch="main"):
        lg.info("step %d stored", 3)
        with log_context(episode="e7", branch="b1"):  # inner ids add to and override outer ones
            lg.warning("slow model")
    lg.error("outside")
    a, b, c = lines(out)
    assert a["msg"] == "step 3 stored" and a["level"] == "INFO" and a["logger"] == "p2e.test.obs"
    assert (a["conversation"], a["branch"]) == ("c1", "main") and "episode" not in a
    assert (b["conversation"], b["branch"], b["episode"]) == ("c1", "b1", "e7")
    assert "conversation" not in c and str(c["ts"]).endswith("+00:00")


def test_ids_follow_asyncio_tasks_without_mixing(logger: tuple[logging.Logger, io.StringIO]) -> None:
    lg, out = logger

    async def turn(cid: str) -> None:
        with log_context(conversation=cid):
            await asyncio.sleep(0.01)  # both tasks are suspended here at once
            lg.info("answer from %s", cid)

    async def main() -> None:
        await asyncio.gather(turn("c1"), turn("c2"))

    asyncio.run(main())
    got = {(x["msg"], x["conversation"]) for x in lines(out)}
    assert got == {("answer from c1", "c1"), ("answer from c2", "c2")}


def test_bind_and_extra_ids(logger: tuple[logging.Logger, io.StringIO]) -> None:
    lg, out = logger
    with log_context(conversation="from-context"):
        bind(lg, rollout="r1", episode="e2").info("bound")
        lg.info("explicit", extra={"conversation": "from-extra"})
    a, b = lines(out)
    assert (a["rollout"], a["episode"], a["conversation"]) == ("r1", "e2", "from-context")
    assert b["conversation"] == "from-extra"
    with pytest.raises(InvalidArgument, match="unknown log id"):
        bind(lg, user="x")


def test_text_format_and_reconfiguring_replaces_the_handler() -> None:
    name = "p2e.test.obs.text"
    lg = logging.getLogger(name)
    lg.propagate = False
    first, second = io.StringIO(), io.StringIO()
    try:
        configure_logging("INFO", "text", stream=first, logger=name)
        configure_logging("INFO", "text", stream=second, logger=name)
        assert len(lg.handlers) == 1
        with log_context(conversation="c9", branch="main"):
            try:
                raise ValueError("boom")
            except ValueError:
                lg.exception("tool failed")
        text = second.getvalue()
        assert first.getvalue() == ""
        head, _, tb = text.partition("\n")
        assert head.endswith("ERROR p2e.test.obs.text: tool failed conversation=c9 branch=main")
        assert "ValueError: boom" in tb
        with pytest.raises(InvalidArgument, match="P2E_LOG_FORMAT"):
            configure_logging("INFO", "xml", logger=name)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument, match="P2E_LOG_LEVEL"):
            configure_logging("LOUD", logger=name)
    finally:
        for h in list(lg.handlers):
            lg.removeHandler(h)


def test_format_and_level_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    name = "p2e.test.obs.env"
    lg = logging.getLogger(name)
    lg.propagate = False
    out = io.StringIO()
    monkeypatch.setenv("P2E_LOG_FORMAT", "json")
    monkeypatch.setenv("P2E_LOG_LEVEL", "error")
    try:
        configure_logging(stream=out, logger=name)
        lg.warning("dropped")
        lg.error("kept")
        assert [x["msg"] for x in lines(out)] == ["kept"]
    finally:
        for h in list(lg.handlers):
            lg.removeHandler(h)


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("ACME_API_TOKEN", ENV_SECRET)
    monkeypatch.setenv("SHORT_TOKEN", "1")  # too short to be a secret: left alone
    refresh_secrets()
    yield
    monkeypatch.undo()
    refresh_secrets()


def test_logs_never_show_keys(secret_env: None, logger: tuple[logging.Logger, io.StringIO]) -> None:
    lg, out = logger
    lg.warning("calling with key %s", KEY)
    lg.info("env token %s in %r", ENV_SECRET, {"headers": {"Authorization": f"Bearer {ENV_SECRET}"}})
    try:
        raise RuntimeError(f"401: Incorrect API key provided: {KEY}")
    except RuntimeError:
        lg.exception("model call failed")
    with log_context(conversation=f"weird-{ENV_SECRET}"):
        lg.info("1 step")
    text = out.getvalue()
    assert KEY not in text and ENV_SECRET not in text
    recs = lines(out)
    assert recs[0]["msg"] == f"calling with key {MASK}"
    assert recs[1]["msg"].count(MASK) == 2  # type: ignore[union-attr]
    assert MASK in str(recs[2]["exc"]) and "RuntimeError" in str(recs[2]["exc"])
    assert recs[3]["msg"] == "1 step" and recs[3]["conversation"] == f"weird-{MASK}"


def test_redactor_patterns_and_values() -> None:
    r = Redactor(secrets=["vault-secret-42"], env={"OPENAI_API_KEY": "abcdefghij", "PATH": "/usr/bin"})
    assert r.text("key abcdefghij here") == f"key {MASK} here"
    assert r.text("vault-secret-42") == MASK
    assert r.text("gh token ghp_" + "a" * 36) == f"gh token {MASK}"
    assert r.text("AKIAABCDEFGHIJKLMNOP") == MASK
    assert r.text("/usr/bin and sk-short") == "/usr/bin and sk-short"  # not a key: left alone
    assert r.value({"args": ["x", ("abcdefghij",)], "n": 3}) == {"args": ["x", (MASK,)], "n": 3}
    r.add("late-secret-value")
    assert r.text("a late-secret-value") == f"a {MASK}"


def test_encoded_events_stay_valid_json_once_redacted() -> None:
    """The store's write path can mask an encoded event in place: it still parses."""
    event = AgentReply(
        agent="researcher",
        text=f"my key is {KEY}",
        tool_calls=(ToolCall(id="c1", name="http", arguments={"auth": f"Bearer {KEY}"}),),
    )
    raw = Redactor(env={}).data(encode(event))
    assert KEY.encode() not in raw
    back = event_adapter.validate_json(raw)
    assert isinstance(back, AgentReply)
    assert back.text == f"my key is {MASK}" and back.tool_calls[0].arguments["auth"] == f"Bearer {MASK}"
    clean = encode(AgentReply(agent="a", text="nothing secret"))
    assert Redactor(env={}).data(clean) is clean  # the common case costs one search, no copy


def test_filter_leaves_unformattable_records_to_logging() -> None:
    rec = logging.LogRecord("x", logging.INFO, __file__, 1, "%d items", ("not a number",), None)
    assert RedactingFilter(Redactor(env={})).filter(rec) is True
    assert rec.args == ("not a number",)  # logging itself reports the bad format, as usual
