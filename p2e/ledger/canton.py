"""The Canton backend: the Daml model in `daml/` driven through `dazl` (Ledger API v1, Canton 2.x).

Every wallet owner is its own party (`allocate_party`, hint = the agent id); one operator party
is the issuer. A command is one Daml exercise submitted as the party that may take it (the payer
for `Transfer`, the issuer for `Mint`, the sponsor for `Lock`, the arbiter for `Release` and
`Refund`), reading as the operator too (a choice fetches the payee's wallet, which the payer
does not see), with the p2e command id as the Ledger API command id, so the ledger deduplicates
retries. The Daml model enforces every rule again (funds, cap, owner-only spending).

Amounts cross as `decimal.Decimal` (Daml `Decimal`, 10 places). Ledger errors become p2e errors:

| Ledger API | p2e |
| --- | --- |
| `UNAVAILABLE`, `DEADLINE_EXCEEDED`, closed connection | `LedgerUnavailable` |
| `UNAUTHENTICATED`, `PERMISSION_DENIED`, `DAML_AUTHORIZATION_ERROR` | `LedgerPermissionDenied` |
| `ALREADY_EXISTS` / `DUPLICATE_COMMAND` | the original receipt (`replayed=True`), or `CommandConflict` |
| assertion `P2E:FUNDS`, `P2E:CAP`, other `P2E:` | `InsufficientFunds`, `CapExceeded`, `InvalidArgument` |
| `CONTRACT_NOT_FOUND`, `..._LOCKED_CONTRACTS`, `INCONSISTENT` | retried on fresh contracts, then `Conflict` |
| `PARTY_NOT_KNOWN_ON_LEDGER` | `UnknownParty` |
| anything else | `LedgerError` with the ledger's message |

A command id's content is pinned before submission in the p2e store when one is given
(`CommandIndex`), so a reused id with other content is refused whatever the ledger's
deduplication period; without a store, Canton's deduplication (per submitting party, within
its period) is all there is. Budgets (`Budget`) are tracked in this process: the Wallet actor,
the only payer for its party, is one process.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from typing import Any

from p2e.errors import Conflict, CorruptData, InvalidArgument, P2EError
from p2e.ledger.amount import MAX_AMOUNT, check_minor, format_amount, from_decimal, to_decimal
from p2e.ledger.base import (
    Budget,
    Entry,
    EscrowInfo,
    Kind,
    Ledger,
    LedgerMetrics,
    Receipt,
    VerifyReport,
    WalletInfo,
    check_command_id,
    check_payouts,
    check_reason,
    check_transfer,
    check_wallet_name,
    fingerprint,
    transfer_fingerprint,
)
from p2e.ledger.errors import (
    BudgetExceeded,
    CapExceeded,
    CommandConflict,
    EscrowClosed,
    InsufficientFunds,
    LedgerError,
    LedgerPermissionDenied,
    LedgerUnavailable,
    NotArbiter,
    UnknownEscrow,
    UnknownParty,
    UnknownWallet,
)
from p2e.store.keys import LedgerKeys

MODULE = "P2E.Ledger"
WALLET_REQUEST = f"{MODULE}:WalletRequest"
WALLET = f"{MODULE}:Wallet"
FAUCET = f"{MODULE}:Faucet"
ESCROW = f"{MODULE}:Escrow"
RECORD = f"{MODULE}:TransferRecord"
RETRIES = 5
"""Attempts when a wallet contract changed between the lookup and the exercise (contention)."""

_KINDS: dict[str, Kind] = {
    "Payment": "transfer",
    "Minted": "mint",
    "EscrowLock": "lock",
    "EscrowRelease": "release",
    "EscrowRefund": "refund",
}
_HINT = re.compile(r"[^A-Za-z0-9_-]")


class _Duplicate(LedgerError):
    """The ledger had applied this command id already (internal: answered with the original)."""


class _Contention(LedgerError):
    """A contract used by the command changed meanwhile (internal: retried)."""


def _status(e: BaseException) -> tuple[str, str] | None:
    """(status code name, details) of a gRPC error, else None. No import of grpc needed:
    gRPC errors carry `code()` and `details()`."""
    code, details = getattr(e, "code", None), getattr(e, "details", None)
    if not callable(code) or not callable(details):
        return None
    try:
        c = code()
        return (getattr(c, "name", str(c)), details() or "")
    except Exception:  # pragma: no cover - a broken error object
        return None


def map_error(e: BaseException, url: str, what: str = "the command") -> Exception:
    """The p2e error for an error raised by dazl (see the table in the module docstring)."""
    if type(e).__name__ == "ConnectionClosedError":
        return LedgerUnavailable(url, "the connection is closed")
    st = _status(e)
    if st is None:
        if isinstance(e, ConnectionError | TimeoutError | OSError):
            return LedgerUnavailable(url, e)
        return e if isinstance(e, Exception) else LedgerError(str(e))
    code, details = st
    if code in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
        return LedgerUnavailable(url, f"{code}: {details}")
    if code in ("UNAUTHENTICATED", "PERMISSION_DENIED") or "DAML_AUTHORIZATION_ERROR" in details:
        return LedgerPermissionDenied(
            f"the ledger refused {what} for lack of authority ({code}: {_first_line(details)}); "
            "a wallet can only be spent by its owner's party, and a token must allow acting as it"
        )
    if "DUPLICATE_COMMAND" in details or code == "ALREADY_EXISTS":
        return _Duplicate(details)
    m = re.search(r"P2E:([A-Z_]+)\s*([^\"\\]*)", details)
    if m:
        tag, text = m.group(1), m.group(2).strip()
        if tag == "FUNDS":
            return InsufficientFunds(
                "", "", "", message=f"{what} was refused: {text}; pay less, or fund the wallet first"
            )
        if tag == "CAP":
            return CapExceeded("", "", "", message=f"{what} was refused: {text}; mint less, or raise the cap")
        return InvalidArgument(f"{what} was refused by the Daml model ({tag}): {text}")
    if (
        any(
            k in details
            for k in (
                "CONTRACT_NOT_FOUND",
                "CONTRACT_NOT_ACTIVE",
                "LOCAL_VERDICT_LOCKED_CONTRACTS",
                "INCONSISTENT",
            )
        )
        or code == "ABORTED"
    ):
        return _Contention(details)
    if "PARTY_NOT_KNOWN_ON_LEDGER" in details or "Parties not known" in details:
        return UnknownParty(_first_line(details))
    return LedgerError(f"the Canton ledger refused {what}: {code}: {_first_line(details)}")


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:300] if text.strip() else ""


def _name_of(ev: Any) -> str:
    """The template of a created event, `Module:Template` (package id left out)."""
    from dazl.damlast.util import package_local_name

    return str(package_local_name(ev.contract_id.value_type))


_LEDGER_STRING = re.compile(r"[A-Za-z0-9#:_/ -]{1,255}")


def ledger_command_id(command_id: str) -> str:
    """The Ledger API command id for a p2e command id: itself when the ledger accepts its
    characters ([A-Za-z0-9#:-_/ ]), else a digest of it (deterministic, so retries deduplicate).
    The p2e id itself is kept in the record's `commandId`."""
    if _LEDGER_STRING.fullmatch(command_id):
        return command_id
    return "p2e-" + hashlib.sha256(command_id.encode()).hexdigest()[:40]


def party_hint(name: str) -> str:
    """A party id hint for a wallet name (Canton allows [A-Za-z0-9_-] there): the name itself,
    or, when it holds a '.', the name made safe plus a short hash so two names never collide."""
    if not _HINT.search(name):
        return name
    return _HINT.sub("_", name) + "-" + hashlib.sha1(name.encode()).hexdigest()[:6]


class CommandIndex:
    """Command id -> fingerprint, pinned in the p2e store before a command is submitted."""

    def __init__(self, client: Any, namespace: str):
        self.r, self.key = client, LedgerKeys(namespace).cmds

    def reserve(self, command_id: str, fp: str) -> bool:
        """True if the id was pinned before (to this same content); `CommandConflict` if to other."""
        if self.r.hsetnx(self.key, command_id, f"canton {fp}"):
            return False
        old = (self.r.hget(self.key, command_id) or b"").decode().split(" ", 1)[-1]
        if old != fp:
            raise CommandConflict(command_id)
        return True


class CantonLedger(Ledger):
    backend = "canton"

    def __init__(
        self,
        conn: Any,
        url: str,
        operator: str = "p2e-operator",
        commands: CommandIndex | None = None,
    ):
        """`conn`: an open blocking dazl connection (`dazl.connect(url=..., blocking=True)`)."""
        self.conn = conn
        self.url = url
        self.operator_name = check_wallet_name(operator, "operator")
        self.commands = commands
        self._parties: dict[str, str] = {}
        self._names: dict[str, str] = {}
        self._spent: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    @classmethod
    def connect(
        cls,
        url: str,
        operator: str = "p2e-operator",
        commands: CommandIndex | None = None,
        dazl_connect: Callable[..., Any] | None = None,
    ) -> CantonLedger:
        """Open a blocking dazl connection to the Ledger API at `url`."""
        import dazl

        connect = dazl_connect or dazl.connect
        try:
            conn = connect(url=url, admin=True, blocking=True)
            conn.open()
        except Exception as e:
            raise map_error(e, url, "the connection") from e
        return cls(conn, url, operator, commands)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()

    @contextlib.contextmanager
    def _calling(self, what: str) -> Iterator[None]:
        try:
            yield
        except P2EError:
            raise
        except Exception as e:
            mapped = map_error(e, self.url, what)
            if mapped is e:
                raise
            raise mapped from e

    # --- parties -------------------------------------------------------------------------------

    def _refresh_parties(self) -> None:
        with self._calling("listing the parties"):
            known = self.conn.list_known_parties()
        for p in known:
            party = str(p.party)
            name = p.display_name or party.split("::", 1)[0]
            self._parties.setdefault(name, party)
            self._names[party] = name

    def allocate_party(self, name: str) -> str:
        check_wallet_name(name, "party")
        if name not in self._parties:
            self._refresh_parties()
        if name not in self._parties:
            try:
                with self._calling(f"allocating party {name!r}"):
                    info = self.conn.allocate_party(identifier_hint=party_hint(name), display_name=name)
                party = str(info.party)
                self._parties[name], self._names[party] = party, name
            except _Duplicate:
                self._refresh_parties()
        if name not in self._parties:
            raise UnknownParty(name)
        return self._parties[name]

    def _party(self, name: str) -> str:
        """A known party (no allocation): `UnknownParty` otherwise."""
        if name not in self._parties:
            self._refresh_parties()
        if name not in self._parties:
            raise UnknownParty(name)
        return self._parties[name]

    def _name(self, party: str) -> str:
        if party not in self._names:
            self._refresh_parties()
        return self._names.get(party, party.split("::", 1)[0])

    @property
    def operator(self) -> str:
        return self.allocate_party(self.operator_name)

    # --- reading the active contracts ----------------------------------------------------------

    def _active(self, template: str, match: Mapping[str, Any] | None = None) -> list[Any]:
        with (
            self._calling(f"querying {template}"),
            self.conn.query(template, dict(match or {}), read_as=[self.operator]) as stream,
        ):
            return list(stream.creates())

    def _faucet(self) -> Any:
        found = self._active(FAUCET, {"issuer": self.operator})
        if not found:
            raise InvalidArgument(
                "the Canton ledger has no faucet yet; run `p2e ledger init --backend canton`"
            )
        if len(found) > 1:
            raise CorruptData(FAUCET, f"{len(found)} faucets of the operator; there must be one")
        return found[0]

    def _wallet(self, name: str) -> Any:
        if name not in self._parties:
            self._refresh_parties()
        party = self._parties.get(name)
        if party is None:
            raise UnknownWallet(name)
        found = self._active(WALLET, {"owner": party, "operator": self.operator})
        if not found:
            raise UnknownWallet(name)
        if len(found) > 1:
            raise CorruptData(f"{WALLET} of {name}", f"{len(found)} wallets; a party must have one")
        return found[0]

    # --- setup and wallets ---------------------------------------------------------------------

    def initialize(self, cap: int | None = None) -> None:
        op = self.operator
        existing = self._active(FAUCET, {"issuer": op})
        if not existing:
            with self._calling("creating the faucet"):
                first_cap = MAX_AMOUNT if cap is None else check_minor(cap, "cap")
                self.conn.create(
                    FAUCET,
                    {"issuer": op, "cap": to_decimal(first_cap), "minted": Decimal(0)},
                    act_as=[op],
                    command_id="p2e-faucet",
                )
        elif cap is not None:
            with self._calling("setting the faucet's cap"):
                self.conn.exercise(
                    existing[0].contract_id,
                    "SetCap",
                    {"newCap": to_decimal(check_minor(cap, "cap"))},
                    act_as=[op],
                )

    def open_wallet(self, name: str) -> WalletInfo:
        check_wallet_name(name)
        party = self.allocate_party(name)
        op = self.operator
        with contextlib.suppress(UnknownWallet):
            w = self._wallet(name)
            return WalletInfo(name=name, party=party, balance=from_decimal(w.payload["balance"]))
        requests = self._active(WALLET_REQUEST, {"owner": party, "operator": op})
        if requests:
            req = requests[0].contract_id
        else:
            with self._calling(f"requesting a wallet for {name!r}"):
                req = self.conn.create(
                    WALLET_REQUEST,
                    {"operator": op, "owner": party, "name": name},
                    act_as=[party],
                    command_id=ledger_command_id(f"open-request:{name}"),
                ).contract_id
        try:
            with self._calling(f"opening the wallet of {name!r}"):
                self.conn.exercise(
                    req, "AcceptWallet", {}, act_as=[op], command_id=ledger_command_id(f"open:{name}")
                )
        except _Duplicate:
            pass
        return WalletInfo(name=name, party=party, balance=0)

    def wallets(self) -> list[WalletInfo]:
        out = [
            WalletInfo(
                name=str(w.payload["name"]),
                party=str(w.payload["owner"]),
                balance=from_decimal(w.payload["balance"]),
            )
            for w in self._active(WALLET, {"operator": self.operator})
        ]
        return sorted(out, key=lambda w: w.name)

    def balance(self, name: str) -> int:
        check_wallet_name(name)
        return from_decimal(self._wallet(name).payload["balance"])

    # --- commands ------------------------------------------------------------------------------

    def _pin(self, command_id: str, fp: str) -> Receipt | None:
        """Pin the command's content; if it was pinned before, the original receipt when the
        ledger has applied it already."""
        if self.commands is None or not self.commands.reserve(command_id, fp):
            return None
        return self._replay(command_id)

    def _replay(self, command_id: str) -> Receipt | None:
        records = self._active(RECORD, {"commandId": command_id, "operator": self.operator})
        return Receipt(entry=self._entry(records), replayed=True) if records else None

    def _submit(
        self, command_id: str, what: str, attempt: Callable[[], Any], check: Callable[[Entry], bool]
    ) -> Receipt:
        """Run `attempt` (look the contracts up, exercise) until no contention; a duplicate is
        answered with the original receipt if `check` accepts it, else a conflict."""
        for _ in range(RETRIES):
            try:
                with self._calling(what):
                    response = attempt()
            except _Contention:
                continue
            except _Duplicate:
                original = self._replay(command_id)
                if original is None:
                    raise CommandConflict(command_id) from None
                if not check(original.entry):
                    raise CommandConflict(command_id) from None
                return original
            records = [ev for ev in response.events if hasattr(ev, "payload") and _name_of(ev) == RECORD]
            return Receipt(entry=self._entry(records), replayed=False)
        raise Conflict(
            f"{what} kept meeting concurrent changes of the same wallets ({RETRIES} attempts); retry it"
        )

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
        amount = check_transfer(payer, payee, amount)
        check_reason(reason)
        check_command_id(command_id)
        fp = transfer_fingerprint(payer, payee, amount, reason)
        done = self._pin(command_id, fp)
        if done is not None:
            return done
        if budget is not None:
            self._check_budget(payer, budget, amount)

        def attempt() -> Any:
            src, dst = self._wallet(payer), self._wallet(payee)
            held = from_decimal(src.payload["balance"])
            if held < amount:
                raise InsufficientFunds(payer, format_amount(held), format_amount(amount))
            return self.conn.exercise(
                src.contract_id,
                "Transfer",
                {
                    "payeeWallet": dst.contract_id,
                    "amount": to_decimal(amount),
                    "reason": reason,
                    "commandId": command_id,
                },
                act_as=[self._party(payer)],
                read_as=[self.operator],
                command_id=ledger_command_id(command_id),
            )

        receipt = self._submit(
            command_id,
            f"the transfer {command_id!r}",
            attempt,
            lambda e: e.kind == "transfer" and e.amount == amount and e.by == payer and e.payee == payee,
        )
        if budget is not None and not receipt.replayed:
            with self._lock:
                key = (payer, budget.scope)
                self._spent[key] = self._spent.get(key, 0) + amount
        return receipt

    def _check_budget(self, payer: str, budget: Budget, amount: int) -> None:
        with self._lock:
            spent = self._spent.get((payer, budget.scope), 0)
        if budget.limit is not None and spent + amount > budget.limit:
            raise BudgetExceeded(
                payer, budget.scope, format_amount(spent), format_amount(budget.limit), format_amount(amount)
            )

    def mint(self, to: str, amount: int, *, reason: str, command_id: str) -> Receipt:
        check_wallet_name(to)
        amount = check_minor(amount)
        check_reason(reason)
        check_command_id(command_id)
        done = self._pin(command_id, fingerprint(kind="mint", to=to, amount=amount, reason=reason))
        if done is not None:
            return done

        def attempt() -> Any:
            faucet, wallet = self._faucet(), self._wallet(to)
            minted, cap = from_decimal(faucet.payload["minted"]), from_decimal(faucet.payload["cap"])
            if minted + amount > cap:
                raise CapExceeded(format_amount(minted), format_amount(cap), format_amount(amount))
            return self.conn.exercise(
                faucet.contract_id,
                "Mint",
                {
                    "wallet": wallet.contract_id,
                    "amount": to_decimal(amount),
                    "reason": reason,
                    "commandId": command_id,
                },
                act_as=[self.operator],
                read_as=[self.operator],
                command_id=ledger_command_id(command_id),
            )

        return self._submit(
            command_id, f"minting {command_id!r}", attempt, lambda e: e.kind == "mint" and e.amount == amount
        )

    def escrow_lock(
        self, sponsor: str, amount: int, *, arbiter: str, escrow_id: str, command_id: str, memo: str = ""
    ) -> Receipt:
        check_wallet_name(sponsor, "sponsor")
        check_wallet_name(arbiter, "arbiter")
        check_wallet_name(escrow_id, "escrow")
        if sponsor == arbiter:
            raise InvalidArgument(f"{sponsor!r} cannot be both the sponsor and the arbiter of an escrow")
        amount = check_minor(amount)
        check_reason(memo)
        check_command_id(command_id)
        fp = fingerprint(
            kind="lock", sponsor=sponsor, arbiter=arbiter, amount=amount, escrow=escrow_id, memo=memo
        )
        done = self._pin(command_id, fp)
        if done is not None:
            return done
        arbiter_party = self._party(arbiter)
        if self._active(ESCROW, {"escrowId": escrow_id, "operator": self.operator}):
            raise InvalidArgument(f"an escrow {escrow_id!r} exists already; give the new one another id")

        def attempt() -> Any:
            src = self._wallet(sponsor)
            held = from_decimal(src.payload["balance"])
            if held < amount:
                raise InsufficientFunds(sponsor, format_amount(held), format_amount(amount))
            return self.conn.exercise(
                src.contract_id,
                "Lock",
                {
                    "arbiter": arbiter_party,
                    "amount": to_decimal(amount),
                    "escrowId": escrow_id,
                    "memo": memo,
                    "commandId": command_id,
                },
                act_as=[self._party(sponsor)],
                read_as=[self.operator],
                command_id=ledger_command_id(command_id),
            )

        return self._submit(
            command_id,
            f"locking escrow {escrow_id!r}",
            attempt,
            lambda e: e.kind == "lock" and e.escrow == escrow_id,
        )

    def _locked(self, escrow_id: str, arbiter: str) -> Any:
        found = self._active(ESCROW, {"escrowId": escrow_id, "operator": self.operator})
        if not found:
            info = self.escrow(escrow_id)  # UnknownEscrow if it never existed
            raise EscrowClosed(escrow_id, info.state)
        esc = found[0]
        if self._name(str(esc.payload["arbiter"])) != arbiter:
            raise NotArbiter(escrow_id, arbiter, self._name(str(esc.payload["arbiter"])))
        return esc

    def escrow_release(
        self, escrow_id: str, payouts: Mapping[str, int], *, arbiter: str, command_id: str
    ) -> Receipt:
        check_wallet_name(escrow_id, "escrow")
        check_wallet_name(arbiter, "arbiter")
        check_command_id(command_id)
        pays = check_payouts(payouts)
        fp = fingerprint(kind="release", escrow=escrow_id, arbiter=arbiter, payouts=sorted(pays.items()))
        done = self._pin(command_id, fp)
        if done is not None:
            return done

        def attempt() -> Any:
            esc = self._locked(escrow_id, arbiter)
            held = from_decimal(esc.payload["amount"])
            if sum(pays.values()) != held:
                raise InvalidArgument(
                    f"the payouts add up to {format_amount(sum(pays.values()))}, but escrow {escrow_id!r} "
                    f"holds {format_amount(held)}; they must match exactly (see p2e.ledger.split)"
                )
            args = [{"wallet": self._wallet(w).contract_id, "amount": to_decimal(a)} for w, a in pays.items()]
            return self.conn.exercise(
                esc.contract_id,
                "Release",
                {"payouts": args, "commandId": command_id},
                act_as=[self._party(arbiter)],
                read_as=[self.operator],
                command_id=ledger_command_id(command_id),
            )

        return self._submit(
            command_id,
            f"releasing escrow {escrow_id!r}",
            attempt,
            lambda e: e.kind == "release" and e.escrow == escrow_id,
        )

    def escrow_refund(self, escrow_id: str, *, arbiter: str, command_id: str) -> Receipt:
        check_wallet_name(escrow_id, "escrow")
        check_wallet_name(arbiter, "arbiter")
        check_command_id(command_id)
        done = self._pin(command_id, fingerprint(kind="refund", escrow=escrow_id, arbiter=arbiter))
        if done is not None:
            return done

        def attempt() -> Any:
            esc = self._locked(escrow_id, arbiter)
            sponsor = self._wallet(self._name(str(esc.payload["sponsor"])))
            return self.conn.exercise(
                esc.contract_id,
                "Refund",
                {"sponsorWallet": sponsor.contract_id, "commandId": command_id},
                act_as=[self._party(arbiter)],
                read_as=[self.operator],
                command_id=ledger_command_id(command_id),
            )

        return self._submit(
            command_id,
            f"refunding escrow {escrow_id!r}",
            attempt,
            lambda e: e.kind == "refund" and e.escrow == escrow_id,
        )

    # --- records -> entries --------------------------------------------------------------------

    def _entry(self, records: list[Any], seq: int = -1) -> Entry:
        """One p2e entry from the TransferRecords of one command."""
        if not records:
            raise LedgerError(
                "the ledger answered without a TransferRecord; is the Daml model in daml/ deployed?"
            )
        first = records[0].payload
        kind = _KINDS.get(str(first["kind"]))
        if kind is None:
            raise CorruptData(RECORD, f"unknown record kind {first['kind']!r}")
        moves: list[tuple[str, int, int]] = []
        total = 0
        for ev in records:
            p = ev.payload
            amount = from_decimal(p["amount"])
            total += amount
            payer, payee = self._name(str(p["payer"])), self._name(str(p["payee"]))
            if p.get("payerAfter") is not None:
                moves.append((payer, -amount, from_decimal(p["payerAfter"])))
            if p.get("payeeAfter") is not None:
                moves.append((payee, amount, from_decimal(p["payeeAfter"])))
        by = {
            "transfer": self._name(str(first["payer"])),
            "mint": "issuer",
            "lock": self._name(str(first["payer"])),
        }.get(kind, "arbiter")
        escrow = first.get("escrowId")
        time = first.get("time")
        return Entry(
            seq=seq,
            ts=time.timestamp() if isinstance(time, dt.datetime) else 0.0,
            kind=kind,
            cid=str(first["commandId"]),
            by=by,
            amount=total,
            reason=str(first["reason"]),
            escrow=str(escrow) if escrow is not None else None,
            arbiter=self._name(str(first["payee"])) if kind == "lock" else None,
            moves=tuple(moves),
            ref=str(records[0].contract_id),
        )

    def _all_entries(self) -> list[Entry]:
        records = self._active(RECORD, {"operator": self.operator})
        groups: dict[str, list[Any]] = {}
        for ev in records:
            groups.setdefault(str(ev.payload["commandId"]), []).append(ev)

        def when(evs: list[Any]) -> tuple[Any, str]:
            t = evs[0].payload.get("time")
            return (t.timestamp() if isinstance(t, dt.datetime) else 0.0, str(evs[0].payload["commandId"]))

        ordered = sorted(groups.values(), key=when)
        return [self._entry(evs, seq=i) for i, evs in enumerate(ordered)]

    def history(self, name: str, limit: int = 50) -> list[Entry]:
        if limit < 1:
            raise InvalidArgument(f"limit {limit} must be at least 1")
        self._wallet(name)
        mine = [e for e in self._all_entries() if any(w == name for w, _, _ in e.moves)]
        return mine[-limit:]

    def audit(self, since: int = 0, limit: int | None = None) -> list[Entry]:
        if since < 0:
            raise InvalidArgument(f"--since {since}: entries are numbered from 0")
        entries = self._all_entries()[since:]
        return entries if limit is None else entries[:limit]

    # --- escrows -------------------------------------------------------------------------------

    def escrows(self) -> list[EscrowInfo]:
        active = {str(e.payload["escrowId"]) for e in self._active(ESCROW, {"operator": self.operator})}
        out: dict[str, EscrowInfo] = {}
        for e in self._all_entries():
            if e.escrow is None:
                continue
            if e.kind == "lock":
                out[e.escrow] = EscrowInfo(
                    id=e.escrow,
                    sponsor=e.by,
                    arbiter=e.arbiter or "",
                    amount=e.amount,
                    state="locked" if e.escrow in active else "released",
                    memo=e.reason,
                )
            elif e.kind == "refund" and e.escrow in out:
                out[e.escrow] = out[e.escrow].model_copy(update={"state": "refunded"})
        return list(out.values())

    def escrow(self, escrow_id: str) -> EscrowInfo:
        for e in self.escrows():
            if e.id == escrow_id:
                return e
        raise UnknownEscrow(escrow_id)

    # --- checking ------------------------------------------------------------------------------

    def _totals(self) -> tuple[list[WalletInfo], int, int, int, int]:
        """(wallets, minted, cap, escrowed, open escrows)."""
        wallets = self.wallets()
        faucet = self._faucet()
        escrows = self._active(ESCROW, {"operator": self.operator})
        escrowed = sum(from_decimal(e.payload["amount"]) for e in escrows)
        return (
            wallets,
            from_decimal(faucet.payload["minted"]),
            from_decimal(faucet.payload["cap"]),
            escrowed,
            len(escrows),
        )

    def verify(self) -> VerifyReport:
        """On Canton the ledger keeps integrity itself; this checks the model's invariants as
        the operator sees them: supply == minted, no negative balance, one wallet per party, and
        that the records' mints add up to the faucet's count."""
        import time as _time

        t0 = _time.perf_counter()
        wallets, minted, _, escrowed, _ = self._totals()
        problems = []
        seen: dict[str, int] = {}
        for w in wallets:
            seen[w.party] = seen.get(w.party, 0) + 1
            if w.balance < 0:
                problems.append(f"wallet {w.name!r} holds a negative balance ({format_amount(w.balance)})")
        problems += [f"party {p} has {n} wallets" for p, n in seen.items() if n > 1]
        supply = sum(w.balance for w in wallets) + escrowed
        if supply != minted:
            problems.append(
                f"the supply ({format_amount(supply)}: wallets plus escrows) is not what the faucet minted "
                f"({format_amount(minted)})"
            )
        entries = self._all_entries()
        minted_records = sum(e.amount for e in entries if e.kind == "mint")
        if minted_records != minted:
            problems.append(
                f"the mint records add up to {format_amount(minted_records)}, "
                f"the faucet counts {format_amount(minted)}"
            )
        return VerifyReport(
            ok=not problems,
            backend=self.backend,
            entries=len(entries),
            supply=supply,
            minted=minted,
            escrowed=escrowed,
            wallets=len(wallets),
            problems=tuple(problems),
            seconds=_time.perf_counter() - t0,
        )

    def metrics(self) -> LedgerMetrics:
        wallets, minted, cap, escrowed, open_escrows = self._totals()
        entries = self._all_entries()
        transfers = [e for e in entries if e.kind == "transfer"]
        return LedgerMetrics(
            backend=self.backend,
            wallets=len(wallets),
            supply=sum(w.balance for w in wallets) + escrowed,
            minted=minted,
            cap=cap,
            escrowed=escrowed,
            open_escrows=open_escrows,
            volume=sum(e.amount for e in transfers),
            transfers=len(transfers),
            entries=len(entries),
        )
