"""Spending policies: what an agent may pay, checked before every payment from its wallet.

A policy is data in the store (`ns:ledger:policy`, one JSON per wallet), so the Wallet actor and
the tools running without Ray read the same one, whatever process they are in. The per-transfer
cap and the allowed payees are checked here; the per-episode budget is checked by the ledger
itself, atomically with the payment (`Budget`), so concurrent payments cannot overrun it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from p2e.errors import CorruptData
from p2e.ledger.amount import Amount, format_amount
from p2e.ledger.base import Budget, check_wallet_name, name_field
from p2e.ledger.errors import PolicyViolation
from p2e.store.replies import as_hash

if TYPE_CHECKING:
    from p2e.store import EventLog


class SpendingPolicy(BaseModel):
    """Limits on what a wallet's owner may pay. Amounts in units (`"12.5"`, `100`); None: no limit.

    ```yaml
    max_per_transfer: 10        # no single payment above 10
    budget_per_episode: "25.5"  # at most 25.5 paid in one episode (conversation)
    allowed_payees: [writer]    # only these wallets may be paid; omit for anyone
    ```
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_per_transfer: Amount | None = None
    budget_per_episode: Amount | None = None
    allowed_payees: tuple[str, ...] | None = None

    @field_validator("allowed_payees")
    @classmethod
    def _names(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is not None:
            for name in v:
                name_field(name, "payee")
        return v

    def check(self, payer: str, payee: str, amount: int) -> None:
        """Raise `PolicyViolation` if `payer` may not pay `amount` to `payee` in one transfer."""
        if self.allowed_payees is not None and payee not in self.allowed_payees:
            allowed = ", ".join(self.allowed_payees) or "nobody"
            raise PolicyViolation(
                f"wallet {payer!r} may not pay {payee!r}: its spending policy allows payments to {allowed}"
            )
        if self.max_per_transfer is not None and amount > self.max_per_transfer:
            raise PolicyViolation(
                f"wallet {payer!r} may pay at most {format_amount(self.max_per_transfer)} in one transfer "
                f"(asked: {format_amount(amount)}); pay less"
            )

    def budget(self, episode: str | None) -> Budget | None:
        """The ledger-side count (and limit) of what is spent in `episode`; None outside one."""
        if not episode:
            return None
        return Budget(scope=episode, limit=self.budget_per_episode)


UNLIMITED = SpendingPolicy()


class PolicyStore:
    """Policies by wallet, in the store."""

    def __init__(self, store: EventLog):
        self.r = store.r  # (`get` runs on every payment: one HGET, no wrapper)
        self.key = store.keys.ledger.policy

    def get(self, wallet: str) -> SpendingPolicy:
        raw = self.r.hget(self.key, wallet)
        if raw is None:
            return UNLIMITED
        try:
            return SpendingPolicy.model_validate_json(raw)
        except ValidationError as e:
            raise CorruptData(
                f"{self.key} ({wallet})", f"not a spending policy ({e.errors()[0]['msg']})"
            ) from e

    def set(self, wallet: str, policy: SpendingPolicy) -> None:
        check_wallet_name(wallet)
        self.r.hset(self.key, wallet, policy.model_dump_json(exclude_none=True))

    def all(self) -> dict[str, SpendingPolicy]:
        out = {}
        for k, v in as_hash(self.r.hgetall(self.key)).items():
            try:
                out[k.decode()] = SpendingPolicy.model_validate(json.loads(v))
            except (ValueError, ValidationError) as e:
                raise CorruptData(f"{self.key} ({k!r})", f"not a spending policy ({e})") from e
        return out
