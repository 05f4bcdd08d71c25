"""The ledger interface that both backends implement, and the records it returns.

Every amount is an `int` of minor units (`amount.py`). Every command that moves money carries a
`command_id`: the ledger applies a command id once, answers a retry with the original receipt
(`replayed=True`), and refuses the same id for a different command (`CommandConflict`). Wallets
are named by agent id; `allocate_party` gives the ledger identity behind a name (the name itself
on the embedded ledger, `name::fingerprint` on Canton).
"""

from __future__ import annotations

import abc
import hashlib
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from p2e.errors import InvalidArgument
from p2e.ledger.amount import check_minor, format_amount
from p2e.store.keys import NAME_RE

Kind = Literal["open", "mint", "transfer", "lock", "release", "refund"]
COMMAND_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,199}")
MAX_REASON = 500


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Entry(_Record):
    """One journal entry: one applied command and every balance it changed.

    `moves` are `(wallet, delta, balance after)`. On the embedded ledger `seq` numbers the
    journal from 0 and `prev` is the SHA-1 of the previous entry's stored text (the hash chain
    `verify` checks); on Canton `seq` numbers the records in ledger-time order and `ref` is the
    TransferRecord's contract id.
    """

    seq: int
    prev: str = ""
    ts: float
    kind: Kind
    cid: str
    """The command id."""
    by: str
    """Who authorised it: the payer, the issuer (mint), the sponsor (lock), the arbiter."""
    amount: int
    reason: str = ""
    escrow: str | None = None
    arbiter: str | None = None
    moves: tuple[tuple[str, int, int], ...] = ()
    ref: str = ""

    def delta(self, wallet: str) -> int:
        return sum(d for w, d, _ in self.moves if w == wallet)

    def after(self, wallet: str) -> int | None:
        found = [a for w, _, a in self.moves if w == wallet]
        return found[-1] if found else None

    @property
    def payee(self) -> str | None:
        """The credited wallet of a transfer or a mint."""
        credited = [w for w, d, _ in self.moves if d > 0]
        return credited[0] if len(credited) == 1 else None

    def describe(self) -> str:
        """One line for people: `transfer 12.5 alice -> bob (for the report)`."""
        if self.kind == "open":
            return f"open wallet {self.by}"
        debits = [w for w, d, _ in self.moves if d < 0]
        credits = [w for w, d, _ in self.moves if d > 0]
        frm = ",".join(debits) or (f"escrow {self.escrow}" if self.escrow else "faucet")
        to = ",".join(credits) or (f"escrow {self.escrow}" if self.escrow else "-")
        why = f" ({self.reason})" if self.reason else ""
        return f"{self.kind} {format_amount(self.amount)} {frm} -> {to}{why}"


class Receipt(_Record):
    """The answer to a command: its journal entry; `replayed` when this was a retry of a command
    id already applied (the entry is then the original one and nothing moved this time)."""

    entry: Entry
    replayed: bool = False


class WalletInfo(_Record):
    name: str
    party: str
    balance: int


class EscrowInfo(_Record):
    id: str
    sponsor: str
    arbiter: str
    amount: int
    state: Literal["locked", "released", "refunded"]
    memo: str = ""


class Budget(_Record):
    """What a wallet spends in `scope` (an episode: the conversation id) is counted with each
    payment, and checked atomically with it when there is a `limit`: at most `limit` paid in the
    scope, across processes and retries. (Counted without a limit too, so a policy set in the
    middle of an episode counts what was spent before.)"""

    scope: str = Field(min_length=1, max_length=200)
    limit: int | None = Field(None, ge=0)


class VerifyReport(_Record):
    ok: bool
    backend: str
    entries: int
    head: str = ""
    supply: int
    minted: int
    escrowed: int
    wallets: int
    problems: tuple[str, ...] = ()
    first_bad: int | None = None
    """The journal position of the first entry found bad (embedded ledger), if any."""
    seconds: float = 0.0


class LedgerMetrics(_Record):
    backend: str
    wallets: int
    supply: int
    """Money that exists: every balance plus what escrows hold."""
    minted: int
    cap: int
    escrowed: int
    open_escrows: int
    volume: int
    """Total paid in transfers (mints and escrow movements excluded)."""
    transfers: int
    entries: int


def check_wallet_name(name: object, what: str = "wallet") -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"{what} name {name!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (an agent id)"
        )
    return name


def name_field(name: str, what: str = "wallet") -> str:
    """`check_wallet_name` for pydantic validators (they must raise ValueError)."""
    try:
        return check_wallet_name(name, what)
    except InvalidArgument as e:
        raise ValueError(str(e)) from None


def check_command_id(command_id: object) -> str:
    if not isinstance(command_id, str) or not COMMAND_ID_RE.fullmatch(command_id):
        raise InvalidArgument(
            f"command id {command_id!r} is not allowed: use 1-200 letters, digits and ._:@/+=- "
            "(a retry must reuse the same id; a new command needs a new one)"
        )
    return command_id


def check_reason(reason: object) -> str:
    if not isinstance(reason, str):
        raise InvalidArgument(f"reason {reason!r} must be text")
    if len(reason) > MAX_REASON:
        raise InvalidArgument(f"the reason is {len(reason)} characters long; keep it under {MAX_REASON}")
    return reason


def check_transfer(payer: str, payee: str, amount: object) -> int:
    check_wallet_name(payer, "payer")
    check_wallet_name(payee, "payee")
    if payer == payee:
        raise InvalidArgument(
            f"payer and payee are both {payer!r}: a transfer moves money between two wallets"
        )
    return check_minor(amount)


def check_payouts(payouts: Mapping[str, int]) -> dict[str, int]:
    if not payouts:
        raise InvalidArgument("a release needs at least one payee; to return the funds, refund the escrow")
    out = {}
    for wallet, amount in payouts.items():
        check_wallet_name(wallet, "payee")
        out[wallet] = check_minor(amount, f"payout to {wallet!r}")
    return out


def transfer_fingerprint(payer: str, payee: str, amount: int, reason: str) -> str:
    """`fingerprint` of a transfer, built directly (it is on the hot path; names cannot hold
    '|', and the reason is last, so the text is unambiguous)."""
    return hashlib.sha256(f"transfer|{payer}|{payee}|{amount}|{reason}".encode()).hexdigest()[:32]


def fingerprint(**fields: Any) -> str:
    """What a command asks for, hashed: a retry must match it exactly, a reused id with other
    content is a conflict. (Timestamps are not part of it.)"""
    return hashlib.sha256(repr(sorted(fields.items())).encode()).hexdigest()[:32]


class Ledger(abc.ABC):
    """Wallets, transfers, minting, escrow, and the audit trail: one interface, two backends."""

    backend: str

    @abc.abstractmethod
    def initialize(self, cap: int | None = None) -> None:
        """Make the ledger ready (issuer, faucet); `cap` bounds all the money it may ever mint
        (default `MAX_AMOUNT`). Idempotent; a new `cap` replaces the old one."""

    # --- parties and wallets -------------------------------------------------------------------

    @abc.abstractmethod
    def allocate_party(self, name: str) -> str:
        """The ledger identity for `name`, allocated on first use (idempotent)."""

    @abc.abstractmethod
    def open_wallet(self, name: str) -> WalletInfo:
        """A wallet (balance 0) owned by `name`'s party; an open wallet is returned as it is."""

    @abc.abstractmethod
    def wallets(self) -> list[WalletInfo]:
        """Every wallet, by name."""

    @abc.abstractmethod
    def balance(self, name: str) -> int: ...

    def snapshot(self) -> dict[str, int]:
        """Balances by wallet name (what a rollout records before and after)."""
        return {w.name: w.balance for w in self.wallets()}

    # --- commands ------------------------------------------------------------------------------

    @abc.abstractmethod
    def transfer(
        self,
        payer: str,
        payee: str,
        amount: int,
        *,
        reason: str,
        command_id: str,
        budget: Budget | None = None,
    ) -> Receipt:
        """Move `amount` from `payer` to `payee`. Only the payer's own code path may call this
        (the agent tools take the payer from the tool context, never from a model)."""

    @abc.abstractmethod
    def mint(self, to: str, amount: int, *, reason: str, command_id: str) -> Receipt:
        """New money into `to`, by the issuer, through the faucet (within its cap)."""

    @abc.abstractmethod
    def escrow_lock(
        self, sponsor: str, amount: int, *, arbiter: str, escrow_id: str, command_id: str, memo: str = ""
    ) -> Receipt:
        """Move `amount` from `sponsor` into a new escrow that only `arbiter` can settle."""

    @abc.abstractmethod
    def escrow_release(
        self, escrow_id: str, payouts: Mapping[str, int], *, arbiter: str, command_id: str
    ) -> Receipt:
        """Pay the escrow out; `payouts` (wallet -> amount) must add up to the escrowed amount."""

    @abc.abstractmethod
    def escrow_refund(self, escrow_id: str, *, arbiter: str, command_id: str) -> Receipt:
        """Return the escrowed amount to its sponsor."""

    @abc.abstractmethod
    def escrow(self, escrow_id: str) -> EscrowInfo: ...

    @abc.abstractmethod
    def escrows(self) -> list[EscrowInfo]: ...

    # --- reading and checking ------------------------------------------------------------------

    @abc.abstractmethod
    def history(self, name: str, limit: int = 50) -> list[Entry]:
        """The last `limit` entries that touched wallet `name`, oldest first."""

    def scope_entries(self, scope: str) -> list[Entry] | None:
        """The transfers counted in budget scope `scope` (a rollout episode, over all its
        attempts), in journal order; None when this backend keeps no such index (then a rollout
        counts an episode's payments from its events)."""
        return None

    @abc.abstractmethod
    def audit(self, since: int = 0, limit: int | None = None) -> list[Entry]:
        """Entries from position `since` on (all, or at most `limit`), oldest first."""

    @abc.abstractmethod
    def verify(self) -> VerifyReport:
        """Check the invariants: supply == minted, no negative balance (and, embedded, the hash
        chain and that replaying the journal gives the stored balances)."""

    @abc.abstractmethod
    def metrics(self) -> LedgerMetrics: ...

    def close(self) -> None:  # noqa: B027 (optional: backends without connections need nothing)
        """Release connections."""

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
