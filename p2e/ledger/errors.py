"""Ledger errors, in p2e's one hierarchy (`p2e.errors`), each saying what to do about it.

Both backends raise these: the embedded ledger from its scripts' error codes, the Canton backend
from the Ledger API's status codes and the Daml model's assertion codes (see `canton.py`).
"""

from __future__ import annotations

from typing import Any

from p2e.errors import Conflict, InvalidArgument, NotFound, P2EError
from p2e.redact import mask_url, mask_urls


def _rebuild(cls: type[Exception], args: tuple[Any, ...], state: dict[str, Any]) -> Exception:
    e = cls.__new__(cls)
    Exception.__init__(e, *args)
    e.__dict__.update(state)
    return e


class _Portable:
    """Errors with their own `__init__` arguments still pickle (they cross Ray: a Wallet actor's
    refusal reaches the tool as itself)."""

    args: tuple[Any, ...]  # the exception's, on the classes this is mixed into

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


class UnknownWallet(_Portable, NotFound):
    def __init__(self, wallet: str):
        super().__init__(
            f"no wallet {wallet!r} on the ledger; open it first (`p2e ledger init`, or "
            "ledger.open_wallet(name)); `p2e ledger overview` lists the wallets"
        )
        self.wallet = wallet


class UnknownParty(_Portable, NotFound):
    def __init__(self, party: str):
        super().__init__(
            f"no party {party!r} on the ledger; allocate it first (ledger.allocate_party(name), "
            "or open a wallet for it)"
        )
        self.party = party


class UnknownEscrow(_Portable, NotFound):
    def __init__(self, escrow: str):
        super().__init__(f"no escrow {escrow!r} on the ledger; `p2e ledger overview` lists the escrows")
        self.escrow = escrow


class LedgerRejected(_Portable, P2EError):
    """A well-formed command that the ledger's rules refuse (nothing was applied)."""


class InsufficientFunds(LedgerRejected):
    def __init__(self, wallet: str, balance: str, amount: str, message: str | None = None):
        super().__init__(
            message
            or f"wallet {wallet!r} holds {balance}, less than the {amount} asked for; "
            "pay less, or fund the wallet first"
        )
        self.wallet, self.balance, self.amount = wallet, balance, amount


class CapExceeded(LedgerRejected):
    def __init__(self, minted: str, cap: str, amount: str, message: str | None = None):
        super().__init__(
            message
            or f"minting {amount} would take the supply past the faucet's cap of {cap} "
            f"({minted} minted so far); mint less, or raise the cap (`p2e ledger init --cap`)"
        )


class PolicyViolation(LedgerRejected):
    """The wallet owner's spending policy forbids this payment (cap, budget, payee)."""


class BudgetExceeded(PolicyViolation):
    def __init__(self, wallet: str, scope: str, spent: str, limit: str, amount: str):
        super().__init__(
            f"paying {amount} would take wallet {wallet!r} past its budget of {limit} for episode "
            f"{scope!r} ({spent} spent so far); pay less or wait for the next episode"
        )


class BalanceTampered(LedgerRejected):
    """A wallet's balance is not what the ledger's last command left in it: it was changed
    behind the ledger's back (the embedded ledger's seals; see p2e/ledger/lua/lib.lua)."""

    def __init__(self, wallet: str, balance: str, sealed: str | None):
        left = f"the ledger's last command left {sealed}" if sealed is not None else "the ledger never set it"
        super().__init__(
            f"wallet {wallet!r} holds {balance} but {left}: its balance was changed outside the ledger "
            "(tampered), so nothing was moved; `p2e ledger verify` shows what the journal gives: set it back"
        )
        self.wallet, self.balance, self.sealed = wallet, balance, sealed


class EscrowClosed(LedgerRejected):
    def __init__(self, escrow: str, state: str):
        super().__init__(f"escrow {escrow!r} is {state} already; only a locked escrow can be settled")


class NotArbiter(LedgerRejected):
    def __init__(self, escrow: str, who: str, arbiter: str):
        super().__init__(
            f"{who!r} cannot settle escrow {escrow!r}: only its arbiter {arbiter!r} can release or refund it"
        )


class CommandConflict(_Portable, Conflict):
    """A command id used again for a different command: the first one stands."""

    def __init__(self, command_id: str, seq: str | int | None = None):
        where = f" (journal entry {seq})" if seq is not None else ""
        super().__init__(
            f"command id {command_id!r} was already used for a different command{where}; "
            "a retry must repeat the same command exactly, and a new command needs a new id"
        )
        self.command_id = command_id


class LedgerUnavailable(_Portable, P2EError):
    def __init__(self, where: str, cause: object = ""):
        where = mask_url(where)  # a Ledger API URL may carry credentials
        super().__init__(
            f"cannot reach the ledger at {where} ({mask_urls(str(cause))}); check that it runs "
            "(for Canton: `daml sandbox`, see docs/ledger.md) and the URL"
        )
        self.where = where


class LedgerPermissionDenied(LedgerRejected):
    """The ledger refused the identity the command was sent as."""


class LedgerError(_Portable, P2EError):
    """A ledger failure p2e has no better name for; the message carries the ledger's own."""


__all__ = [
    "BalanceTampered",
    "BudgetExceeded",
    "CapExceeded",
    "CommandConflict",
    "EscrowClosed",
    "InsufficientFunds",
    "InvalidArgument",
    "LedgerError",
    "LedgerPermissionDenied",
    "LedgerRejected",
    "LedgerUnavailable",
    "NotArbiter",
    "PolicyViolation",
    "UnknownEscrow",
    "UnknownParty",
    "UnknownWallet",
]
