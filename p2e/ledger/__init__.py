"""Agents' money: wallets on a ledger, with an audit trail. See docs/ledger.md.

```python
from p2e.ledger import open_ledger, units

ledger = open_ledger()                       # the store's ledger (embedded unless `init` chose Canton)
ledger.open_wallet("alice"); ledger.open_wallet("bob")
ledger.mint("alice", units(100), reason="start", command_id="fund-alice")
ledger.transfer("alice", "bob", units("12.5"), reason="for the report", command_id="pay-1")
ledger.snapshot()                            # {"alice": 875000000000, "bob": 125000000000}
assert ledger.verify().ok
```

Amounts are `int`s of minor units (10^-10, as Daml's `Decimal`); `units()` and `format_amount()`
convert. The Canton backend (`p2e.ledger.canton`) is imported only when used.
"""

from p2e.ledger.amount import (
    MAX_AMOUNT,
    SCALE,
    UNIT,
    Amount,
    check_minor,
    format_amount,
    parse_amount,
    split,
    units,
)
from p2e.ledger.base import (
    Budget,
    Entry,
    EscrowInfo,
    Ledger,
    LedgerMetrics,
    Receipt,
    VerifyReport,
    WalletInfo,
)
from p2e.ledger.bounty import LedgerConfig, Payout, PayoutRule, RolloutLedger, deltas, payout_plan
from p2e.ledger.embedded import EmbeddedLedger
from p2e.ledger.errors import (
    BalanceTampered,
    BudgetExceeded,
    CapExceeded,
    CommandConflict,
    EscrowClosed,
    InsufficientFunds,
    LedgerError,
    LedgerRejected,
    LedgerUnavailable,
    NotArbiter,
    PolicyViolation,
    UnknownEscrow,
    UnknownParty,
    UnknownWallet,
)
from p2e.ledger.policy import PolicyStore, SpendingPolicy
from p2e.ledger.settings import LedgerSettings, open_ledger, open_ledger_on
from p2e.ledger.wallet import PayRequest, Wallet, wallet_actor_name, wallet_for

__all__ = [
    "MAX_AMOUNT",
    "SCALE",
    "UNIT",
    "Amount",
    "BalanceTampered",
    "Budget",
    "BudgetExceeded",
    "CapExceeded",
    "CommandConflict",
    "EmbeddedLedger",
    "Entry",
    "EscrowClosed",
    "EscrowInfo",
    "InsufficientFunds",
    "Ledger",
    "LedgerConfig",
    "LedgerError",
    "LedgerMetrics",
    "LedgerRejected",
    "LedgerSettings",
    "LedgerUnavailable",
    "NotArbiter",
    "PayRequest",
    "Payout",
    "PayoutRule",
    "PolicyStore",
    "PolicyViolation",
    "Receipt",
    "RolloutLedger",
    "SpendingPolicy",
    "UnknownEscrow",
    "UnknownParty",
    "UnknownWallet",
    "VerifyReport",
    "Wallet",
    "WalletInfo",
    "check_minor",
    "deltas",
    "format_amount",
    "open_ledger",
    "open_ledger_on",
    "parse_amount",
    "payout_plan",
    "split",
    "units",
    "wallet_actor_name",
    "wallet_for",
]
