"""Property: threads paying concurrently from one wallet never double-spend.

Hypothesis draws a starting balance, a list of payments (payee, amount) and a number of
threads; every payment is sent by two threads at once with the same command id (a retry racing
the original). Whatever the interleaving: each command id is applied at most once, money is
conserved, no balance goes below zero, the payer lost exactly what the accepted payments add up
to, and `verify` passes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2e.ledger import EmbeddedLedger, InsufficientFunds, Receipt

PAYEES = ("p0", "p1", "p2")


@pytest.fixture
def ledger(store_url: str, namespace: str) -> Iterator[EmbeddedLedger]:
    led = EmbeddedLedger(store_url, namespace)
    yield led
    led.close()


def wipe_ledger(led: EmbeddedLedger) -> None:
    """Every key of the ledger's namespace gone (a property test starts each example afresh)."""
    keys = list(led.r.scan_iter(match=f"{led.keys.prefix}*", count=1000))
    if keys:
        led.r.unlink(*keys)


payments = st.lists(
    st.tuples(st.sampled_from(PAYEES), st.integers(min_value=1, max_value=40)), min_size=1, max_size=30
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    start=st.integers(min_value=0, max_value=200),
    pays=payments,
    threads=st.integers(min_value=2, max_value=6),
)
def test_concurrent_payments_from_one_wallet_conserve_money(
    ledger: EmbeddedLedger, start: int, pays: list[tuple[str, int]], threads: int
) -> None:
    wipe_ledger(ledger)
    for w in ("payer", *PAYEES):
        ledger.open_wallet(w)
    if start:
        ledger.mint("payer", start, reason="start", command_id="start")
    work = [(f"c{i}", payee, amount) for i, (payee, amount) in enumerate(pays)]
    work += work  # every command twice: a retry racing the original
    results: dict[str, list[Receipt | str]] = {cid: [] for cid, _, _ in work}
    lock = threading.Lock()
    go = threading.Barrier(threads)

    def run(share: list[tuple[str, str, int]]) -> None:
        go.wait()
        for cid, payee, amount in share:
            try:
                out: Receipt | str = ledger.transfer("payer", payee, amount, reason="prop", command_id=cid)
            except InsufficientFunds:
                out = "refused"
            with lock:
                results[cid].append(out)

    pool = [threading.Thread(target=run, args=(work[i::threads],)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()

    snap = ledger.snapshot()
    assert all(b >= 0 for b in snap.values()), snap
    assert sum(snap.values()) == start  # nothing created, nothing lost
    applied = {}
    for cid, outs in results.items():
        receipts = [o for o in outs if isinstance(o, Receipt)]
        fresh = [r for r in receipts if not r.replayed]
        assert len(fresh) <= 1, f"{cid} applied {len(fresh)} times"
        assert len({r.entry.seq for r in receipts}) <= 1  # retries answer with the original
        if receipts:
            applied[cid] = receipts[0].entry.amount
    assert snap["payer"] == start - sum(applied.values())
    per_payee = {p: sum(a for cid, p2, a in work[: len(pays)] if p2 == p and cid in applied) for p in PAYEES}
    assert {p: snap[p] for p in PAYEES} == per_payee
    rep = ledger.verify()
    assert rep.ok, rep.problems
    assert rep.entries == 1 + len(PAYEES) + (1 if start else 0) + len(applied)
