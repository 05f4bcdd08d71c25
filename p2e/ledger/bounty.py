"""The ledger side of a rollout: starting balances, policies, a bounty in escrow, the payout.

A rollout spec's `ledger:` section is a `LedgerConfig`. The rollout (`p2e.rollouts.money`) builds
a `RolloutLedger`, calls `setup()` before the first episode and `pay_out(...)` once every score is
in: the sponsor's bounty, locked in escrow at setup, goes to the agents of the best variant (split
equally), or back to the sponsor when no variant scored. Every command id is derived from the
rollout id, so a resumed rollout funds nothing twice and pays out once.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from p2e.errors import InvalidArgument
from p2e.ledger.amount import Amount, split
from p2e.ledger.base import Ledger, Receipt, check_wallet_name, name_field
from p2e.ledger.errors import CommandConflict, EscrowClosed
from p2e.ledger.policy import PolicyStore, SpendingPolicy


class PayoutRule(BaseModel):
    """Who gets the bounty: the agents of the best variant by `metric`, in equal shares."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rule: Literal["best_variant"] = "best_variant"
    metric: str | None = None
    """The score that ranks variants; default: the rollout's primary metric."""
    split: Literal["equal"] = "equal"
    ties: Literal["split", "refund"] = "split"
    """Several variants share the best score: pay all their agents, or refund the sponsor."""
    min_score: float | None = None
    """Below this best score nobody is paid and the sponsor is refunded."""


class LedgerConfig(BaseModel):
    """A rollout spec's `ledger:` section. Amounts in units (`100`, `"12.5"`).

    ```yaml
    ledger:
      balance: 100                      # every agent's starting balance (minted once per rollout)
      balances: {writer: 20}            # per agent, over `balance`
      policy: {max_per_transfer: 10}    # every agent's spending policy ...
      policies: {planner: {allowed_payees: [writer]}}   # ... or per agent
      sponsor: sponsor                  # pays the bounty; its wallet is funded with it
      arbiter: judge                    # the party that releases the bounty
      bounty: 30
      payout: {rule: best_variant, split: equal}
    ```
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: Literal["embedded", "canton"] | None = None
    """None: what the store's namespace records (`p2e ledger init`), else embedded."""
    url: str | None = None
    balance: Amount = 0
    balances: dict[str, Amount] = {}
    policy: SpendingPolicy | None = None
    policies: dict[str, SpendingPolicy] = {}
    sponsor: str | None = None
    sponsor_balance: Amount | None = None
    """Minted to the sponsor at setup; default: the bounty."""
    arbiter: str = "arbiter"
    bounty: Amount = 0
    payout: PayoutRule = PayoutRule()

    @field_validator("balances", "policies")
    @classmethod
    def _wallet_keys(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name in v:
            name_field(name, "agent")
        return v

    @field_validator("sponsor", "arbiter")
    @classmethod
    def _party(cls, v: str | None) -> str | None:
        return v if v is None else name_field(v, "party")

    @model_validator(mode="after")
    def _bounty(self) -> LedgerConfig:
        if self.bounty and not self.sponsor:
            raise ValueError("a bounty needs a sponsor: name the wallet that pays it (`sponsor: ...`)")
        if self.sponsor is not None and self.sponsor == self.arbiter:
            raise ValueError("the sponsor and the arbiter must be different parties")
        return self

    def starting_balance(self, agent: str) -> int:
        return self.balances.get(agent, self.balance)

    def policy_of(self, agent: str) -> SpendingPolicy | None:
        return self.policies.get(agent, self.policy)


class Payout(BaseModel):
    """What `pay_out` did."""

    model_config = ConfigDict(frozen=True)

    escrow: str
    winners: tuple[str, ...]
    """The best variant(s); empty when the bounty went back to the sponsor."""
    payouts: dict[str, int]
    """Wallet -> minor units paid (the sponsor's refund included)."""
    refunded: bool
    receipt: Receipt | None = None
    """None when the escrow had been settled already (a resumed rollout)."""


def payout_plan(
    amount: int,
    variant_scores: Mapping[str, float | None],
    variant_agents: Mapping[str, Iterable[str]],
    rule: PayoutRule = PayoutRule(),
) -> tuple[list[str], dict[str, int]]:
    """(winning variants, wallet -> amount) for a bounty of `amount`; ([], {}) means refund.

    The best variant is the one with the highest score (None and NaN never win). Its agents
    share `amount` equally, to the minor unit (`split`: the first in name order take the
    remainder). On a tie, `rule.ties` says: pay the agents of all tied variants, or refund.
    """
    scored = {v: s for v, s in variant_scores.items() if s is not None and not math.isnan(s)}
    if not scored or amount <= 0:
        return [], {}
    best = max(scored.values())
    if rule.min_score is not None and best < rule.min_score:
        return [], {}
    winners = sorted(v for v, s in scored.items() if s == best)
    if len(winners) > 1 and rule.ties == "refund":
        return [], {}
    agents = sorted({a for v in winners for a in variant_agents.get(v, ())})
    if not agents:
        raise InvalidArgument(f"the best variant(s) {', '.join(winners)} have no agents to pay")
    return winners, dict(zip(agents, split(amount, len(agents)), strict=True))


def deltas(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    """Balance changes by wallet (minor units), zeros left out."""
    out = {w: after.get(w, 0) - before.get(w, 0) for w in sorted(set(before) | set(after))}
    return {w: d for w, d in out.items() if d}


class RolloutLedger:
    """One rollout's wallets and bounty on a ledger: setup (balances, policies, escrow), the payout."""

    def __init__(
        self,
        ledger: Ledger,
        config: LedgerConfig,
        rollout_id: str,
        agents: Iterable[str],
        policies: PolicyStore | None = None,
    ):
        self.ledger = ledger
        self.config = config
        self.rid = rollout_id
        self.agents = sorted({check_wallet_name(a, "agent") for a in agents})
        self.policies = policies
        digest = hashlib.sha1(rollout_id.encode()).hexdigest()[:16]
        self.escrow_id = f"bounty-{digest}"
        self._tag = f"rollout:{digest}"

    @property
    def wallets(self) -> list[str]:
        return sorted({*self.agents, *([self.config.sponsor] if self.config.sponsor else [])})

    def setup(self) -> dict[str, int]:
        """Open the wallets, set the policies, fund the starting balances, lock the bounty;
        return the balances after. Safe to call again for the same rollout (nothing twice)."""
        c, led = self.config, self.ledger
        for w in self.wallets:
            led.open_wallet(w)
        led.allocate_party(c.arbiter)
        if self.policies is not None:
            for a in self.agents:
                policy = c.policy_of(a)
                if policy is not None:
                    self.policies.set(a, policy)
        for a in self.agents:
            amount = c.starting_balance(a)
            if amount:
                led.mint(
                    a,
                    amount,
                    reason=f"starting balance, rollout {self.rid}",
                    command_id=f"{self._tag}:fund:{a}",
                )
        if c.sponsor and c.bounty:
            funding = c.bounty if c.sponsor_balance is None else c.sponsor_balance
            if funding:
                led.mint(
                    c.sponsor,
                    funding,
                    reason=f"bounty funds, rollout {self.rid}",
                    command_id=f"{self._tag}:sponsor",
                )
            led.escrow_lock(
                c.sponsor,
                c.bounty,
                arbiter=c.arbiter,
                escrow_id=self.escrow_id,
                command_id=f"{self._tag}:lock",
                memo=f"bounty of rollout {self.rid}",
            )
        return self.balances()

    def balances(self) -> dict[str, int]:
        """Balances of this rollout's wallets."""
        snap = self.ledger.snapshot()
        return {w: snap.get(w, 0) for w in self.wallets}

    def pay_out(
        self,
        variant_scores: Mapping[str, float | None],
        variant_agents: Mapping[str, Iterable[str]],
    ) -> Payout | None:
        """Settle the bounty by the payout rule; None when there is no bounty. Called again with
        the same scores it answers with the original receipt (`receipt.replayed`); once settled
        on other scores it moves nothing and says so (`receipt=None`, no payouts)."""
        c = self.config
        if not (c.sponsor and c.bounty):
            return None
        info = self.ledger.escrow(self.escrow_id)
        winners, pays = payout_plan(info.amount, variant_scores, variant_agents, c.payout)
        try:
            if pays:
                receipt = self.ledger.escrow_release(
                    self.escrow_id, pays, arbiter=c.arbiter, command_id=f"{self._tag}:payout"
                )
            else:
                receipt = self.ledger.escrow_refund(
                    self.escrow_id, arbiter=c.arbiter, command_id=f"{self._tag}:refund"
                )
        except (EscrowClosed, CommandConflict):  # settled before, maybe on other scores: it stands
            return Payout(escrow=self.escrow_id, winners=(), payouts={}, refunded=info.state == "refunded")
        paid = {w: d for w, d, _ in receipt.entry.moves}
        return Payout(
            escrow=self.escrow_id, winners=tuple(winners), payouts=paid, refunded=not pays, receipt=receipt
        )
