"""`p2e ledger ...` in process, against the test store: what each command prints, that retries are
safe, and that mistakes end with one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Cli

from p2e.ledger import EmbeddedLedger, PolicyStore, SpendingPolicy, units
from p2e.store import EventLog

u = units

AGENTS = """
agents:
  planner: {model: mock/default}
  writer: {model: mock/default}
"""


def words(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def agents(tmp_path: Path, store_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "agents.yaml"
    path.write_text(AGENTS)
    monkeypatch.setenv("P2E_AGENTS", str(path))
    return path


@pytest.fixture
def ledger(log: EventLog) -> EmbeddedLedger:
    return EmbeddedLedger(log.url, log.keys.ns)


def test_init_opens_and_funds_every_agent_once(cli: Cli, agents: Path, ledger: EmbeddedLedger) -> None:
    code, out, err = cli("ledger", "init", "--balance", "100", "--wallet", "sponsor")
    assert code == 0, err
    assert "planner" in out and "sponsor" in out and "writer" in out
    assert ledger.snapshot() == {"planner": u(100), "sponsor": u(100), "writer": u(100)}
    code, out, _ = cli("ledger", "init", "--balance", "100")
    assert code == 0 and "already" in out
    assert ledger.snapshot()["planner"] == u(100)  # not minted twice


def test_balance_transfer_and_a_safe_retry(cli: Cli, agents: Path, ledger: EmbeddedLedger) -> None:
    cli("ledger", "init", "--balance", "100")
    code, out, _ = cli("ledger", "balance", "planner")
    assert (code, words(out)) == (0, "planner: 100")
    args = (
        "ledger",
        "transfer",
        "planner",
        "writer",
        "12.5",
        "--reason",
        "the draft",
        "--command-id",
        "pay-1",
    )
    code, out, err = cli(*args)
    assert code == 0, err
    text = words(out)
    assert "done" in text and "transfer 12.5 planner -> writer (the draft)" in text and "planner 87.5" in text
    code, out, _ = cli(*args)
    assert code == 0 and "already applied" in words(out)
    assert ledger.snapshot() == {"planner": u("87.5"), "writer": u("112.5")}
    code, out, _ = cli("ledger", "transfer", "planner", "writer", "1", "--reason", "no id")
    assert code == 0 and "command id cli-transfer-" in words(out)


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (("transfer", "planner", "writer", "--reason", "r", "--", "-5"), 2, "is negative"),
        (("transfer", "planner", "writer", "-5", "--reason", "r"), 2, "No such option: -5"),
        (("transfer", "planner", "writer", "0", "--reason", "r"), 2, "zero"),
        (("transfer", "planner", "writer", "NaN", "--reason", "r"), 2, "not a number"),
        (("transfer", "planner", "writer", "inf", "--reason", "r"), 2, "not a number"),
        (
            ("transfer", "planner", "writer", "0.00000000001", "--reason", "r"),
            2,
            "more than 10 decimal places",
        ),
        (("transfer", "planner", "writer", "1" + "0" * 30, "--reason", "r"), 2, "too large"),
        (("transfer", "planner", "writer", "1000", "--reason", "r"), 1, "holds 100, less than the 1000"),
        (("transfer", "planner", "planner", "1", "--reason", "r"), 2, "both 'planner'"),
        (("transfer", "planner", "nobody", "1", "--reason", "r"), 2, "no wallet 'nobody'"),
        (("balance", "nobody"), 2, "no wallet 'nobody'"),
        (("history", "nobody"), 2, "no wallet 'nobody'"),
        (("init", "--balance", "-1"), 2, "--balance '-1' is negative"),
        (("init", "--backend", "paper"), 2, "use embedded or canton"),
        (("init", "--backend", "canton"), 2, "needs a Ledger API URL"),
        (("policy", "planner", "--max-per-transfer", "1.5e3"), 2, "exponent"),
    ],
)
def test_mistakes_are_one_line_and_exit_non_zero(
    cli: Cli, agents: Path, ledger: EmbeddedLedger, args: tuple[str, ...], code: int, says: str
) -> None:
    cli("ledger", "init", "--balance", "100")
    got, out, err = cli("ledger", *args)
    assert got == code, (out, err)
    assert says in words(err) and "Traceback" not in err
    assert ledger.snapshot() == {"planner": u(100), "writer": u(100)}


def test_a_failed_init_records_no_backend(cli: Cli, agents: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("P2E_CANTON_URL", raising=False)
    cli("ledger", "init", "--backend", "canton")
    code, out, err = cli("ledger", "overview")
    assert code == 0, err
    assert "embedded ledger" in out


def test_history_overview_audit_metrics_verify(cli: Cli, agents: Path, ledger: EmbeddedLedger) -> None:
    cli("ledger", "init", "--balance", "100", "--wallet", "sponsor", "--wallet", "judge")
    for i in range(3):
        cli("ledger", "transfer", "planner", "writer", "1.5", "--reason", f"step {i}")
    ledger.escrow_lock("sponsor", u(40), arbiter="judge", escrow_id="bounty", command_id="lock", memo="best")
    code, out, _ = cli("ledger", "history", "writer", "-n", "2")
    assert code == 0 and "+1.5" in out and "balance: 104.5" in words(out)
    code, out, _ = cli("ledger", "overview")
    assert code == 0
    text = words(out)
    assert (
        "bounty" in text
        and "locked" in text
        and "supply 400 (minted 400, in escrow 40); 3 transfers, volume 4.5" in text
    )
    code, out, _ = cli("ledger", "audit", "--since", "4", "-n", "2")
    assert code == 0 and "journal from #4" in out and "mint" in out
    code, out, _ = cli("ledger", "metrics")
    assert code == 0 and "volume" in out and "4.5" in out
    code, out, _ = cli("ledger", "verify")
    assert code == 0 and "ok: 12 entries" in words(out)
    ledger.r.hset(ledger.keys.bal, "writer", u(1000))  # tampered with behind the ledger's back
    code, out, _ = cli("ledger", "verify")
    assert code == 1 and "does not verify" in words(out) and "wallet 'writer' holds" in words(out)


def test_policy_show_set_clear(cli: Cli, agents: Path, log: EventLog) -> None:
    code, out, _ = cli("ledger", "policy", "planner")
    assert code == 0 and "planner: no limit per transfer; no limit per episode; may pay anyone" in words(out)
    code, out, _ = cli(
        "ledger",
        "policy",
        "planner",
        "--max-per-transfer",
        "10",
        "--budget-per-episode",
        "25.5",
        "-p",
        "writer",
    )
    assert (
        code == 0
        and "planner: at most 10 per transfer; at most 25.5 per episode; may pay writer" in words(out)
    )
    assert PolicyStore(log).get("planner") == SpendingPolicy(
        max_per_transfer=10, budget_per_episode="25.5", allowed_payees=("writer",)
    )
    code, out, _ = cli("ledger", "policy", "planner", "--clear")
    assert code == 0 and "may pay anyone" in out


def test_help_shows_examples(cli: Cli) -> None:
    code, out, _ = cli("ledger", "--help")
    assert code == 0
    for command in ("init", "balance", "transfer", "history", "overview", "audit", "verify", "metrics"):
        assert command in out
    code, out, _ = cli("ledger", "transfer", "--help")
    assert code == 0 and "--command-id pay-draft-1" in words(out)
