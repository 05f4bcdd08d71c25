"""Hostile amounts at every edge that moves money: a model's tool call (JSON arguments, through
the tool runner, on the embedded ledger) and the CLI. Each is refused with a message saying what
to write, as an error the model reads (the conversation goes on), and nothing moves."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from conftest import Cli

from p2e.events import ToolCall, ToolResult
from p2e.ledger import EmbeddedLedger, units
from p2e.store import EventLog
from p2e.tools import Registry, ToolContext, run_call

u = units
START = {"alice": u(100), "bob": u(100)}

HOSTILE = [  # the amount as a model writes it in its JSON arguments, and what the error says
    ("true", "is not an amount"),
    ("false", "is not an amount"),
    ("null", "is not an amount"),
    ("3.0", "is a float"),
    ("12.5", "is a float"),
    ("1e400", "is a float"),  # json reads it as inf
    ("-0.0", "is a float"),
    ("[5]", "is a list, not an amount"),
    ("[[5]]", "is a list, not an amount"),
    ('{"units": 5}', "is a dict, not an amount"),
    ('{"amount": {"amount": "5"}}', "is a dict, not an amount"),
    ("[" + "1," * 5000 + "1]", "is a list, not an amount"),
    ("100000001", "is too large"),
    ('"100000000.0000000001"', "is too large"),
    ("1" + "0" * 40, "is too large"),
    ("-5", "is negative"),
    ('"-5"', "is negative"),
    ("0", "is zero"),
    ('"0.0"', "is zero"),
    ('" 5"', "has spaces around it; write the amount alone, e.g. '5'"),
    ('"5 "', "has spaces around it"),
    ('"5\\n"', "has spaces around it"),
    ('"5\\t"', "has spaces around it"),
    ('"5 5"', "has separators"),
    ('"1e3"', "uses an exponent"),
    ('"NaN"', "is not a number"),
    ('"0x10"', "is not a decimal amount"),
    ('"\uff15"', "is not a decimal amount"),  # a full-width 5
    ('""', "is not a decimal amount"),
    ('"5.0.0"', "is not a decimal amount"),
    ('"0.00000000001"', "more than 10 decimal places"),
]


@pytest.fixture
def ledger(log: EventLog) -> Iterator[EmbeddedLedger]:
    led = EmbeddedLedger(log.url, log.keys.ns)
    for w in START:
        led.open_wallet(w)
        led.mint(w, START[w], reason="start", command_id=f"fund-{w}")
    yield led
    led.close()


def call_tool(lt: ModuleType, log: EventLog, name: str, arguments: str) -> ToolResult:
    """The tool as a model calls it: JSON argument text, decoded as the providers do, then the runner."""
    ctx = ToolContext(conversation="conv1", agent="alice", branch="main", store=log)
    call = ToolCall(id="c1", name=name, arguments=json.loads(arguments))
    registry = Registry([getattr(lt, n) for n in lt.LEDGER_TOOLS])
    return asyncio.run(run_call(registry, call, ctx, allowed=lt.LEDGER_TOOLS))


def _args(tool: str, amount: str) -> str:
    payee = '"to": "bob", "reason": "r"' if tool == "transfer" else '"agent": "bob", "work": "w"'
    return f'{{{payee}, "amount": {amount}}}'


@pytest.mark.parametrize("tool", ["transfer", "reward"])
@pytest.mark.parametrize(("amount", "says"), HOSTILE, ids=[h[0][:20] for h in HOSTILE])
def test_a_hostile_amount_is_a_tool_error_and_moves_nothing(
    ledger: EmbeddedLedger, log: EventLog, ledger_tools: ModuleType, tool: str, amount: str, says: str
) -> None:
    journal = ledger.audit(0, 100)
    out = call_tool(ledger_tools, log, tool, _args(tool, amount))
    assert out.is_error and says in out.output, out.output
    assert out.output.startswith(f"invalid arguments for {tool}: amount: ") and len(out.output) < 600
    assert ledger.snapshot() == START
    assert ledger.audit(0, 100) == journal


@pytest.mark.parametrize("tool", ["transfer", "reward"])
@pytest.mark.parametrize(("amount", "paid"), [("5", "5"), ('"5"', "5"), ('"12.5"', "12.5"), ('"0.5"', "0.5")])
def test_an_integer_or_a_decimal_string_pays_exactly_that(
    ledger: EmbeddedLedger, log: EventLog, ledger_tools: ModuleType, tool: str, amount: str, paid: str
) -> None:
    out = call_tool(ledger_tools, log, tool, _args(tool, amount))
    assert not out.is_error and json.loads(out.output)["paid"] == paid, out.output
    assert ledger.snapshot() == {"alice": u(100) - u(paid), "bob": u(100) + u(paid)}


def test_the_model_is_told_both_forms(ledger_tools: ModuleType) -> None:
    prop = ledger_tools.transfer.spec.parameters["properties"]["amount"]
    assert prop["anyOf"] == [{"type": "string"}, {"type": "integer"}] and "'12.5'" in prop["description"]


# --- the CLI -----------------------------------------------------------------------------------------


@pytest.fixture
def cli_ledger(tmp_path: Path, store_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, cli: Cli) -> Cli:
    path = tmp_path / "agents.yaml"
    path.write_text("agents:\n  planner: {model: mock/default}\n  writer: {model: mock/default}\n")
    monkeypatch.setenv("P2E_AGENTS", str(path))
    assert cli("ledger", "init", "--balance", "100")[0] == 0
    return cli


@pytest.mark.parametrize("amount", [" 5", "5 ", "5\n", "\t5", "5 \n"])
@pytest.mark.parametrize("command", ["transfer", "mint"])
def test_the_cli_refuses_an_amount_with_whitespace(
    cli_ledger: Cli, log: EventLog, command: str, amount: str
) -> None:
    who = ("planner", "writer") if command == "transfer" else ("writer",)
    code, out, err = cli_ledger("ledger", command, *who, amount, "--reason", "r")
    assert code == 2 and "Traceback" not in err, (out, err)
    says = f"amount {amount!r} has spaces around it; write the amount alone, e.g. '5'"
    assert says in " ".join(err.split())
    assert EmbeddedLedger(log.url, log.keys.ns).snapshot() == {"planner": u(100), "writer": u(100)}
