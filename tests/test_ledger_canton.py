"""The Canton backend at the dazl boundary, and against a real ledger when one is configured.

`FakeConn` stands in for dazl's blocking connection: it records every call p2e makes (so the
tests assert the exact templates, choices, arguments, parties and command ids), answers queries
from contracts the test puts in its active contract set, and answers exercises with scripted
responses or real `grpc.aio.AioRpcError`s like the ones dazl raises, so the error mapping is
checked against the real error type. The values are dazl's own types (ContractId, CreateEvent,
ExerciseResponse, PartyInfo).

With P2E_CANTON_URL set (e.g. to a `daml sandbox` running the DAR from daml/, see
docs/ledger.md), the last tests run the same flows on that ledger.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import grpc
import pytest
from dazl.damlast.lookup import parse_type_con_name
from dazl.ledger import CreateEvent, ExerciseResponse, PartyInfo
from dazl.ledger.errors import ConnectionClosedError
from dazl.prim import ContractId
from grpc.aio import AioRpcError, Metadata

from p2e.errors import Conflict, InvalidArgument
from p2e.ledger import (
    CapExceeded,
    CommandConflict,
    EscrowClosed,
    InsufficientFunds,
    LedgerError,
    LedgerUnavailable,
    NotArbiter,
    UnknownParty,
    UnknownWallet,
    units,
)
from p2e.ledger.canton import (
    ESCROW,
    FAUCET,
    RECORD,
    RETRIES,
    WALLET,
    WALLET_REQUEST,
    CantonLedger,
    CommandIndex,
    ledger_command_id,
    map_error,
    party_hint,
)
from p2e.ledger.errors import LedgerPermissionDenied
from p2e.store import EventLog

u = units
OP, ALICE, BOB, JUDGE = "p2e-operator::1220aa", "alice::1220aa", "bob::1220aa", "judge::1220aa"
T0 = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)


def cid(template: str, value: str) -> ContractId:
    return ContractId(parse_type_con_name(template), value)


def created(template: str, value: str, payload: dict[str, Any]) -> CreateEvent:
    return CreateEvent(cid(template, value), payload, [], [], None, None)


def wallet(value: str, owner: str, name: str, balance: str) -> CreateEvent:
    return created(WALLET, value, {"operator": OP, "owner": owner, "name": name, "balance": Decimal(balance)})


def record(value: str, **fields: Any) -> CreateEvent:
    payload = {
        "operator": OP,
        "kind": "Payment",
        "payer": ALICE,
        "payee": BOB,
        "amount": Decimal("12.5"),
        "reason": "r",
        "commandId": "t1",
        "escrowId": None,
        "payerAfter": Decimal("87.5"),
        "payeeAfter": Decimal("12.5"),
        "time": T0,
    } | fields
    return created(RECORD, value, payload)


def rpc(code: grpc.StatusCode, details: str) -> AioRpcError:
    return AioRpcError(code, Metadata(), Metadata(), details=details)


def assertion(code: str, text: str) -> AioRpcError:
    """What Canton 2.x answers when a Daml `assertMsg` fails."""
    return rpc(
        grpc.StatusCode.FAILED_PRECONDITION,
        "UNHANDLED_EXCEPTION(9,1f2a3b4c): Interpretation error: Error: Unhandled Daml exception: "
        f'DA.Exception.AssertionFailed:AssertionFailed@3f4deaf1{{ message = "P2E:{code} {text}" }}',
    )


class _Stream:
    def __init__(self, events: list[CreateEvent]):
        self.events = events

    def __enter__(self) -> _Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def creates(self) -> Iterator[CreateEvent]:
        return iter(self.events)


class FakeConn:
    """dazl's blocking `Connection`, as far as p2e uses it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.parties = [
            PartyInfo(OP, "p2e-operator", True),
            PartyInfo(ALICE, "alice", True),
            PartyInfo(BOB, "bob", True),
        ]
        self.acs: list[CreateEvent] = []
        self.answers: list[ExerciseResponse | CreateEvent | BaseException] = []
        self.opened = self.closed = False

    # the calls p2e makes
    def open(self) -> None:
        self.opened = True

    def close(self) -> None:
        self.closed = True

    def list_known_parties(self) -> list[PartyInfo]:
        self.calls.append(("list_known_parties", (), {}))
        return list(self.parties)

    def allocate_party(self, **kw: Any) -> PartyInfo:
        self.calls.append(("allocate_party", (), kw))
        info = PartyInfo(f"{kw['identifier_hint']}::1220aa", kw["display_name"], True)
        self.parties.append(info)
        return info

    def query(self, template: str, match: dict[str, Any], **kw: Any) -> _Stream:
        self.calls.append(("query", (template, match), kw))
        found = [
            e
            for e in self.acs
            if str(e.contract_id.value_type).endswith(template.split(":")[-1])
            and _template(e) == template
            and all(e.payload.get(k) == v for k, v in match.items())
        ]
        return _Stream(found)

    def create(self, template: str, payload: dict[str, Any], **kw: Any) -> CreateEvent:
        self.calls.append(("create", (template, payload), kw))
        return self._answer()

    def exercise(
        self, contract: ContractId, choice: str, argument: dict[str, Any], **kw: Any
    ) -> ExerciseResponse:
        self.calls.append(("exercise", (contract, choice, argument), kw))
        return self._answer()

    def _answer(self) -> Any:
        if not self.answers:
            raise AssertionError("the fake has no scripted answer left for this call")
        a = self.answers.pop(0)
        if isinstance(a, BaseException):
            raise a
        return a

    # for the tests
    def writes(self) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
        return [c for c in self.calls if c[0] in ("create", "exercise", "allocate_party")]


def _template(e: CreateEvent) -> str:
    from dazl.damlast.util import package_local_name

    return str(package_local_name(e.contract_id.value_type))


@pytest.fixture
def conn() -> FakeConn:
    c = FakeConn()
    c.acs = [
        wallet("#w-alice", ALICE, "alice", "100"),
        wallet("#w-bob", BOB, "bob", "0"),
        created(FAUCET, "#faucet", {"issuer": OP, "cap": Decimal("1000"), "minted": Decimal("100")}),
        record(
            "#r-mint",
            kind="Minted",
            payer=OP,
            payee=ALICE,
            amount=Decimal(100),
            commandId="fund",
            payerAfter=None,
            payeeAfter=Decimal(100),
        ),
    ]
    return c


@pytest.fixture
def ledger(conn: FakeConn) -> CantonLedger:
    return CantonLedger(conn, "http://ledger:6865")


# --- the exact commands -----------------------------------------------------------------------------


def test_transfer_sends_one_exercise_as_the_payer(conn: FakeConn, ledger: CantonLedger) -> None:
    conn.answers = [
        ExerciseResponse(
            None,
            [
                wallet("#w-alice-2", ALICE, "alice", "87.5"),
                wallet("#w-bob-2", BOB, "bob", "12.5"),
                record("#r1", reason="for the report"),
            ],
        )
    ]
    r = ledger.transfer("alice", "bob", u("12.5"), reason="for the report", command_id="t1")
    assert conn.writes() == [
        (
            "exercise",
            (
                cid(WALLET, "#w-alice"),
                "Transfer",
                {
                    "payeeWallet": cid(WALLET, "#w-bob"),
                    "amount": Decimal("12.5"),
                    "reason": "for the report",
                    "commandId": "t1",
                },
            ),
            {"act_as": [ALICE], "read_as": [OP], "command_id": "t1"},
        )
    ]
    assert isinstance(conn.writes()[0][1][2]["amount"], Decimal)  # never a float
    e = r.entry
    assert not r.replayed
    assert (e.kind, e.by, e.amount, e.cid, e.reason, e.ref) == (
        "transfer",
        "alice",
        u("12.5"),
        "t1",
        "for the report",
        "#r1",
    )
    assert e.moves == (("alice", -u("12.5"), u("87.5")), ("bob", u("12.5"), u("12.5")))
    assert e.ts == T0.timestamp()
    queries = [c for c in conn.calls if c[0] == "query"]
    assert all(c[2] == {"read_as": [OP]} for c in queries)  # reads as the operator, who sees every wallet


def test_allocate_party_and_open_wallet(conn: FakeConn, ledger: CantonLedger) -> None:
    conn.answers = [created(WALLET_REQUEST, "#req", {}), ExerciseResponse(None, [])]
    info = ledger.open_wallet("carol")
    assert (info.name, info.party, info.balance) == ("carol", "carol::1220aa", 0)
    assert conn.writes() == [
        ("allocate_party", (), {"identifier_hint": "carol", "display_name": "carol"}),
        (
            "create",
            (WALLET_REQUEST, {"operator": OP, "owner": "carol::1220aa", "name": "carol"}),
            {"act_as": ["carol::1220aa"], "command_id": "open-request:carol"},
        ),
        (
            "exercise",
            (cid(WALLET_REQUEST, "#req"), "AcceptWallet", {}),
            {"act_as": [OP], "command_id": "open:carol"},
        ),
    ]
    conn.calls.clear()
    assert ledger.allocate_party("carol") == "carol::1220aa"  # known now: nothing sent
    assert ledger.open_wallet("alice").balance == u(100)  # open already: nothing sent
    assert conn.writes() == []


def test_command_ids_the_ledger_refuses_are_replaced_by_a_digest(
    conn: FakeConn, ledger: CantonLedger
) -> None:
    conn.answers = [ExerciseResponse(None, [record("#r1", commandId="tool:c1:main:call.abc@2")])]
    r = ledger.transfer("alice", "bob", u("12.5"), reason="r", command_id="tool:c1:main:call.abc@2")
    sent = conn.writes()[-1][2]["command_id"]
    assert (
        sent.startswith("p2e-") and len(sent) == 44 and sent == ledger_command_id("tool:c1:main:call.abc@2")
    )
    assert r.entry.cid == "tool:c1:main:call.abc@2"  # the record keeps p2e's id
    assert ledger_command_id("pay-1:x/y") == "pay-1:x/y"


def test_party_hints_are_what_canton_accepts() -> None:
    assert party_hint("writer-2_b") == "writer-2_b"
    dotted = party_hint("writer.v1")
    assert dotted.startswith("writer_v1-") and dotted != party_hint("writer_v1")


def test_initialize_creates_the_faucet_once_then_sets_its_cap(conn: FakeConn, ledger: CantonLedger) -> None:
    conn.acs = [e for e in conn.acs if _template(e) != FAUCET]
    conn.answers = [created(FAUCET, "#f", {})]
    ledger.initialize(u(500))
    assert conn.writes() == [
        (
            "create",
            (FAUCET, {"issuer": OP, "cap": Decimal(500), "minted": Decimal(0)}),
            {"act_as": [OP], "command_id": "p2e-faucet"},
        )
    ]
    conn.acs.append(created(FAUCET, "#f", {"issuer": OP, "cap": Decimal(500), "minted": Decimal(0)}))
    conn.calls.clear()
    conn.answers = [ExerciseResponse(None, [])]
    ledger.initialize(u(900))
    assert conn.writes() == [
        ("exercise", (cid(FAUCET, "#f"), "SetCap", {"newCap": Decimal(900)}), {"act_as": [OP]})
    ]


def test_mint_goes_through_the_faucet_as_the_issuer(conn: FakeConn, ledger: CantonLedger) -> None:
    conn.answers = [
        ExerciseResponse(
            None,
            [
                record(
                    "#r2",
                    kind="Minted",
                    payer=OP,
                    payee=BOB,
                    amount=Decimal(5),
                    commandId="m1",
                    payerAfter=None,
                    payeeAfter=Decimal(5),
                )
            ],
        )
    ]
    r = ledger.mint("bob", u(5), reason="start", command_id="m1")
    assert conn.writes() == [
        (
            "exercise",
            (
                cid(FAUCET, "#faucet"),
                "Mint",
                {"wallet": cid(WALLET, "#w-bob"), "amount": Decimal(5), "reason": "start", "commandId": "m1"},
            ),
            {"act_as": [OP], "read_as": [OP], "command_id": "m1"},
        )
    ]
    assert (r.entry.kind, r.entry.by, r.entry.moves) == ("mint", "issuer", (("bob", u(5), u(5)),))
    with pytest.raises(CapExceeded, match="cap of 1000"):  # checked before sending, and by the model
        ledger.mint("bob", u(901), reason="x", command_id="m2")


def test_escrow_lock_release_refund_commands(conn: FakeConn, ledger: CantonLedger) -> None:
    conn.parties.append(PartyInfo(JUDGE, "judge", True))
    conn.answers = [
        ExerciseResponse(
            None,
            [
                record(
                    "#r3",
                    kind="EscrowLock",
                    payee=JUDGE,
                    amount=Decimal(30),
                    commandId="l1",
                    escrowId="b1",
                    payerAfter=Decimal(70),
                    payeeAfter=None,
                )
            ],
        )
    ]
    lock = ledger.escrow_lock("alice", u(30), arbiter="judge", escrow_id="b1", command_id="l1", memo="bounty")
    assert conn.writes()[-1] == (
        "exercise",
        (
            cid(WALLET, "#w-alice"),
            "Lock",
            {"arbiter": JUDGE, "amount": Decimal(30), "escrowId": "b1", "memo": "bounty", "commandId": "l1"},
        ),
        {"act_as": [ALICE], "read_as": [OP], "command_id": "l1"},
    )
    assert lock.entry.moves == (("alice", -u(30), u(70)),) and lock.entry.arbiter == "judge"

    conn.acs.append(
        created(
            ESCROW,
            "#e1",
            {
                "operator": OP,
                "sponsor": ALICE,
                "arbiter": JUDGE,
                "amount": Decimal(30),
                "escrowId": "b1",
                "memo": "bounty",
            },
        )
    )
    with pytest.raises(NotArbiter, match="only its arbiter 'judge'"):
        ledger.escrow_release("b1", {"bob": u(30)}, arbiter="alice", command_id="r0")
    with pytest.raises(InvalidArgument, match="add up to 20"):
        ledger.escrow_release("b1", {"bob": u(20)}, arbiter="judge", command_id="r0")
    conn.answers = [
        ExerciseResponse(
            None,
            [
                record(
                    "#r4",
                    kind="EscrowRelease",
                    payer=ALICE,
                    payee=BOB,
                    amount=Decimal(20),
                    commandId="r1",
                    escrowId="b1",
                    payerAfter=None,
                    payeeAfter=Decimal(20),
                ),
                record(
                    "#r5",
                    kind="EscrowRelease",
                    payer=ALICE,
                    payee=ALICE,
                    amount=Decimal(10),
                    commandId="r1",
                    escrowId="b1",
                    payerAfter=None,
                    payeeAfter=Decimal(80),
                ),
            ],
        )
    ]
    rel = ledger.escrow_release("b1", {"bob": u(20), "alice": u(10)}, arbiter="judge", command_id="r1")
    assert conn.writes()[-1] == (
        "exercise",
        (
            cid(ESCROW, "#e1"),
            "Release",
            {
                "payouts": [
                    {"wallet": cid(WALLET, "#w-bob"), "amount": Decimal(20)},
                    {"wallet": cid(WALLET, "#w-alice"), "amount": Decimal(10)},
                ],
                "commandId": "r1",
            },
        ),
        {"act_as": [JUDGE], "read_as": [OP], "command_id": "r1"},
    )
    assert rel.entry.kind == "release" and rel.entry.amount == u(30)
    conn.answers = [
        ExerciseResponse(
            None,
            [
                record(
                    "#r6",
                    kind="EscrowRefund",
                    payer=ALICE,
                    payee=ALICE,
                    amount=Decimal(30),
                    commandId="f1",
                    escrowId="b1",
                    payerAfter=None,
                    payeeAfter=Decimal(100),
                )
            ],
        )
    ]
    ledger.escrow_refund("b1", arbiter="judge", command_id="f1")
    assert conn.writes()[-1] == (
        "exercise",
        (cid(ESCROW, "#e1"), "Refund", {"sponsorWallet": cid(WALLET, "#w-alice"), "commandId": "f1"}),
        {"act_as": [JUDGE], "read_as": [OP], "command_id": "f1"},
    )


def test_a_settled_escrow_is_closed(conn: FakeConn, ledger: CantonLedger) -> None:
    conn.parties.append(PartyInfo(JUDGE, "judge", True))
    conn.acs.append(
        record(
            "#r3",
            kind="EscrowLock",
            payee=JUDGE,
            amount=Decimal(30),
            commandId="l1",
            escrowId="b1",
            payerAfter=Decimal(70),
            payeeAfter=None,
        )
    )
    conn.acs.append(
        record(
            "#r4",
            kind="EscrowRefund",
            payer=ALICE,
            payee=ALICE,
            amount=Decimal(30),
            commandId="f1",
            escrowId="b1",
            payerAfter=None,
            payeeAfter=Decimal(100),
            time=T0 + dt.timedelta(seconds=1),
        )
    )
    with pytest.raises(EscrowClosed, match="refunded"):
        ledger.escrow_release("b1", {"bob": u(30)}, arbiter="judge", command_id="r1")
    assert [(e.id, e.state, e.sponsor, e.arbiter) for e in ledger.escrows()] == [
        ("b1", "refunded", "alice", "judge")
    ]


# --- refusals before anything is sent ---------------------------------------------------------------


def test_bad_input_is_refused_before_the_ledger(conn: FakeConn, ledger: CantonLedger) -> None:
    for bad in (
        lambda: ledger.transfer("alice", "alice", u(1), reason="r", command_id="c"),
        lambda: ledger.transfer("alice", "bob", 0, reason="r", command_id="c"),
        lambda: ledger.transfer("alice", "bob", -1, reason="r", command_id="c"),
        lambda: ledger.transfer("alice", "bob", 1.5, reason="r", command_id="c"),  # type: ignore[arg-type]
        lambda: ledger.transfer("alice", "bob", u(1), reason="r", command_id="has space"),
        lambda: ledger.escrow_lock("alice", u(1), arbiter="alice", escrow_id="e", command_id="c"),
    ):
        with pytest.raises(InvalidArgument):
            bad()
    with pytest.raises(InsufficientFunds, match="holds 100"):
        ledger.transfer("alice", "bob", u(100) + 1, reason="r", command_id="c")
    with pytest.raises(UnknownWallet):
        ledger.transfer("alice", "zed", u(1), reason="r", command_id="c")
    with pytest.raises(UnknownParty):
        ledger.escrow_lock("alice", u(1), arbiter="nobody", escrow_id="e", command_id="c")
    assert [c for c in conn.writes() if c[0] != "allocate_party"] == []


# --- ledger errors, mapped ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "expected", "says"),
    [
        (
            rpc(grpc.StatusCode.UNAVAILABLE, "connection refused"),
            LedgerUnavailable,
            "cannot reach the ledger",
        ),
        (rpc(grpc.StatusCode.DEADLINE_EXCEEDED, "too slow"), LedgerUnavailable, "too slow"),
        (ConnectionClosedError(), LedgerUnavailable, "connection is closed"),
        (
            rpc(grpc.StatusCode.PERMISSION_DENIED, "no claims"),
            LedgerPermissionDenied,
            "only be spent by its owner",
        ),
        (rpc(grpc.StatusCode.UNAUTHENTICATED, "bad token"), LedgerPermissionDenied, "bad token"),
        (
            rpc(
                grpc.StatusCode.INVALID_ARGUMENT,
                "DAML_AUTHORIZATION_ERROR(8,ab): Interpretation error: failed authorization",
            ),
            LedgerPermissionDenied,
            "lack of authority",
        ),
        (
            assertion("FUNDS", "the wallet holds less than the amount"),
            InsufficientFunds,
            "holds less than the amount",
        ),
        (assertion("AMOUNT", "the amount must be more than zero"), InvalidArgument, "(AMOUNT)"),
        (
            assertion("SELF", "a transfer needs two different parties"),
            InvalidArgument,
            "two different parties",
        ),
        (
            rpc(
                grpc.StatusCode.INVALID_ARGUMENT,
                "PARTY_NOT_KNOWN_ON_LEDGER(11,ab): Parties not known on ledger: [x]",
            ),
            UnknownParty,
            "PARTY_NOT_KNOWN",
        ),
        (rpc(grpc.StatusCode.INTERNAL, "boom"), LedgerError, "INTERNAL: boom"),
    ],
)
def test_ledger_errors_become_p2e_errors(
    conn: FakeConn, ledger: CantonLedger, error: BaseException, expected: type[Exception], says: str
) -> None:
    conn.answers = [error]
    with pytest.raises(expected) as e:
        ledger.transfer("alice", "bob", u(1), reason="r", command_id="t9")
    assert says in str(e.value)
    assert isinstance(map_error(error, "u"), expected)


def test_a_cap_assertion_from_the_model_is_cap_exceeded(conn: FakeConn, ledger: CantonLedger) -> None:
    conn.answers = [assertion("CAP", "minting this would take the supply past the faucet's cap")]
    with pytest.raises(CapExceeded, match="past the faucet's cap"):
        ledger.mint("bob", u(1), reason="x", command_id="m9")


def test_contention_is_retried_on_fresh_contracts(conn: FakeConn, ledger: CantonLedger) -> None:
    stale = rpc(
        grpc.StatusCode.NOT_FOUND, "CONTRACT_NOT_FOUND(11,ab): Contract could not be found with id #w-bob"
    )
    locked = rpc(grpc.StatusCode.ABORTED, "LOCAL_VERDICT_LOCKED_CONTRACTS(2,ab): locked contracts")
    conn.answers = [stale, locked, ExerciseResponse(None, [record("#r1")])]
    assert ledger.transfer("alice", "bob", u("12.5"), reason="r", command_id="t1").entry.ref == "#r1"
    exercises = [c for c in conn.writes() if c[0] == "exercise"]
    assert len(exercises) == 3 and {c[2]["command_id"] for c in exercises} == {"t1"}
    conn.answers = [stale] * RETRIES
    with pytest.raises(Conflict, match="kept meeting concurrent changes"):
        ledger.transfer("alice", "bob", u(1), reason="r", command_id="t2")


def test_a_duplicate_command_answers_with_the_original(conn: FakeConn, ledger: CantonLedger) -> None:
    dup = rpc(
        grpc.StatusCode.ALREADY_EXISTS,
        "DUPLICATE_COMMAND(10,ab): A command with the given command id has already been processed",
    )
    conn.acs.append(record("#r1", commandId="t1"))
    conn.answers = [dup]
    r = ledger.transfer("alice", "bob", u("12.5"), reason="r", command_id="t1")
    assert r.replayed and r.entry.ref == "#r1"
    conn.answers = [dup]
    with pytest.raises(CommandConflict):  # the same id was a different payment
        ledger.transfer("alice", "bob", u(3), reason="r", command_id="t1")
    conn.answers = [dup]
    with pytest.raises(CommandConflict):  # a duplicate whose record p2e cannot see
        ledger.transfer("alice", "bob", u(3), reason="r", command_id="t-unseen")


def test_a_command_index_pins_each_id_to_its_content(conn: FakeConn, log: EventLog) -> None:
    ledger = CantonLedger(conn, "http://ledger:6865", commands=CommandIndex(log.r, log.keys.ns))
    conn.answers = [ExerciseResponse(None, [record("#r1")])]
    ledger.transfer("alice", "bob", u("12.5"), reason="r", command_id="t1")
    conn.acs.append(record("#r1"))
    sent = len(conn.writes())
    assert ledger.transfer("alice", "bob", u("12.5"), reason="r", command_id="t1").replayed
    with pytest.raises(CommandConflict):
        ledger.transfer("alice", "bob", u(1), reason="r", command_id="t1")
    assert len(conn.writes()) == sent  # neither reached the ledger


def test_budgets_are_counted_per_episode(conn: FakeConn, ledger: CantonLedger) -> None:
    from p2e.ledger import Budget, BudgetExceeded

    conn.answers = [ExerciseResponse(None, [record("#r1", amount=Decimal(6))])]
    ledger.transfer("alice", "bob", u(6), reason="r", command_id="b1", budget=Budget(scope="ep", limit=u(10)))
    with pytest.raises(BudgetExceeded, match="6 spent"):
        ledger.transfer(
            "alice", "bob", u(5), reason="r", command_id="b2", budget=Budget(scope="ep", limit=u(10))
        )


# --- reading ----------------------------------------------------------------------------------------


def test_reads_come_from_the_active_contracts(conn: FakeConn, ledger: CantonLedger) -> None:
    conn.acs.append(record("#r1", time=T0 + dt.timedelta(seconds=5)))
    assert [(w.name, w.party, w.balance) for w in ledger.wallets()] == [
        ("alice", ALICE, u(100)),
        ("bob", BOB, 0),
    ]
    assert ledger.snapshot() == {"alice": u(100), "bob": 0}
    assert ledger.balance("alice") == u(100)
    audit = ledger.audit()
    assert [(e.seq, e.kind, e.cid) for e in audit] == [(0, "mint", "fund"), (1, "transfer", "t1")]
    assert [e.cid for e in ledger.history("bob")] == ["t1"]
    assert [e.cid for e in ledger.audit(since=1)] == ["t1"]
    m = ledger.metrics()
    assert (m.wallets, m.minted, m.cap, m.transfers, m.volume) == (2, u(100), u(1000), 1, u("12.5"))


def test_verify_checks_the_models_invariants(conn: FakeConn, ledger: CantonLedger) -> None:
    rep = ledger.verify()
    assert rep.ok and rep.supply == rep.minted == u(100)
    conn.acs[1] = wallet("#w-bob", BOB, "bob", "1")  # money from nowhere
    rep = ledger.verify()
    assert not rep.ok and "not what the faucet minted" in rep.problems[0]


def test_connect_opens_a_blocking_dazl_connection() -> None:
    seen: dict[str, Any] = {}
    fake = FakeConn()

    def dazl_connect(**kw: Any) -> FakeConn:
        seen.update(kw)
        return fake

    led = CantonLedger.connect("http://ledger:6865", dazl_connect=dazl_connect)
    assert seen == {"url": "http://ledger:6865", "admin": True, "blocking": True} and fake.opened
    led.close()
    assert fake.closed

    def down(**kw: Any) -> FakeConn:
        raise rpc(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses")

    with pytest.raises(LedgerUnavailable, match="http://nowhere:1"):
        CantonLedger.connect("http://nowhere:1", dazl_connect=down)


# --- a real ledger (P2E_CANTON_URL) -------------------------------------------------------------------

CANTON_URL = os.environ.get("P2E_CANTON_URL")
real = pytest.mark.skipif(
    not CANTON_URL, reason="set P2E_CANTON_URL to a ledger running daml/ (docs/ledger.md)"
)


@pytest.fixture
def canton() -> Iterator[CantonLedger]:
    assert CANTON_URL
    led = CantonLedger.connect(CANTON_URL, operator="p2e-test-operator")
    led.initialize()
    yield led
    led.close()


@real
def test_real_ledger_transfer_replay_and_refusals(canton: CantonLedger) -> None:
    run = uuid.uuid4().hex[:8]
    a, b = f"a{run}", f"b{run}"
    canton.open_wallet(a)
    canton.open_wallet(b)
    canton.mint(a, u(10), reason="test", command_id=f"m-{run}")
    r = canton.transfer(a, b, u("2.5"), reason="test", command_id=f"t-{run}")
    assert r.entry.moves == ((a, -u("2.5"), u("7.5")), (b, u("2.5"), u("2.5")))
    assert canton.transfer(a, b, u("2.5"), reason="test", command_id=f"t-{run}").replayed
    with pytest.raises(InsufficientFunds):
        canton.transfer(b, a, u(100), reason="test", command_id=f"t2-{run}")
    assert canton.balance(a) == u("7.5") and canton.balance(b) == u("2.5")
    assert canton.verify().ok


@real
def test_real_ledger_escrow(canton: CantonLedger) -> None:
    run = uuid.uuid4().hex[:8]
    s, w, j = f"s{run}", f"w{run}", f"j{run}"
    for name in (s, w):
        canton.open_wallet(name)
    canton.allocate_party(j)
    canton.mint(s, u(30), reason="test", command_id=f"m-{run}")
    canton.escrow_lock(s, u(30), arbiter=j, escrow_id=f"e{run}", command_id=f"l-{run}")
    with pytest.raises(NotArbiter):
        canton.escrow_release(f"e{run}", {w: u(30)}, arbiter=s, command_id=f"r0-{run}")
    canton.escrow_release(f"e{run}", {w: u(30)}, arbiter=j, command_id=f"r-{run}")
    assert canton.balance(w) == u(30)
    assert canton.escrow(f"e{run}").state == "released"
