"""The embedded ledger against the real store: every command, every refusal, idempotency, the
hash-chained journal and `verify`, and survival of a store crash.

These run on the session's embedded Valkey, and again in CI on stock Redis 7 (they take the
`store_url` fixture, so they are marked `store`).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from p2e.errors import Conflict, CorruptData, InvalidArgument, NotFound
from p2e.ledger import (
    MAX_AMOUNT,
    Budget,
    BudgetExceeded,
    CapExceeded,
    CommandConflict,
    EmbeddedLedger,
    EscrowClosed,
    InsufficientFunds,
    NotArbiter,
    Receipt,
    UnknownEscrow,
    UnknownParty,
    UnknownWallet,
    units,
)
from p2e.store.server import ensure_embedded, stop_embedded

u = units


@pytest.fixture
def ledger(store_url: str, namespace: str) -> Iterator[EmbeddedLedger]:
    led = EmbeddedLedger(store_url, namespace)
    led.initialize()
    yield led
    led.close()


@pytest.fixture
def funded(ledger: EmbeddedLedger) -> EmbeddedLedger:
    """alice 100, bob 0, carol 0; judge is a party without a wallet."""
    for w in ("alice", "bob", "carol"):
        ledger.open_wallet(w)
    ledger.allocate_party("judge")
    ledger.mint("alice", u(100), reason="start", command_id="fund-alice")
    return ledger


def pay(ledger: EmbeddedLedger, a: str, b: str, amount: str, cid: str, reason: str = "r") -> Receipt:
    return ledger.transfer(a, b, u(amount), reason=reason, command_id=cid)


# --- wallets and moves ------------------------------------------------------------------------------


def test_open_wallet_is_idempotent(ledger: EmbeddedLedger) -> None:
    first = ledger.open_wallet("alice")
    assert (first.name, first.party, first.balance) == ("alice", "alice", 0)
    ledger.mint("alice", u(5), reason="x", command_id="m")
    again = ledger.open_wallet("alice")
    assert again.balance == u(5)  # opening again changes nothing
    assert [e.kind for e in ledger.audit()] == ["open", "mint"]
    assert ledger.allocate_party("alice") == "alice"


def test_transfer_moves_exact_amounts_and_journals_them(funded: EmbeddedLedger) -> None:
    r = pay(funded, "alice", "bob", "12.5", "t1", reason="for the report")
    assert not r.replayed
    e = r.entry
    assert (e.kind, e.cid, e.by, e.amount, e.reason) == (
        "transfer",
        "t1",
        "alice",
        u("12.5"),
        "for the report",
    )
    assert e.moves == (("alice", -u("12.5"), u("87.5")), ("bob", u("12.5"), u("12.5")))
    assert e.describe() == "transfer 12.5 alice -> bob (for the report)"
    assert funded.snapshot() == {"alice": u("87.5"), "bob": u("12.5"), "carol": 0}
    pay(funded, "alice", "carol", "0.0000000001", "t2")
    assert funded.balance("carol") == 1


def test_a_retried_command_is_applied_once_and_answers_the_original(funded: EmbeddedLedger) -> None:
    first = pay(funded, "alice", "bob", "10", "pay-1")
    for _ in range(3):
        again = pay(funded, "alice", "bob", "10", "pay-1")
        assert again.replayed and again.entry == first.entry
    assert funded.snapshot()["bob"] == u(10)
    assert funded.metrics().transfers == 1
    # a retry is answered even when the same payment could no longer be made
    pay(funded, "alice", "carol", "90", "drain")
    assert pay(funded, "alice", "bob", "10", "pay-1").replayed


@pytest.mark.parametrize(
    "other",
    [
        {"payee": "carol"},
        {"amount": "11"},
        {"reason": "something else"},
        {"payer": "bob", "payee": "alice"},
    ],
)
def test_a_command_id_reused_for_another_command_is_a_conflict(funded: EmbeddedLedger, other: dict) -> None:
    pay(funded, "alice", "bob", "10", "pay-1", reason="r")
    pay(funded, "alice", "bob", "5", "pay-2", reason="r")
    args = {"payer": "alice", "payee": "bob", "amount": "10", "reason": "r"} | other
    with pytest.raises(CommandConflict, match="pay-1") as e:
        funded.transfer(
            args["payer"], args["payee"], u(args["amount"]), reason=args["reason"], command_id="pay-1"
        )
    assert isinstance(e.value, Conflict)
    assert funded.snapshot() == {"alice": u(85), "bob": u(15), "carol": 0}


def test_a_mint_id_cannot_be_reused_as_a_transfer(funded: EmbeddedLedger) -> None:
    with pytest.raises(CommandConflict):
        pay(funded, "alice", "bob", "100", "fund-alice")


def test_overdraft_is_refused_to_the_minor_unit(funded: EmbeddedLedger) -> None:
    with pytest.raises(InsufficientFunds, match=r"'alice' holds 100, less than the 100.0000000001"):
        funded.transfer("alice", "bob", u(100) + 1, reason="r", command_id="too-much")
    with pytest.raises(InsufficientFunds):
        pay(funded, "bob", "alice", "1", "from-empty")
    assert funded.snapshot() == {"alice": u(100), "bob": 0, "carol": 0}
    pay(funded, "alice", "bob", "100", "all")  # the whole balance is fine
    assert funded.balance("alice") == 0


def test_a_refused_command_leaves_its_id_free(funded: EmbeddedLedger) -> None:
    with pytest.raises(InsufficientFunds):
        pay(funded, "bob", "carol", "5", "later")
    pay(funded, "alice", "bob", "5", "top-up")
    assert not pay(funded, "bob", "carol", "5", "later").replayed
    assert funded.balance("carol") == u(5)


def test_unknown_wallets_and_parties(funded: EmbeddedLedger) -> None:
    with pytest.raises(UnknownWallet, match="'zed'"):
        pay(funded, "alice", "zed", "1", "c1")
    with pytest.raises(UnknownWallet, match="'zed'"):
        pay(funded, "zed", "alice", "1", "c2")
    with pytest.raises(UnknownWallet):
        funded.mint("zed", u(1), reason="x", command_id="c3")
    with pytest.raises(UnknownWallet):
        funded.balance("zed")
    with pytest.raises(UnknownWallet):
        funded.history("zed")
    with pytest.raises(UnknownParty, match="'nobody'"):
        funded.escrow_lock("alice", u(1), arbiter="nobody", escrow_id="e1", command_id="c4")
    assert isinstance(UnknownWallet("x"), NotFound)
    assert funded.metrics().entries == 4  # 3 opens and 1 mint: nothing refused was journaled


def test_transfer_to_oneself_is_refused(funded: EmbeddedLedger) -> None:
    with pytest.raises(InvalidArgument, match="both 'alice'"):
        pay(funded, "alice", "alice", "1", "self")


@pytest.mark.parametrize("amount", [0, -5, 1.5, "5", True, MAX_AMOUNT + 1, None])
def test_bad_amounts_are_refused_before_the_store(funded: EmbeddedLedger, amount: object) -> None:
    with pytest.raises(InvalidArgument):
        funded.transfer("alice", "bob", amount, reason="r", command_id="c")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        funded.mint("alice", amount, reason="r", command_id="c")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("payer", "payee", "cid", "reason"),
    [
        ("a b", "bob", "c", ""),
        ("alice", "../x", "c", ""),
        ("alice", "bob", "", ""),
        ("alice", "bob", "has space", ""),
        ("alice", "bob", "c" * 201, ""),
        ("alice", "bob", "c", "x" * 501),
    ],
)
def test_bad_names_ids_and_reasons_are_refused(
    funded: EmbeddedLedger, payer: str, payee: str, cid: str, reason: str
) -> None:
    with pytest.raises(InvalidArgument):
        funded.transfer(payer, payee, u(1), reason=reason, command_id=cid)


def test_unicode_reasons_are_kept_and_verify(funded: EmbeddedLedger) -> None:
    r = pay(funded, "alice", "bob", "1", "u1", reason='für "Bob" \u2014 ok\n')
    assert r.entry.reason == 'für "Bob" \u2014 ok\n'
    assert funded.history("bob")[-1].reason == r.entry.reason
    assert funded.verify().ok


def test_a_budget_is_checked_atomically_with_the_payment(funded: EmbeddedLedger) -> None:
    b = Budget(scope="episode-1", limit=u(10))
    funded.transfer("alice", "bob", u(6), reason="r", command_id="b1", budget=b)
    funded.transfer("alice", "bob", u(6), reason="r", command_id="b1", budget=b)  # a retry is free
    with pytest.raises(BudgetExceeded, match=r"budget of 10 for episode 'episode-1' \(6 spent"):
        funded.transfer("alice", "bob", u(5), reason="r", command_id="b2", budget=b)
    funded.transfer("alice", "bob", u(4), reason="r", command_id="b3", budget=b)
    other = Budget(scope="episode-2", limit=u(10))
    funded.transfer("alice", "bob", u(10), reason="r", command_id="b4", budget=other)
    assert funded.balance("bob") == u(20)


# --- faucet -----------------------------------------------------------------------------------------


def test_the_faucet_cap(ledger: EmbeddedLedger) -> None:
    ledger.open_wallet("alice")
    ledger.initialize(u(50))
    ledger.mint("alice", u(30), reason="x", command_id="m1")
    with pytest.raises(CapExceeded, match=r"cap of 50 \(30 minted"):
        ledger.mint("alice", u(20) + 1, reason="x", command_id="m2")
    ledger.mint("alice", u(20), reason="x", command_id="m3")
    with pytest.raises(InvalidArgument, match="below the 50 minted"):
        ledger.initialize(u(49))
    ledger.initialize()  # keeps the cap
    assert ledger.metrics().cap == u(50)
    ledger.initialize(u(60))
    ledger.mint("alice", u(10), reason="x", command_id="m4")
    assert ledger.metrics().minted == u(60)


# --- escrow -----------------------------------------------------------------------------------------


def test_escrow_lock_and_release_split(funded: EmbeddedLedger) -> None:
    lock = funded.escrow_lock(
        "alice", u(30), arbiter="judge", escrow_id="bounty", command_id="l1", memo="best"
    )
    assert lock.entry.moves == (("alice", -u(30), u(70)),)
    info = funded.escrow("bounty")
    assert (info.sponsor, info.arbiter, info.amount, info.state, info.memo) == (
        "alice",
        "judge",
        u(30),
        "locked",
        "best",
    )
    assert funded.metrics().escrowed == u(30) and funded.metrics().supply == u(100)
    rel = funded.escrow_release("bounty", {"bob": u(20), "carol": u(10)}, arbiter="judge", command_id="r1")
    assert rel.entry.kind == "release" and rel.entry.describe() == "release 30 escrow bounty -> bob,carol"
    assert funded.snapshot() == {"alice": u(70), "bob": u(20), "carol": u(10)}
    assert funded.escrow("bounty").state == "released"
    assert funded.escrow_release(
        "bounty", {"bob": u(20), "carol": u(10)}, arbiter="judge", command_id="r1"
    ).replayed
    assert funded.verify().ok


def test_escrow_refund_goes_back_to_the_sponsor(funded: EmbeddedLedger) -> None:
    funded.escrow_lock("alice", u(30), arbiter="judge", escrow_id="bounty", command_id="l1")
    funded.escrow_refund("bounty", arbiter="judge", command_id="f1")
    assert funded.balance("alice") == u(100)
    assert funded.escrow("bounty").state == "refunded"
    assert funded.verify().ok


def test_escrow_refusals(funded: EmbeddedLedger) -> None:
    lock = dict(arbiter="judge", escrow_id="bounty")
    with pytest.raises(InsufficientFunds):
        funded.escrow_lock("alice", u(101), command_id="l0", **lock)
    with pytest.raises(InvalidArgument, match="both the sponsor and the arbiter"):
        funded.escrow_lock("alice", u(1), arbiter="alice", escrow_id="e", command_id="l-self")
    funded.escrow_lock("alice", u(30), command_id="l1", **lock)
    with pytest.raises(InvalidArgument, match="exists already"):
        funded.escrow_lock("alice", u(1), command_id="l2", **lock)
    with pytest.raises(NotArbiter, match="only its arbiter 'judge'"):
        funded.escrow_release("bounty", {"alice": u(30)}, arbiter="alice", command_id="r0")
    with pytest.raises(NotArbiter):
        funded.escrow_refund("bounty", arbiter="bob", command_id="f0")
    with pytest.raises(InvalidArgument, match="add up to 29, but escrow 'bounty' holds 30"):
        funded.escrow_release("bounty", {"bob": u(29)}, arbiter="judge", command_id="r1")
    with pytest.raises(InvalidArgument, match="add up to 31"):
        funded.escrow_release("bounty", {"bob": u(20), "carol": u(11)}, arbiter="judge", command_id="r2")
    with pytest.raises(InvalidArgument, match="at least one payee"):
        funded.escrow_release("bounty", {}, arbiter="judge", command_id="r3")
    with pytest.raises(UnknownWallet):
        funded.escrow_release("bounty", {"zed": u(30)}, arbiter="judge", command_id="r4")
    with pytest.raises(UnknownEscrow):
        funded.escrow_release("nope", {"bob": u(30)}, arbiter="judge", command_id="r5")
    funded.escrow_release("bounty", {"bob": u(30)}, arbiter="judge", command_id="r6")
    with pytest.raises(EscrowClosed, match="released already"):
        funded.escrow_refund("bounty", arbiter="judge", command_id="f1")
    with pytest.raises(EscrowClosed):
        funded.escrow_release("bounty", {"carol": u(30)}, arbiter="judge", command_id="r7")
    assert funded.snapshot() == {"alice": u(70), "bob": u(30), "carol": 0}
    assert funded.verify().ok


# --- reading ----------------------------------------------------------------------------------------


def test_history_audit_and_metrics(funded: EmbeddedLedger) -> None:
    for i in range(5):
        pay(funded, "alice", "bob", "1", f"h{i}")
    pay(funded, "bob", "carol", "2", "bc")
    bob = funded.history("bob")
    assert [e.cid for e in bob] == ["open:bob", "h0", "h1", "h2", "h3", "h4", "bc"]
    assert [e.after("bob") for e in bob][-2:] == [u(5), u(3)]
    assert [e.cid for e in funded.history("bob", limit=2)] == ["h4", "bc"]
    everything = funded.audit()
    assert [e.seq for e in everything] == list(range(len(everything)))
    assert [e.cid for e in funded.audit(since=4, limit=2)] == ["h0", "h1"]
    assert funded.audit(since=1000) == []
    with pytest.raises(InvalidArgument):
        funded.audit(since=-1)
    m = funded.metrics()
    assert (m.wallets, m.transfers, m.volume, m.minted, m.supply, m.entries) == (
        3,
        6,
        u(7),
        u(100),
        u(100),
        10,
    )


# --- verify -----------------------------------------------------------------------------------------


def _busy(ledger: EmbeddedLedger) -> None:
    for i in range(6):
        pay(ledger, "alice", "bob" if i % 2 else "carol", "1.5", f"v{i}")
    ledger.escrow_lock("alice", u(10), arbiter="judge", escrow_id="e", command_id="vl")


def test_verify_passes_on_an_honest_ledger(funded: EmbeddedLedger) -> None:
    _busy(funded)
    rep = funded.verify()
    assert rep.ok and rep.problems == () and rep.first_bad is None
    assert (rep.entries, rep.supply, rep.minted, rep.escrowed) == (11, u(100), u(100), u(10))
    assert len(rep.head) == 40


def test_verify_names_an_entry_altered_after_the_fact(funded: EmbeddedLedger) -> None:
    _busy(funded)
    key = funded.keys.journal
    e = json.loads(funded.r.lindex(key, 6))
    e["amount"] = u(1)  # someone rewrites a payment to look smaller
    funded.r.lset(key, 6, json.dumps(e, separators=(",", ":")))
    rep = funded.verify()
    assert not rep.ok and rep.first_bad == 6
    assert any(p.startswith("entry 6: was altered") for p in rep.problems)


def test_verify_sees_through_a_relinked_chain(funded: EmbeddedLedger) -> None:
    """Rewriting an entry and the next one's prev hash moves the break, but the replay still
    finds the forged entry (its moves no longer match its amount)."""
    import hashlib

    _busy(funded)
    key = funded.keys.journal
    raw = json.loads(funded.r.lindex(key, 5))
    raw["moves"][0][1] = -1  # debit 1 minor unit instead of 1.5
    forged = json.dumps(raw, separators=(",", ":")).encode()
    funded.r.lset(key, 5, forged)
    nxt = json.loads(funded.r.lindex(key, 6))
    nxt["prev"] = hashlib.sha1(forged).hexdigest()
    funded.r.lset(key, 6, json.dumps(nxt, separators=(",", ":")))
    rep = funded.verify()
    assert not rep.ok and rep.first_bad == 5


@pytest.mark.parametrize(
    ("tamper", "first_bad", "says"),
    [
        (lambda r, k: r.lset(k.journal, 3, b"{not json"), 3, "does not parse"),
        (
            lambda r, k: (r.lset(k.journal, 4, b"gone"), r.lrem(k.journal, 1, b"gone")),
            3,
            "removed or inserted",
        ),
        (lambda r, k: r.hset(k.bal, "bob", 10**15), None, "wallet 'bob' holds"),
        (lambda r, k: r.hset(k.meta, "minted", 1), None, "minted"),
        (lambda r, k: r.hset(k.meta, "head", "0" * 40), 10, "recorded head"),
        (lambda r, k: r.hset(k.bal, "carol", -5), None, "negative"),
    ],
)
def test_verify_finds_tampering(
    funded: EmbeddedLedger, tamper: Callable[[Any, Any], object], first_bad: int | None, says: str
) -> None:
    _busy(funded)
    tamper(funded.r, funded.keys)
    rep = funded.verify()
    assert not rep.ok
    assert rep.first_bad == first_bad
    assert any(says in p for p in rep.problems), rep.problems


def test_a_key_of_the_wrong_type_is_corrupt_data(ledger: EmbeddedLedger) -> None:
    ledger.r.set(ledger.keys.bal, "not a hash")
    with pytest.raises(CorruptData):
        ledger.open_wallet("alice")
    with pytest.raises(CorruptData):
        ledger.snapshot()


# --- durability -------------------------------------------------------------------------------------


def test_committed_commands_survive_a_store_crash(tmp_path: Path) -> None:
    """SIGKILL the embedded Valkey (no shutdown, no save): its append-only file has every
    acknowledged command, because the server writes it before it replies."""
    home = tmp_path / "home"
    info = ensure_embedded(home)
    try:
        led = EmbeddedLedger(info.url, "durable")
        for w in ("alice", "bob"):
            led.open_wallet(w)
        led.mint("alice", u(100), reason="x", command_id="m")
        for i in range(50):
            pay(led, "alice", "bob", "0.5", f"p{i}")
        before, head = led.snapshot(), led.verify().head
        led.close()
        os.kill(info.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{info.pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        again = ensure_embedded(home)
        assert again.pid != info.pid
        led = EmbeddedLedger(again.url, "durable")
        assert led.snapshot() == before == {"alice": u(75), "bob": u(25)}
        rep = led.verify()
        assert rep.ok and rep.head == head and rep.entries == 53
        assert pay(led, "alice", "bob", "0.5", "p49").replayed  # the command ids came back too
        led.close()
    finally:
        stop_embedded(home)


def test_redis_is_reachable_for_the_fixture(store_url: str) -> None:
    assert redis.Redis.from_url(store_url).ping()


def test_ledger_errors_cross_processes_as_themselves() -> None:
    """A Wallet actor's refusal is pickled by Ray: it must come back as the same error."""
    import pickle

    from p2e.ledger import BudgetExceeded, PolicyViolation

    for e in (
        BudgetExceeded("alice", "ep", "7", "10", "4"),
        InsufficientFunds("alice", "1", "2"),
        CommandConflict("c1", 3),
        UnknownWallet("zed"),
        NotArbiter("e", "alice", "judge"),
        PolicyViolation("no"),
    ):
        back = pickle.loads(pickle.dumps(e))
        assert type(back) is type(e) and str(back) == str(e) and back.__dict__ == e.__dict__


def test_open_ledger_uses_the_namespaces_recorded_backend(
    store_url: str, namespace: str, log: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from p2e.ledger import LedgerSettings, open_ledger
    from p2e.ledger.settings import load_settings, save_settings

    led = open_ledger(store_url, namespace)
    assert isinstance(led, EmbeddedLedger) and led.keys.ns == namespace
    led.close()
    assert load_settings(log) is None
    save_settings(log, LedgerSettings(backend="canton"))
    monkeypatch.delenv("P2E_CANTON_URL", raising=False)
    with pytest.raises(InvalidArgument, match="needs a Ledger API URL"):
        open_ledger(store_url, namespace)
    assert isinstance(open_ledger(store_url, namespace, backend="embedded"), EmbeddedLedger)
    log.r.set(led.keys.config, "{garbage")
    with pytest.raises(CorruptData):
        open_ledger(store_url, namespace)
