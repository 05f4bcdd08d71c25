"""The ledger side of a rollout: the `ledger:` section, the payout rule, and `RolloutLedger` on the
real store (setup, snapshots, the bounty paid through escrow, resuming)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from p2e.errors import InvalidArgument
from p2e.ledger import (
    EmbeddedLedger,
    LedgerConfig,
    PayoutRule,
    PolicyStore,
    RolloutLedger,
    SpendingPolicy,
    deltas,
    payout_plan,
    units,
)
from p2e.store import EventLog

u = units

SECTION = {
    "balance": 100,
    "balances": {"writer": "20.5"},
    "policy": {"max_per_transfer": 10},
    "policies": {"planner": {"allowed_payees": ["writer"]}},
    "sponsor": "sponsor",
    "arbiter": "judge",
    "bounty": 30,
}


def test_the_ledger_section() -> None:
    c = LedgerConfig.model_validate(SECTION)
    assert c.starting_balance("writer") == u("20.5") and c.starting_balance("planner") == u(100)
    assert c.policy_of("planner") == SpendingPolicy(allowed_payees=("writer",))
    assert c.policy_of("writer") == SpendingPolicy(max_per_transfer=10)
    assert c.bounty == u(30) and c.payout == PayoutRule()
    assert LedgerConfig.model_validate_json(c.model_dump_json()) == c


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"sponsor": None}, "a bounty needs a sponsor"),
        ({"arbiter": "sponsor"}, "must be different"),
        ({"balance": 12.5}, "float"),
        ({"bounty": "-1"}, "negative"),
        ({"balances": {"not ok": 1}}, "not allowed"),
        ({"payout": {"rule": "worst_variant"}}, "best_variant"),
        ({"surprise": 1}, "Extra inputs"),
    ],
)
def test_bad_ledger_sections_name_the_field(change: dict, says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        LedgerConfig.model_validate(SECTION | change)


AGENTS = {"fast": ["planner", "writer"], "slow": ["planner", "researcher"], "odd": ["a", "b", "c"]}


def test_the_best_variants_agents_share_the_bounty() -> None:
    winners, pays = payout_plan(u(30), {"fast": 0.9, "slow": 0.4, "odd": None}, AGENTS)
    assert winners == ["fast"] and pays == {"planner": u(15), "writer": u(15)}
    _, pays = payout_plan(u(10), {"odd": 1.0}, AGENTS)
    assert sum(pays.values()) == u(10) and pays["a"] == pays["b"] + 1  # to the minor unit
    winners, pays = payout_plan(u(30), {"fast": 0.9, "slow": 0.9}, AGENTS)
    assert winners == ["fast", "slow"] and pays == {"planner": u(10), "researcher": u(10), "writer": u(10)}


@pytest.mark.parametrize(
    ("scores", "rule"),
    [
        ({}, PayoutRule()),
        ({"fast": None, "slow": math.nan}, PayoutRule()),
        ({"fast": 0.9, "slow": 0.9}, PayoutRule(ties="refund")),
        ({"fast": 0.4}, PayoutRule(min_score=0.5)),
    ],
)
def test_no_winner_means_a_refund(scores: dict, rule: PayoutRule) -> None:
    assert payout_plan(u(30), scores, AGENTS, rule) == ([], {})


def test_a_winner_without_agents_is_an_error() -> None:
    with pytest.raises(InvalidArgument, match="no agents"):
        payout_plan(u(30), {"ghost": 1.0}, AGENTS)


def test_deltas() -> None:
    assert deltas({"a": 5, "b": 1}, {"a": 2, "b": 1, "c": 3}) == {"a": -3, "c": 3}


@pytest.fixture
def ledger(log: EventLog) -> Iterator[EmbeddedLedger]:
    led = EmbeddedLedger(log.url, log.keys.ns)
    yield led
    led.close()


def test_a_rollout_funds_locks_and_pays_out_once(ledger: EmbeddedLedger, log: EventLog) -> None:
    config = LedgerConfig.model_validate(SECTION)
    policies = PolicyStore(log)
    bounty = RolloutLedger(ledger, config, "sweep-1", ["planner", "writer", "researcher"], policies)
    start = bounty.setup()
    assert start == {"planner": u(100), "researcher": u(100), "sponsor": 0, "writer": u("20.5")}
    assert bounty.setup() == start  # resumed: nothing funded twice
    assert ledger.escrow(bounty.escrow_id).state == "locked" and ledger.metrics().escrowed == u(30)
    assert policies.get("planner").allowed_payees == ("writer",)
    ledger.open_wallet("bystander")
    assert "bystander" not in bounty.balances()

    before = bounty.balances()
    ledger.transfer("planner", "writer", u(3), reason="help", command_id="ep-pay")
    assert deltas(before, bounty.balances()) == {"planner": -u(3), "writer": u(3)}

    scores = {"fast": 0.9, "slow": 0.2}
    agents = {"fast": ["planner", "writer"], "slow": ["planner", "researcher"]}
    paid = bounty.pay_out(scores, agents)
    assert paid is not None and paid.winners == ("fast",) and not paid.refunded
    assert paid.payouts == {"planner": u(15), "writer": u(15)}
    assert bounty.balances()["writer"] == u("38.5")
    again = bounty.pay_out(scores, agents)
    assert again is not None and again.receipt is not None and again.receipt.replayed
    changed = bounty.pay_out({"slow": 1.0}, agents)  # a resume that scored differently moves nothing
    assert changed is not None and changed.receipt is None and changed.payouts == {}
    assert ledger.snapshot()["researcher"] == u(100)
    assert ledger.verify().ok


def test_a_rollout_without_winner_refunds_the_sponsor(ledger: EmbeddedLedger) -> None:
    config = LedgerConfig.model_validate(SECTION | {"sponsor_balance": 50})
    bounty = RolloutLedger(ledger, config, "sweep-2", ["planner"])
    bounty.setup()
    assert ledger.balance("sponsor") == u(20)
    paid = bounty.pay_out({"fast": None}, {"fast": ["planner"]})
    assert paid is not None and paid.refunded and paid.payouts == {"sponsor": u(30)}
    assert ledger.balance("sponsor") == u(50)
    no_bounty = RolloutLedger(ledger, LedgerConfig(balance=1), "sweep-3", ["planner"])
    no_bounty.setup()
    assert no_bounty.pay_out({"fast": 1.0}, {"fast": ["planner"]}) is None
