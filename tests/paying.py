"""The paying rollout that the fault tests use: `experiments/payment_sweep.yaml` with its mock
models slowed so that payments are in flight when a fault hits, and the check that its
accounting holds to the unit afterwards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from p2e.ledger import open_ledger_on, units
from p2e.rollouts.store import Row
from p2e.store import EventLog

ROOT = Path(__file__).resolve().parent.parent
FEES = {"baseline": 2, "rush": 5}
"""What the planner advances the writer in each episode, by variant."""


def write_paying_spec(
    tmp_path: Path, repeats: int, run: dict[str, Any], balance: int | None = None, latency_ms: int = 150
) -> Path:
    """The payment sweep with `repeats` (x 2 variants x 3 scenarios), `run` settings, each
    agent's starting `balance`, its mock models taking `latency_ms` a call."""
    mock = tmp_path / "mock"
    mock.mkdir()
    for name in ("pay", "pay-rush"):
        rules = yaml.safe_load((ROOT / f"experiments/mock/{name}.yaml").read_text())
        (mock / f"{name}.yaml").write_text(yaml.safe_dump({**rules, "latency_ms": latency_ms}))
    spec = yaml.safe_load((ROOT / "experiments/payment_sweep.yaml").read_text())
    spec["agents"]["providers"]["mock"]["rules_dirs"] = [str(mock)]
    spec["repeats"] = repeats
    spec["run"] = run
    if balance is not None:
        spec["ledger"]["balance"] = balance
    path = tmp_path / "payment_sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def signed(delta: str) -> int:
    """A row's signed delta (`-2`, `+5`) in minor units."""
    return -units(delta[1:]) if delta.startswith("-") else units(delta.lstrip("+") or "0")


def assert_accounted(
    rows: list[Row], payout: dict[str, Any], log: EventLog, episodes: int, balance: int
) -> None:
    """Every episode done; rows + payout == journal, to the unit; each episode paid its fee
    exactly once, whatever was retried or resumed."""
    assert len(rows) == episodes and all(r.status == "done" for r in rows), [r.error for r in rows]
    for r in rows:
        fee = FEES[r.variant]
        assert r.ledger_deltas == {"planner": f"-{fee}", "writer": f"+{fee}"}, (r.episode, r.abandoned)
    paid = payout["paid"]
    ledger = open_ledger_on(log)
    try:
        for wallet in ("planner", "writer"):
            moved = sum(signed(r.ledger_deltas.get(wallet, "0")) for r in rows)
            expected = units(balance) + moved + units(paid.get(wallet, "0"))
            assert ledger.balance(wallet) == expected, wallet
        advances = [e for e in ledger.audit() if e.kind == "transfer" and e.cid.startswith("tool:")]
        assert len(advances) == episodes  # one advance per episode, retries and resumes included
        assert sum(e.amount for e in advances) == units(sum(FEES[r.variant] for r in rows))
        assert ledger.verify().ok
    finally:
        ledger.close()
