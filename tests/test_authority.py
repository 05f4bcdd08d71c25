"""The machine is the only authority: no tool runs unless the machine accepted the reply that asked
for it. Driven through the real runtime (the local driver, its agent runners, the mock model) on
the real store and the embedded ledger: an agent that asks to pay while passing a limit moves no
money, and its conversation ends `failed` with the limit's code instead of being left running.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import p2e.api
from p2e.events import Failed, ToolResult
from p2e.ledger import EmbeddedLedger, units
from p2e.store import EventLog

AGENTS = """
agents:
  alice:
    model: mock/payer
    persona: "You are alice."
    tools: [transfer]
tool_modules: [p2e.tools.ledger]
limits: {{{limits}}}
providers:
  mock:
    rules:
      payer:
        rules:
          - role: user
            tool_calls:
{calls}
          - role: tool
            text: "paid: {{{{ results | join(' | ') }}}}"
        default: "nothing to do"
"""

PAY = '              - {name: transfer, arguments: {to: bob, amount: "5", reason: "for the report"}}\n'


@pytest.fixture
def ledger(log: EventLog) -> Iterator[EmbeddedLedger]:
    led = EmbeddedLedger(log.url, log.keys.ns)
    for w in ("alice", "bob"):
        led.open_wallet(w)
    led.mint("alice", units(100), reason="start", command_id="fund-alice")
    yield led
    led.close()


def run(tmp_path: Path, store_url: str, namespace: str, limits: str, payments: int) -> tuple[str, str | None]:
    agents = tmp_path / "agents.yaml"
    agents.write_text(AGENTS.format(limits=limits, calls=PAY * payments))
    chat = p2e.api.local_chat("alice", "pay", agents=agents, store_url=store_url, namespace=namespace)
    try:
        result = chat.send("pay bob 5 for the report")
    finally:
        chat.close()
    return result.status, result.error


@pytest.mark.parametrize(
    ("limits", "payments", "code"),
    [
        ("max_tokens: 5", 1, "budget"),  # the reply alone passes the token budget
        ("max_tokens: 100000", 1, None),  # the control: under the budget, it pays
        ("max_tool_calls_per_turn: 2", 3, "max_tool_calls"),
    ],
)
def test_a_reply_that_passes_a_limit_pays_nothing_and_fails(
    ledger: EmbeddedLedger,
    log: EventLog,
    store_url: str,
    namespace: str,
    tmp_path: Path,
    ledger_tools: ModuleType,
    limits: str,
    payments: int,
    code: str | None,
) -> None:
    status, error = run(tmp_path, store_url, namespace, limits, payments)
    events = log.history("pay")
    paid = [e for e in events if isinstance(e, ToolResult) and e.name == "transfer"]
    if code is None:  # the control: the same reply under the limit pays once
        assert status == "idle" and error is None
        assert ledger.snapshot() == {"alice": units(95), "bob": units(5)}
        assert len(paid) == 1 and not paid[0].is_error
        return
    assert status == "failed" and error is not None and error.startswith(f"{code}: ")
    assert ledger.snapshot() == {"alice": units(100), "bob": 0}
    assert paid == []
    assert [e.kind for e in events] == ["started", "user_message", "agent_reply", "failed"]
    last = events[-1]
    assert isinstance(last, Failed) and last.code == code
    assert log.branch(log.resolve("pay")).length == len(events)
    assert ledger.verify().ok
