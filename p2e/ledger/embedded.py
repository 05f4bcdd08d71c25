"""The embedded ledger: wallets in the p2e store, one Lua script per command.

Each command (open, mint, transfer, escrow lock, release, refund) is one script that checks
everything, moves the balances, appends a journal entry chained to the previous one by its hash,
and records the command id, atomically. So a command is applied entirely or not at all, a
retried command id is applied once, and concurrent payments from one wallet can never spend the
same money twice (the server runs scripts one at a time). With the embedded Valkey the store's
append-only file keeps every acknowledged command across restarts.

Keys: `ns:ledger:*`, laid out (with every other key p2e writes) in `p2e/store/keys.py`.

The hash chain: entry i holds `prev` = SHA-1 of entry i-1's stored text (40 zeros for entry 0)
and meta `head` is the SHA-1 of the last. SHA-1 because it is what Redis scripts offer
(`redis.sha1hex`); the chain detects entries changed, removed or inserted after the fact. It is
no defence against someone who can rewrite the whole store, who could recompute the chain too:
to pin history, record `verify`'s head somewhere else.

Seals: meta `seal:NAME` is the balance that the ledger's last command left in wallet NAME, written
with it by every script (in the fields the transfer reads and writes anyway: no extra call). A
balance changed by hand (an HINCRBY on `bal`) no longer matches, so the next command that would
move it (paying or paid) is refused with `BalanceTampered`, and `verify` names it. Like the
chain, it stops writes that bypass the ledger, not someone who forges both: the embedded store's
password keeps other processes out. Meta `sealed` says every wallet has a seal (a new ledger's
first entry sets it; `initialize` seals a ledger from before seals).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from importlib.resources import files
from typing import Any, NoReturn

import hiredis
import redis
from pydantic import TypeAdapter, ValidationError
from redis.connection import AbstractConnection

from p2e.errors import CorruptData, InvalidArgument, StoreUnavailable
from p2e.ledger.amount import MAX_AMOUNT, check_minor, format_amount
from p2e.ledger.base import (
    Budget,
    Entry,
    EscrowInfo,
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
    BalanceTampered,
    BudgetExceeded,
    CapExceeded,
    CommandConflict,
    EscrowClosed,
    InsufficientFunds,
    LedgerError,
    NotArbiter,
    UnknownEscrow,
    UnknownParty,
    UnknownWallet,
)
from p2e.store.keys import LedgerKeys
from p2e.store.replies import as_bytes, as_hash, as_list

GENESIS = "0" * 40
VERIFY_CHUNK = 10_000
MAX_PROBLEMS = 20
_ENTRIES = TypeAdapter(list[Entry])


def _script(name: str) -> str:
    lua = files("p2e.ledger").joinpath("lua")
    if name in ("cap", "transfer"):  # self-contained (transfer: the hot path, see its header)
        return lua.joinpath(f"{name}.lua").read_text()
    return lua.joinpath("lib.lua").read_text() + lua.joinpath(f"{name}.lua").read_text()


def _body(**fields: Any) -> str:
    """The entry's fields that the caller knows, as compact ASCII JSON (the script adds seq,
    prev and moves). ASCII, so the bytes the script hashes are the bytes `verify` hashes."""
    return json.dumps(fields, separators=(",", ":"))


class EmbeddedLedger(Ledger):
    backend = "embedded"

    def __init__(self, url: str, namespace: str = "p2e", client: redis.Redis | None = None):
        self.url = url
        self.keys = LedgerKeys(namespace)
        self._own_client = client is None
        self.r = client or redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5)
        self._scripts = {
            n: self.r.register_script(_script(n))
            for n in ("open", "mint", "transfer", "lock", "settle", "cap")
        }
        self._conns: list[AbstractConnection] = []
        self._pid = os.getpid()

    def close(self) -> None:
        conns, self._conns = self._conns, []
        for conn in conns:
            conn.disconnect()
        if self._own_client:
            self.r.close()

    def _eval(self, name: str, keys: tuple[str, ...], args: tuple[str, ...]) -> Any:
        """EVALSHA of a ledger script: its reply, or the ResponseError it raised.

        Commands go through connections of the ledger's own, made from the client's pool's
        settings (address, auth, db, TLS, timeouts), one per thread in flight, and spoken to
        directly (the command packed by hiredis, the reply read by redis-py's parser): redis-py's
        command path (pool checkout with a poll of the socket, retry wrapper, observability
        hooks) cost more client CPU per transfer than the rest of the transfer. Anything
        unusual falls back to that path: a script the server does not have (it loads it), and a
        connection error (its retries, then StoreUnavailable). A resent command is applied once
        (its command id), so a retry can only replay it.
        """
        script = self._scripts[name]
        # hiredis's stub: `Tuple[X]` (one item) where it means `Tuple[X, ...]`
        cmd = hiredis.pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))  # type: ignore[arg-type]
        if self._pid != os.getpid():  # a forked child: the parent's connections are not its own
            self._conns, self._pid = [], os.getpid()
        try:
            conn = self._conns.pop()
        except IndexError:
            pool = self.r.connection_pool
            conn = pool.connection_class(**{**pool.connection_kwargs, "decode_responses": False})
        try:
            conn.send_packed_command([cmd], check_health=False)
            reply = conn.read_response()
        except redis.exceptions.NoScriptError:
            self._conns.append(conn)
            return self._slow(script, keys, args)
        except redis.ResponseError:
            self._conns.append(conn)  # a whole reply was read: the connection is in step
            raise
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            conn.disconnect()
            return self._slow(script, keys, args)
        except BaseException:
            conn.disconnect()  # interrupted mid-reply: a later reply could be misread
            raise
        self._conns.append(conn)
        return reply

    def _slow(self, script: Any, keys: tuple[str, ...], args: tuple[str, ...]) -> Any:
        try:
            return script(keys=keys, args=args)
        except (redis.ConnectionError, redis.TimeoutError, ConnectionError) as e:
            raise StoreUnavailable(self.url, e) from e

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError, ConnectionError) as e:
            raise StoreUnavailable(self.url, e) from e
        except redis.ResponseError as e:
            if "WRONGTYPE" in str(e):
                raise CorruptData(f"{self.keys.prefix}*", f"a key of the wrong type ({e})") from e
            raise

    # --- setup, parties, wallets ---------------------------------------------------------------

    def initialize(self, cap: int | None = None) -> None:
        """Record the creation time; set the faucet's cap if given (else keep it; none set means
        `MAX_AMOUNT`)."""
        cap_text = "" if cap is None else str(check_minor(cap, "cap"))
        with self._guard():
            try:
                self._scripts["cap"](keys=[self.keys.meta, self.keys.bal], args=[cap_text, repr(time.time())])
            except redis.ResponseError as e:
                if "P2E_CAP_BELOW" in str(e):
                    minted = int(str(e).split("P2E_CAP_BELOW ", 1)[1].split()[0])
                    raise InvalidArgument(
                        f"a cap of {format_amount(int(cap_text))} is below the "
                        f"{format_amount(minted)} minted already; choose a cap at least that high"
                    ) from e
                raise

    def allocate_party(self, name: str) -> str:
        check_wallet_name(name, "party")
        with self._guard():
            self.r.hsetnx(self.keys.parties, name, json.dumps({"party": name, "created": time.time()}))
        return name

    def open_wallet(self, name: str) -> WalletInfo:
        check_wallet_name(name)
        party = json.dumps({"party": name, "created": time.time()})
        cid = f"open:{name}"
        try:
            self._run(
                "open",
                [self.keys.parties, self.keys.history(name)],
                [name, party],
                cid,
                fingerprint(kind="open", wallet=name),
                _body(ts=time.time(), kind="open", cid=cid, by=name, amount=0),
            )
        except LedgerError as e:
            if "P2E_EXISTS" not in str(e):
                raise
        return WalletInfo(name=name, party=name, balance=self.balance(name))

    def wallets(self) -> list[WalletInfo]:
        return [WalletInfo(name=n, party=n, balance=b) for n, b in sorted(self.snapshot().items())]

    def snapshot(self) -> dict[str, int]:
        with self._guard():
            raw = as_hash(self.r.hgetall(self.keys.bal))
        return {k.decode(): self._int(v, self.keys.bal) for k, v in raw.items()}

    def balance(self, name: str) -> int:
        check_wallet_name(name)
        with self._guard():
            raw = self.r.hget(self.keys.bal, name)
        if raw is None:
            raise UnknownWallet(name)
        return self._int(as_bytes(raw), self.keys.bal)

    def _int(self, raw: bytes, key: str) -> int:
        try:
            return int(raw)
        except ValueError:
            raise CorruptData(key, f"{raw[:40]!r} is not an amount") from None

    # --- commands ------------------------------------------------------------------------------

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
        k = self.keys
        scope = budget.scope if budget else ""
        limit = str(budget.limit) if budget and budget.limit is not None else ""
        ts = time.time()
        # The entry's known fields by hand (names and command ids are checked to hold no
        # character JSON escapes), without braces: the script writes the entry around them.
        fields = (
            f'"ts":{ts!r},"kind":"transfer","cid":"{command_id}","by":"{payer}",'
            f'"amount":{amount},"reason":{json.dumps(reason)}'
        )
        args = (payer, payee, str(amount), scope, limit)
        try:
            reply = self._eval(
                "transfer",
                (
                    k.meta,
                    k.bal,
                    k.journal,
                    k.cmds,
                    k.history(payer),
                    k.history(payee),
                    k.spent(payer),
                    k.scope(scope),
                ),
                (command_id, transfer_fingerprint(payer, payee, amount, reason), fields, *args),
            )
        except redis.ResponseError as e:
            self._refused(e, args, command_id, budget, None)
        if reply[0]:  # a retry: the original entry
            return self._receipt(reply[1], command_id, replayed=True)
        # The script answers only what the client does not know: seq, prev, the balances after.
        _, seq, prev, after_payer, after_payee = reply
        try:
            entry = {
                "seq": int(seq),
                "prev": prev.decode(),
                "ts": ts,
                "kind": "transfer",
                "cid": command_id,
                "by": payer,
                "amount": amount,
                "reason": reason,
                "moves": ((payer, -amount, int(after_payer)), (payee, amount, int(after_payee))),
            }
            return Receipt.model_validate({"entry": entry})
        except (ValueError, UnicodeDecodeError) as e:
            raise CorruptData(
                self.keys.bal, f"the answer to command {command_id!r} does not parse ({e}); run verify"
            ) from e

    def mint(self, to: str, amount: int, *, reason: str, command_id: str) -> Receipt:
        check_wallet_name(to)
        amount = check_minor(amount)
        check_reason(reason)
        check_command_id(command_id)
        return self._run(
            "mint",
            [self.keys.history(to)],
            [to, str(amount), str(MAX_AMOUNT)],
            command_id,
            fingerprint(kind="mint", to=to, amount=amount, reason=reason),
            _body(ts=time.time(), kind="mint", cid=command_id, by="issuer", amount=amount, reason=reason),
        )

    def escrow_lock(
        self, sponsor: str, amount: int, *, arbiter: str, escrow_id: str, command_id: str, memo: str = ""
    ) -> Receipt:
        check_wallet_name(sponsor, "sponsor")
        check_wallet_name(arbiter, "arbiter")
        check_wallet_name(escrow_id, "escrow")
        if sponsor == arbiter:
            raise InvalidArgument(
                f"{sponsor!r} cannot be both the sponsor and the arbiter of an escrow: "
                "name another party (e.g. an evaluator's) as the arbiter"
            )
        amount = check_minor(amount)
        check_reason(memo)
        check_command_id(command_id)
        k = self.keys
        return self._run(
            "lock",
            [k.history(sponsor), k.escrow(escrow_id), k.escrows, k.parties],
            [sponsor, arbiter, str(amount), escrow_id, memo],
            command_id,
            fingerprint(
                kind="lock", sponsor=sponsor, arbiter=arbiter, amount=amount, escrow=escrow_id, memo=memo
            ),
            _body(
                ts=time.time(),
                kind="lock",
                cid=command_id,
                by=sponsor,
                amount=amount,
                reason=memo,
                escrow=escrow_id,
                arbiter=arbiter,
            ),
            escrow=escrow_id,
        )

    def escrow_release(
        self, escrow_id: str, payouts: Mapping[str, int], *, arbiter: str, command_id: str
    ) -> Receipt:
        check_wallet_name(escrow_id, "escrow")
        check_wallet_name(arbiter, "arbiter")
        check_command_id(command_id)
        pays = check_payouts(payouts)
        return self._settle(escrow_id, arbiter, "released", pays, command_id)

    def escrow_refund(self, escrow_id: str, *, arbiter: str, command_id: str) -> Receipt:
        check_wallet_name(escrow_id, "escrow")
        check_wallet_name(arbiter, "arbiter")
        check_command_id(command_id)
        info = self.escrow(escrow_id)
        return self._settle(escrow_id, arbiter, "refunded", {info.sponsor: info.amount}, command_id)

    def _settle(
        self, escrow_id: str, arbiter: str, state: str, pays: dict[str, int], command_id: str
    ) -> Receipt:
        k = self.keys
        kind = "release" if state == "released" else "refund"
        args: list[str] = [escrow_id, arbiter, state]
        for wallet, amount in pays.items():
            args += [wallet, str(amount)]
        return self._run(
            "settle",
            [k.escrow(escrow_id), *(k.history(w) for w in pays)],
            args,
            command_id,
            fingerprint(kind=kind, escrow=escrow_id, arbiter=arbiter, payouts=sorted(pays.items())),
            _body(
                ts=time.time(),
                kind=kind,
                cid=command_id,
                by=arbiter,
                amount=sum(pays.values()),
                escrow=escrow_id,
                arbiter=arbiter,
            ),
            escrow=escrow_id,
        )

    def _run(
        self,
        script: str,
        keys: list[str],
        args: list[str],
        command_id: str,
        fp: str,
        body: str,
        *,
        budget: Budget | None = None,
        escrow: str | None = None,
    ) -> Receipt:
        """Run one command script (not transfer's: see `transfer`); its answer is {replayed,
        entry text}."""
        try:
            replayed, raw = self._eval(script, (*self.keys.common, *keys), (command_id, fp, body, *args))
        except redis.ResponseError as e:
            self._refused(e, args, command_id, budget, escrow)
        return self._receipt(raw, command_id, replayed=bool(replayed))

    def _receipt(self, raw: bytes, command_id: str, replayed: bool) -> Receipt:
        try:
            entry = Entry.model_validate_json(raw)
        except ValidationError as e:
            raise CorruptData(
                self.keys.journal, f"the entry of command {command_id!r} does not parse: {e}"
            ) from e
        return Receipt(entry=entry, replayed=replayed)

    def _refused(
        self,
        e: redis.ResponseError,
        args: Sequence[str],
        command_id: str,
        budget: Budget | None,
        escrow: str | None,
    ) -> NoReturn:
        """Raise what a script's error means (a p2e error), or the error itself."""
        if "P2E_" in str(e):
            raise self._error(e, args, command_id, budget, escrow) from e
        if "WRONGTYPE" in str(e):
            raise CorruptData(f"{self.keys.prefix}*", f"a key of the wrong type ({e})") from e
        raise e

    def _error(
        self,
        e: redis.ResponseError,
        args: Sequence[str],
        command_id: str,
        budget: Budget | None,
        escrow: str | None,
    ) -> Exception:
        msg = str(e)
        if "P2E_" not in msg:
            return e
        code, _, detail = msg.split("P2E_", 1)[1].partition(" ")
        words = detail.split()
        first = words[0] if words else ""
        if code == "CONFLICT":
            return CommandConflict(command_id, first)
        if code == "NO_WALLET":
            return UnknownWallet(first)
        if code == "NO_PARTY":
            return UnknownParty(first)
        if code == "FUNDS":
            # transfer: args = payer, payee, amount; lock: sponsor, arbiter, amount
            return InsufficientFunds(args[0], format_amount(int(first)), format_amount(int(args[2])))
        if code == "BUDGET" and budget is not None and budget.limit is not None:
            return BudgetExceeded(
                args[0],
                budget.scope,
                format_amount(int(first)),
                format_amount(budget.limit),
                format_amount(int(args[2])),
            )
        if code == "CAP":
            return CapExceeded(
                format_amount(int(words[0])), format_amount(int(words[1])), format_amount(int(args[1]))
            )
        if code == "NO_ESCROW":
            return UnknownEscrow(escrow or first)
        if code == "ESCROW_EXISTS":
            return InvalidArgument(f"an escrow {first!r} exists already; give the new one another id")
        if code == "ESCROW_STATE":
            return EscrowClosed(escrow or "?", first)
        if code == "NOT_ARBITER":
            return NotArbiter(escrow or "?", args[1], first)
        if code == "PAYOUT_SUM":
            return InvalidArgument(
                f"the payouts add up to {format_amount(int(words[1]))}, but escrow {escrow!r} holds "
                f"{format_amount(int(words[0]))}; they must match exactly (see p2e.ledger.split)"
            )
        if code == "REFUND_TO":
            return InvalidArgument(f"a refund goes to the sponsor {first!r} only")
        if code == "WRONGTYPE":
            return CorruptData(
                first, f"a key of the wrong type ({' '.join(words[1:])}) where the ledger keeps its data"
            )
        if code == "TAMPERED":  # wallet, balance, seal ('-': none)
            balance, seal = " ".join(words[1:-1]), words[-1]
            return BalanceTampered(first, _shown(balance), None if seal == "-" else _shown(seal))
        if code == "CORRUPT":
            return CorruptData(first, "it holds a balance too long to be one; run `p2e ledger verify`")
        return LedgerError(f"the ledger refused the command: {msg}")

    # --- escrows -------------------------------------------------------------------------------

    def escrow(self, escrow_id: str) -> EscrowInfo:
        check_wallet_name(escrow_id, "escrow")
        with self._guard():
            raw = self.r.hgetall(self.keys.escrow(escrow_id))
        if not raw:
            raise UnknownEscrow(escrow_id)
        return self._escrow_info(escrow_id, as_hash(raw))

    def escrows(self) -> list[EscrowInfo]:
        with self._guard():
            ids = [i.decode() for i in as_list(self.r.lrange(self.keys.escrows, 0, -1))]
            p = self.r.pipeline(transaction=False)
            for i in ids:
                p.hgetall(self.keys.escrow(i))
            raws = p.execute()
        return [self._escrow_info(i, raw) for i, raw in zip(ids, raws, strict=True)]

    def _escrow_info(self, escrow_id: str, raw: dict[bytes, bytes]) -> EscrowInfo:
        try:
            f = {k.decode(): v.decode() for k, v in raw.items()}
            return EscrowInfo(
                id=escrow_id,
                sponsor=f["sponsor"],
                arbiter=f["arbiter"],
                amount=int(f["amount"]),
                state=f["state"],
                memo=f.get("memo", ""),
            )
        except (KeyError, ValueError, ValidationError, UnicodeDecodeError) as e:
            raise CorruptData(self.keys.escrow(escrow_id), f"not an escrow record ({e})") from e

    # --- reading -------------------------------------------------------------------------------

    def history(self, name: str, limit: int = 50) -> list[Entry]:
        if limit < 1:
            raise InvalidArgument(f"limit {limit} must be at least 1")
        self.balance(name)  # UnknownWallet if there is none
        key = self.keys.history(name)
        with self._guard():
            seqs = self.r.lrange(key, -limit, -1)
            p = self.r.pipeline(transaction=False)
            for s in seqs:
                p.lindex(self.keys.journal, int(s))
            raws = p.execute()
        if any(r is None for r in raws):
            raise CorruptData(key, "it names journal entries that do not exist")
        return self._parse(raws, self.keys.journal)

    def audit(self, since: int = 0, limit: int | None = None) -> list[Entry]:
        if since < 0:
            raise InvalidArgument(f"--since {since}: entries are numbered from 0")
        if limit is not None and limit < 1:
            raise InvalidArgument(f"limit {limit} must be at least 1")
        end = -1 if limit is None else since + limit - 1
        with self._guard():
            raws = as_list(self.r.lrange(self.keys.journal, since, end))
        return self._parse(raws, self.keys.journal)

    def scope_entries(self, scope: str) -> list[Entry]:
        with self._guard():
            seqs = self.r.lrange(self.keys.scope(scope), 0, -1)
            p = self.r.pipeline(transaction=False)
            for seq in seqs:
                p.lindex(self.keys.journal, int(seq))
            raws = p.execute() if seqs else []
        if any(raw is None for raw in raws):
            raise CorruptData(self.keys.scope(scope), "names an entry the journal does not hold")
        return self._parse(raws, self.keys.journal)

    def _parse(self, raws: list[bytes], key: str) -> list[Entry]:
        if not raws:
            return []
        try:
            return _ENTRIES.validate_json(b"[" + b",".join(raws) + b"]")
        except ValidationError as e:
            raise CorruptData(
                key, f"an entry does not parse ({e.errors()[0]['msg']}); run `p2e ledger verify`"
            ) from e

    def metrics(self) -> LedgerMetrics:
        with self._guard():
            p = self.r.pipeline(transaction=False)
            p.hgetall(self.keys.meta)
            p.hvals(self.keys.bal)
            raw_meta, balances = p.execute()
        meta = {k.decode(): v.decode() for k, v in raw_meta.items()}
        escrows = self.escrows()
        escrowed = int(meta.get("escrowed", 0))
        return LedgerMetrics(
            backend=self.backend,
            wallets=len(balances),
            supply=sum(int(b) for b in balances) + escrowed,
            minted=int(meta.get("minted", 0)),
            cap=int(meta.get("cap", MAX_AMOUNT)),
            escrowed=escrowed,
            open_escrows=sum(1 for e in escrows if e.state == "locked"),
            volume=int(meta.get("volume", 0)),
            transfers=int(meta.get("transfers", 0)),
            entries=int(meta.get("seq", 0)),
        )

    # --- verify --------------------------------------------------------------------------------

    def verify(self) -> VerifyReport:
        """Recompute the hash chain and replay every entry: each balance after each move, no
        balance below zero, supply == minted, and the stored balances, totals and escrows equal
        what the journal says. The first bad entry is named (`first_bad`)."""
        t0 = time.perf_counter()
        k = self.keys
        with self._guard():
            p = self.r.pipeline(transaction=True)  # one consistent snapshot; later entries are not read
            p.hgetall(k.meta)
            p.hgetall(k.bal)
            p.llen(k.journal)
            p.lrange(k.escrows, 0, -1)
            raw_meta, raw_bal, n, ids = p.execute()
            p = self.r.pipeline(transaction=False)
            for i in ids:
                p.hgetall(k.escrow(i.decode()))
            raw_escrows = p.execute()
        meta = {a.decode(): b.decode() for a, b in raw_meta.items()}
        stored = {a.decode(): self._int(b, k.bal) for a, b in raw_bal.items()}
        escrow_records = {}
        for i, raw in zip(ids, raw_escrows, strict=True):
            f = {a.decode(): b.decode() for a, b in raw.items()}
            if int(f.get("locked", -1)) >= n:
                continue  # locked after the snapshot
            state = f.get("state", "")
            if state != "locked" and int(f.get("settled", -1)) >= n:
                state = "locked"  # settled after the snapshot
            escrow_records[i.decode()] = (int(f.get("amount", -1)), state, f.get("sponsor", ""))
        check = _Replay()
        for lo in range(0, n, VERIFY_CHUNK):
            with self._guard():
                raws = as_list(self.r.lrange(k.journal, lo, min(lo + VERIFY_CHUNK, n) - 1))
            for raw in raws:
                check.entry(raw)
        check.finish(meta, stored, escrow_records, n)
        return VerifyReport(
            ok=not check.problems,
            backend=self.backend,
            entries=check.seq,
            head=check.prev,
            supply=sum(stored.values()) + int(meta.get("escrowed", 0)),
            minted=int(meta.get("minted", 0)),
            escrowed=int(meta.get("escrowed", 0)),
            wallets=len(stored),
            problems=tuple(msg for _, msg in check.problems[:MAX_PROBLEMS]),
            first_bad=min((i for i, _ in check.problems if i is not None), default=None),
            seconds=time.perf_counter() - t0,
        )


def _shown(amount: str) -> str:
    """An amount from the store as a user reads it (text that is no amount: quoted as it is)."""
    try:
        return format_amount(int(amount))
    except ValueError:
        return repr(amount)


class _Replay:
    """The journal folded entry by entry (plain dicts: 100,000 entries in about a second)."""

    def __init__(self) -> None:
        self.seq = 0
        self.prev = GENESIS
        self.balances: dict[str, int] = {}
        self.minted = 0
        self.volume = 0
        self.transfers = 0
        self.escrows: dict[str, tuple[int, str, str]] = {}
        """escrow id -> (amount, state, sponsor)"""
        self.cids: set[str] = set()
        self.problems: list[tuple[int | None, str]] = []

    def bad(self, seq: int | None, why: str) -> None:
        where = f"entry {seq}: " if seq is not None else ""
        self.problems.append((seq, where + why))

    def entry(self, raw: bytes) -> None:
        i = self.seq
        self.seq += 1
        digest = hashlib.sha1(raw).hexdigest()
        prev, self.prev = self.prev, digest
        try:
            e = json.loads(raw)
            if not isinstance(e, dict):
                raise ValueError("not an object")
        except ValueError:
            self.bad(i, "does not parse as a journal entry (JSON object)")
            return
        if e.get("prev") != prev:
            if i == 0:
                self.bad(0, "its prev hash is not the genesis hash: the start of the journal was changed")
            else:
                self.bad(
                    i - 1,
                    "was altered after it was written: its hash no longer matches the prev hash "
                    f"that entry {i} recorded (or an entry was removed or inserted here)",
                )
        if e.get("seq") != i:
            self.bad(
                i, f"carries seq {e.get('seq')!r} at position {i}: entries were removed, inserted or moved"
            )
        try:
            self._apply(i, e)
        except (KeyError, TypeError, ValueError) as err:
            self.bad(i, f"is not a well-formed entry ({err.__class__.__name__}: {err})")

    def _apply(self, i: int, e: dict[str, Any]) -> None:
        kind, amount, cid = e["kind"], int(e["amount"]), e["cid"]
        if cid in self.cids:
            self.bad(i, f"repeats command id {cid!r}: a command was applied twice")
        self.cids.add(cid)
        moves = [(str(w), int(d), int(a)) for w, d, a in e["moves"]]
        for w, d, after in moves:
            if kind == "open":
                if w in self.balances:
                    self.bad(i, f"opens wallet {w!r} a second time")
                if d != 0 or after != 0:
                    self.bad(i, f"opens wallet {w!r} with a non-zero balance")
            elif w not in self.balances:
                self.bad(i, f"moves money of wallet {w!r}, which no earlier entry opened")
            bal = self.balances.get(w, 0) + d
            self.balances[w] = bal
            if bal != after:
                self.bad(i, f"says wallet {w!r} held {after} after it, but replaying the journal gives {bal}")
            if bal < 0:
                self.bad(i, f"takes wallet {w!r} below zero ({bal})")
        total = sum(d for _, d, _ in moves)
        if kind == "transfer":
            self.transfers += 1
            self.volume += amount
            if len(moves) != 2 or total != 0 or moves[0][1] != -amount:
                self.bad(i, "is a transfer whose moves are not one debit and one credit of its amount")
        elif kind == "mint":
            self.minted += amount
            if total != amount or amount <= 0:
                self.bad(i, "is a mint whose moves do not add up to its amount")
        elif kind == "lock":
            esc = e["escrow"]
            if esc in self.escrows:
                self.bad(i, f"locks escrow {esc!r} a second time")
            if total != -amount or amount <= 0:
                self.bad(i, "is an escrow lock whose debit is not its amount")
            self.escrows[esc] = (amount, "locked", moves[0][0] if moves else "")
        elif kind in ("release", "refund"):
            esc = e["escrow"]
            held = self.escrows.get(esc)
            if held is None or held[1] != "locked":
                self.bad(i, f"settles escrow {esc!r}, which is not locked at that point")
            elif total != held[0] or amount != held[0]:
                self.bad(i, f"pays out {total} from escrow {esc!r}, which holds {held[0]}")
            if held is not None:
                self.escrows[esc] = (held[0], "released" if kind == "release" else "refunded", held[2])
        elif kind != "open":
            self.bad(i, f"has an unknown kind {kind!r}")

    def _seals(self, meta: dict[str, str], stored: dict[str, int]) -> None:
        """Each balance against its seal (see the module docstring): a mismatch is a balance
        changed outside the ledger, which its next command would refuse."""
        for w, balance in sorted(stored.items()):
            seal = meta.get(f"seal:{w}")
            if seal is None and not meta.get("sealed"):
                continue  # a ledger from before seals, not initialized since
            if seal != str(balance):
                left = f"left {seal}" if seal is not None else "never set it"
                self.bad(
                    None,
                    f"wallet {w!r} holds {balance} but the ledger's last command {left}: "
                    "its balance was tampered with (changed outside the ledger)",
                )

    def finish(
        self, meta: dict[str, str], stored: dict[str, int], escrows: dict[str, tuple[int, str, str]], n: int
    ) -> None:
        if self.seq != n:
            self.bad(
                None,
                f"the journal changed while it was checked ({n} entries, {self.seq} read); run verify again",
            )
        if int(meta.get("seq", 0)) != self.seq:
            self.bad(
                None, f"the ledger says it holds {meta.get('seq', 0)} entries, the journal has {self.seq}"
            )
        if self.seq and meta.get("head") != self.prev:
            self.bad(
                self.seq - 1,
                "was altered after it was written: its hash no longer matches the ledger's recorded head",
            )
        for w in sorted(set(stored) | set(self.balances)):
            if stored.get(w) != self.balances.get(w):
                self.bad(
                    None,
                    f"wallet {w!r} holds {stored.get(w)} but the journal gives {self.balances.get(w)}",
                )
            if stored.get(w, 0) < 0:
                self.bad(None, f"wallet {w!r} holds a negative balance ({stored[w]})")
        self._seals(meta, stored)
        escrowed = sum(a for a, state, _ in self.escrows.values() if state == "locked")
        for name, value in (
            ("minted", self.minted),
            ("escrowed", escrowed),
            ("volume", self.volume),
            ("transfers", self.transfers),
        ):
            if int(meta.get(name, 0)) != value:
                self.bad(None, f"the ledger's {name} total is {meta.get(name, 0)}, the journal gives {value}")
        supply = sum(stored.values()) + int(meta.get("escrowed", 0))
        if supply != int(meta.get("minted", 0)):
            self.bad(
                None,
                f"the supply ({supply}: balances plus escrows) is not "
                f"what was minted ({meta.get('minted', 0)})",
            )
        for esc, (amount, state, sponsor) in self.escrows.items():
            rec = escrows.get(esc)
            if rec != (amount, state, sponsor):
                self.bad(
                    None, f"escrow {esc!r} is recorded as {rec}, the journal gives {(amount, state, sponsor)}"
                )
        for esc in set(escrows) - set(self.escrows):
            self.bad(None, f"escrow {esc!r} has no lock entry in the journal")
