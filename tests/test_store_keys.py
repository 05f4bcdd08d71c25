"""The key layout (p2e/store/keys.py): stored data keeps working only if every key stays
byte-identical, and the module's table is the one place that documents them all."""

from __future__ import annotations

import re

from p2e.store import keys as keys_module
from p2e.store.keys import Keys, LedgerKeys

PINNED = {
    "convs": "p2e:convs",
    "names": "p2e:names",
    "embedded": "p2e:embedded",
    "conv": "p2e:conv:cid",
    "branches": "p2e:conv:cid:branches",
    "branch": "p2e:conv:cid:br:b",
    "events": "p2e:conv:cid:br:b:ev",
    "snapshots": "p2e:conv:cid:br:b:snap",
    "partial": "p2e:conv:cid:br:b:partial",
    "by_kind": "p2e:conv:cid:ix:kind:K",
    "by_agent": "p2e:conv:cid:ix:agent:A",
    "notes": "p2e:conv:cid:notes",
    "scores": "p2e:conv:cid:scores",
    "tree": "p2e:conv:cid:tree",
    "rollouts": "p2e:rollouts",
    "rollout": "p2e:rollout:R",
    "rollout_rows": "p2e:rollout:R:rows",
    "rollout_attempts": "p2e:rollout:R:attempts",
    "rollout_lease": "p2e:rollout:R:driver",
}
LEDGER = {
    "meta": "p2e:ledger:meta",
    "bal": "p2e:ledger:bal",
    "journal": "p2e:ledger:journal",
    "cmds": "p2e:ledger:cmd",
    "parties": "p2e:ledger:parties",
    "escrows": "p2e:ledger:escrows",
    "policy": "p2e:ledger:policy",
    "config": "p2e:ledger:config",
    "history": "p2e:ledger:w:NAME",
    "spent": "p2e:ledger:spent:NAME",
    "scope": "p2e:ledger:scope:SCOPE",
    "escrow": "p2e:ledger:escrow:ID",
}
ARGS = {
    "by_kind": ("cid", "K"),
    "by_agent": ("cid", "A"),
    "history": ("NAME",),
    "spent": ("NAME",),
    "scope": ("SCOPE",),
    "escrow": ("ID",),
}


def _key(obj: object, name: str) -> str:
    v = getattr(obj, name)
    if not callable(v):
        return str(v)
    n = v.__code__.co_argcount - 1
    return str(v(*ARGS.get(name, ("R",) if name.startswith("rollout") else ("cid", "b")[:n])))


def test_every_key_is_byte_identical_to_the_stored_layout() -> None:
    k = Keys()
    assert {name: _key(k, name) for name in PINNED} == PINNED
    assert {name: _key(k.ledger, name) for name in LEDGER} == LEDGER
    assert LedgerKeys("p2e").common == [LEDGER["meta"], LEDGER["bal"], LEDGER["journal"], LEDGER["cmds"]]
    assert Keys("team-a").rollout_rows("r1") == "team-a:rollout:r1:rows"


def test_the_module_table_documents_every_key() -> None:
    doc = keys_module.__doc__ or ""
    table = set(re.findall(r"^\| `([^`]+)` \|", doc, flags=re.M))
    for key in [*PINNED.values(), *LEDGER.values()]:
        assert "ns" + key.removeprefix("p2e") in table, key
