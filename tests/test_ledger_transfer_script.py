"""The transfer's fast path: `transfer.lua` (self-contained, a short answer) and the ledger's own
connections.

The receipt is built by the client from what it sent and the script's short answer, so it must
equal the entry the journal holds; the script does decimal arithmetic on text (exact up to 10^18
and past it); a key of the wrong type leaves everything as it was; and a lost connection or a
flushed script cache falls back to redis-py's path without applying anything twice.
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_ledger_properties import wipe_ledger

from p2e.errors import CorruptData, StoreUnavailable
from p2e.ledger import MAX_AMOUNT, Budget, EmbeddedLedger, InsufficientFunds, units

u = units


@pytest.fixture
def ledger(store_url: str, namespace: str) -> Iterator[EmbeddedLedger]:
    led = EmbeddedLedger(store_url, namespace)
    led.initialize()
    for w in ("alice", "bob", "carol"):
        led.open_wallet(w)
    yield led
    led.close()


def _state(led: EmbeddedLedger) -> dict[bytes, object]:
    """Every key of the ledger and what it holds."""
    read = {
        b"hash": led.r.hgetall,
        b"list": lambda k: led.r.lrange(k, 0, -1),
        b"string": led.r.get,
    }
    return {k: read[led.r.type(k)](k) for k in led.r.scan_iter(match=f"{led.keys.prefix}*")}


@pytest.mark.parametrize(
    "reason", ["", "for the report", 'quotes " and \\ backslash', "für 🍕 — naïve", "x" * 500]
)
def test_the_receipt_is_the_entry_the_journal_holds(ledger: EmbeddedLedger, reason: str) -> None:
    ledger.mint("alice", u(100), reason="start", command_id="m")
    r = ledger.transfer("alice", "bob", u("12.5"), reason=reason, command_id="t1")
    stored = ledger.audit(since=r.entry.seq)[0]
    assert r.entry == stored and not r.replayed
    assert r.entry.moves == (("alice", -u("12.5"), u("87.5")), ("bob", u("12.5"), u("12.5")))
    assert r.entry.prev == hashlib.sha1(ledger.r.lindex(ledger.keys.journal, r.entry.seq - 1)).hexdigest()
    again = ledger.transfer("alice", "bob", u("12.5"), reason=reason, command_id="t1")
    assert again.replayed and again.entry == stored
    assert ledger.history("bob")[-1] == stored
    assert ledger.verify().ok


def test_a_budgeted_transfer_counts_what_was_spent(ledger: EmbeddedLedger) -> None:
    ledger.mint("alice", u(100), reason="start", command_id="m")
    b = Budget(scope="épisode-1", limit=u(10))  # the scope may be any text
    ledger.transfer("alice", "bob", u(4), reason="r", command_id="b1", budget=b)
    ledger.transfer("alice", "bob", u(6), reason="r", command_id="b2", budget=b)
    assert ledger.r.hget(ledger.keys.spent("alice"), "épisode-1") == str(u(10)).encode()
    assert ledger.verify().ok


def test_balances_past_doubles_are_exact(ledger: EmbeddedLedger) -> None:
    """Amounts and balances up to 10^18 minor units: the script's text arithmetic (doubles below
    10^15, two 9-digit limbs above) against Python's integers, at the limbs' edges."""
    ledger.mint("alice", MAX_AMOUNT, reason="all of it", command_id="m")
    want = {"alice": MAX_AMOUNT, "bob": 0, "carol": 0}
    amounts = [1, 10**9 - 1, 10**9, 10**9 + 1, 10**15 - 1, 10**15, 10**15 + 1, 2**53 + 1, 10**17 + 123]
    i = 0
    for amount in amounts + amounts[::-1]:
        for payer, payee in (("alice", "bob"), ("bob", "carol"), ("carol", "alice")):
            if want[payer] < amount:
                continue
            i += 1
            r = ledger.transfer(payer, payee, amount, reason="", command_id=f"t{i}")
            want[payer] -= amount
            want[payee] += amount
            assert r.entry.moves == ((payer, -amount, want[payer]), (payee, amount, want[payee]))
    assert ledger.snapshot() == want
    with pytest.raises(InsufficientFunds):
        ledger.transfer("bob", "carol", want["bob"] + 1, reason="", command_id="too-much")
    rep = ledger.verify()
    assert rep.ok, rep.problems
    assert ledger.metrics().volume == sum(e.amount for e in ledger.audit() if e.kind == "transfer")


def test_a_volume_past_24_digits_still_adds_exactly(ledger: EmbeddedLedger) -> None:
    ledger.mint("alice", u(1), reason="start", command_id="m")
    ledger.r.hset(ledger.keys.meta, "volume", "9" * 30)  # millions of the largest payments later
    ledger.transfer("alice", "bob", 12345, reason="", command_id="t")
    assert ledger.r.hget(ledger.keys.meta, "volume") == str(int("9" * 30) + 12345).encode()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    start=st.integers(min_value=1, max_value=MAX_AMOUNT),
    other=st.integers(min_value=0, max_value=10**15),
    data=st.data(),
)
def test_text_arithmetic_matches_python(
    ledger: EmbeddedLedger, start: int, other: int, data: st.DataObject
) -> None:
    wipe_ledger(ledger)
    for w in ("alice", "bob"):
        ledger.open_wallet(w)
    ledger.mint("alice", start, reason="", command_id="m1")
    if other and start < MAX_AMOUNT:  # the supply may not pass the faucet's cap
        ledger.mint("bob", min(other, MAX_AMOUNT - start), reason="", command_id="m2")
    bal = ledger.snapshot()
    amount = data.draw(st.integers(min_value=1, max_value=start))
    r = ledger.transfer("alice", "bob", amount, reason="", command_id="t")
    assert r.entry.moves == (("alice", -amount, bal["alice"] - amount), ("bob", amount, bal["bob"] + amount))
    assert ledger.verify().ok


def test_the_whole_supply_moves_in_one_transfer(ledger: EmbeddedLedger) -> None:
    """The edge the property test once drew: every unit the cap allows, in one wallet."""
    ledger.mint("alice", MAX_AMOUNT, reason="", command_id="m1")
    r = ledger.transfer("alice", "bob", MAX_AMOUNT, reason="", command_id="t")
    assert r.entry.moves == (("alice", -MAX_AMOUNT, 0), ("bob", MAX_AMOUNT, MAX_AMOUNT))
    assert ledger.verify().ok


@pytest.mark.parametrize("which", ["payer", "payee", "journal"])
def test_a_list_of_the_wrong_type_changes_nothing(ledger: EmbeddedLedger, which: str) -> None:
    """The three lists are the keys the script does not read before writing: a foreign key of
    another type fails its push, and the pushes before it are taken back."""
    ledger.mint("alice", u(100), reason="start", command_id="m")
    k = ledger.keys
    key = {"payer": k.history("alice"), "payee": k.history("bob"), "journal": k.journal}[which]
    if which == "journal":
        ledger.r.rename(key, key + ":saved")
    else:
        ledger.r.delete(key)
    ledger.r.set(key, "not a list")
    before = _state(ledger)
    with pytest.raises(CorruptData):
        ledger.transfer("alice", "bob", u(1), reason="r", command_id="t")
    assert _state(ledger) == before


def test_a_lost_connection_falls_back_and_applies_once(ledger: EmbeddedLedger) -> None:
    ledger.mint("alice", u(100), reason="start", command_id="m")
    ledger.transfer("alice", "bob", u(1), reason="r", command_id="t1")
    (conn,) = ledger._conns  # the ledger's own connection, idle between commands
    conn.send_command("CLIENT", "ID")
    assert ledger.r.client_kill_filter(_id=conn.read_response()) == 1
    r = ledger.transfer("alice", "bob", u(2), reason="r", command_id="t2")
    assert not r.replayed and ledger.balance("bob") == u(3)
    assert ledger.transfer("alice", "bob", u(3), reason="r", command_id="t3").entry.seq == r.entry.seq + 1
    assert ledger.verify().ok


def test_a_flushed_script_cache_is_reloaded(ledger: EmbeddedLedger) -> None:
    ledger.mint("alice", u(100), reason="start", command_id="m")
    ledger.r.script_flush()
    r = ledger.transfer("alice", "bob", u(1), reason="r", command_id="t1")
    assert not r.replayed and ledger.balance("bob") == u(1)
    ledger.r.script_flush()
    before = _state(ledger)
    assert ledger.transfer("alice", "bob", u(1), reason="r", command_id="t1").replayed
    assert _state(ledger) == before and ledger.balance("bob") == u(1)  # applied once
    assert ledger.verify().ok


def test_an_unreachable_store_is_store_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"redis://127.0.0.1:{s.getsockname()[1]}"  # nothing listens there
    led = EmbeddedLedger(url, "p2etest-nowhere")
    try:
        with pytest.raises(StoreUnavailable, match=url):
            led.transfer("alice", "bob", 1, reason="", command_id="t")
    finally:
        led.close()
