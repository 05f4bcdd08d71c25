"""The environment is read when a value is needed, through one settings model: a variable set
after import is seen, and a bad value fails on one line naming the variable."""

from __future__ import annotations

import pytest

from p2e.conversation import Conversation
from p2e.errors import InvalidArgument
from p2e.events import AgentReply, UserMessage
from p2e.settings import settings
from p2e.store import connect


def test_a_variable_set_after_import_is_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P2E_SNAPSHOT_EVERY", "3")
    monkeypatch.setenv("P2E_LOG_FORMAT", "JSON")
    assert (settings().snapshot_every, settings().log_format) == (3, "json")
    monkeypatch.delenv("P2E_SNAPSHOT_EVERY")
    monkeypatch.setenv("P2E_NAMESPACE", "")  # empty counts as unset
    assert (settings().snapshot_every, settings().namespace) == (256, "p2e")


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("P2E_SNAPSHOT_EVERY", "lots", "P2E_SNAPSHOT_EVERY='lots': give a number of events, at least 1"),
        ("P2E_SNAPSHOT_EVERY", "0", "P2E_SNAPSHOT_EVERY='0': give a number of events"),
        ("P2E_DASHBOARD", "yes", "P2E_DASHBOARD='yes': use 1 (dashboard on) or 0 (off)"),
        ("P2E_LOG_FORMAT", "xml", "P2E_LOG_FORMAT='xml': use text or json"),
        ("P2E_CONFIRM_EPISODES", "-5", "P2E_CONFIRM_EPISODES='-5': give a number of episodes"),
    ],
)
def test_a_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(InvalidArgument) as e:
        settings()
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_the_store_namespace_comes_from_the_environment_at_connect(
    store_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("P2E_NAMESPACE", namespace)
    log = connect(store_url)
    try:
        assert log.keys.ns == namespace
        monkeypatch.setenv("P2E_SNAPSHOT_EVERY", "2")
        conv = Conversation.create(log, "boss", {"boss": []}, name="snaps")
        conv.submit(UserMessage(text="q"))
        conv.submit(AgentReply(agent="boss", text="a"))
        snap = log.load_snapshot(conv.branch)
        assert snap is not None and snap[0] == 2
    finally:
        log.close()
