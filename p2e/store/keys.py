"""The key layout: every key p2e writes, in one place.

All keys live under one namespace (`p2e` by default; `P2E_NAMESPACE` changes it, so several
projects or test runs can share a server). With `ns` the namespace, `cid` a conversation id,
`b` a branch name and `R` a rollout id:

| key | type | holds |
| --- | --- | --- |
| `ns:convs` | zset | conversation ids, scored by creation time |
| `ns:names` | hash | conversation name -> id |
| `ns:conv:cid` | hash | id, name, root, created, active (checked-out branch), events (stored), note |
| `ns:conv:cid:branches` | zset | branch names, scored by creation time |
| `ns:conv:cid:br:b` | hash | name, parent, fork_at, length, created, lineage (JSON) |
| `ns:conv:cid:br:b:ev` | list | the branch's *own* events (JSON); index i is seq fork_at + i |
| `ns:conv:cid:br:b:snap` | hash | length -> machine state (JSON) after that many events |
| `ns:conv:cid:br:b:partial` | string | the running step's reply so far (JSON, TTL; `p2e.streaming`) |
| `ns:conv:cid:ix:kind:K` | list | refs `b:seq` of the conversation's events of kind K |
| `ns:conv:cid:ix:agent:A` | list | refs `b:seq` of the events of agent A |
| `ns:conv:cid:notes` | list | the `notes` tool's notes (per conversation, not per branch) |
| `ns:conv:cid:scores` | hash | `evaluator@target-ref` -> score (JSON); a step's target is its canonical ref |
| `ns:conv:cid:tree` | hash | guided search nodes: child branch -> node (JSON); `#next` -> node counter |
| `ns:embedded` | string | marker set by the embedded server manager (its data dir) |
| `ns:rollouts` | zset | rollout ids, scored by creation time (`p2e.rollouts.store`) |
| `ns:rollout:R` | string | `RolloutInfo` (JSON): spec, status, counts; an adaptive rollout's rounds |
| `ns:rollout:R:rows` | hash | episode id -> `Row` (JSON), written once the episode is finished |
| `ns:rollout:R:attempts` | hash | episode id -> attempts started (names each attempt's conversation) |
| `ns:rollout:R:driver` | string | the running driver's lease (its pid; expires after `LEASE_S`) |
| `ns:ledger:meta` | hash | seq (entries), head (last entry's hash), minted, cap, escrowed, seals, ... |
| `ns:ledger:bal` | hash | wallet -> balance, minor units (decimal text) |
| `ns:ledger:journal` | list | entries (JSON, `Entry`); index = seq. Append-only |
| `ns:ledger:cmd` | hash | command id -> "seq fingerprint" of the entry it produced |
| `ns:ledger:parties` | hash | name -> party record (JSON) |
| `ns:ledger:w:NAME` | list | seqs of the entries that touched wallet NAME (its history) |
| `ns:ledger:spent:NAME` | hash | budget scope (episode) -> amount NAME paid in it |
| `ns:ledger:scope:SCOPE` | list | seqs of the transfers counted in budget scope SCOPE (an episode) |
| `ns:ledger:escrow:ID` | hash | sponsor, arbiter, amount, state, memo, locked (seq), settled (seq) |
| `ns:ledger:escrows` | list | escrow ids, in the order they were locked |
| `ns:ledger:policy` | hash | wallet -> spending policy (JSON), see `p2e.ledger.policy` |
| `ns:ledger:config` | string | which backend this namespace uses (JSON, `LedgerSettings`) |

Not keys, but named under the namespace too: Ray actors, e.g. `ns:wallet:AGENT` (an agent's
Wallet actor, `p2e.ledger.wallet`) and a rollout's actors prefixed `ns:R`.

A branch stores only its own events. `lineage` lists the segments of history it inherits,
oldest first, as `[branch, lo, hi, offset]`: seqs lo..hi-1 live in that branch's list at index
seq - offset. So forking copies no event (O(1) in history length), and reading any history is one
pipelined round trip however deep the fork line is.
"""

from __future__ import annotations

import re

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""Conversation and branch names: safe in keys, refs (`conv/branch/seq`) and shells. Use
`fullmatch` (`match` with `$` would let a trailing newline through)."""


TREE_COUNTER = "#next"
"""The field of a conversation's `tree` hash that counts its search nodes (not a valid branch
name, so it never collides with a node)."""


def check_name(v: str) -> str:
    """`v`, if it can name a team, variant, scenario or conversation (it goes into keys)."""
    if not NAME_RE.fullmatch(v):
        raise ValueError(f"{v!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return v


class Keys:
    def __init__(self, namespace: str = "p2e"):
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", namespace):
            raise ValueError(f"namespace {namespace!r} must be letters, digits, '_', '.', '-'")
        self.ns = namespace

    @property
    def convs(self) -> str:
        return f"{self.ns}:convs"

    @property
    def names(self) -> str:
        return f"{self.ns}:names"

    @property
    def embedded(self) -> str:
        return f"{self.ns}:embedded"

    def conv(self, cid: str) -> str:
        return f"{self.ns}:conv:{cid}"

    def branches(self, cid: str) -> str:
        return f"{self.ns}:conv:{cid}:branches"

    def branch(self, cid: str, b: str) -> str:
        return f"{self.ns}:conv:{cid}:br:{b}"

    def events(self, cid: str, b: str) -> str:
        return f"{self.ns}:conv:{cid}:br:{b}:ev"

    def snapshots(self, cid: str, b: str) -> str:
        return f"{self.ns}:conv:{cid}:br:{b}:snap"

    def partial(self, cid: str, b: str) -> str:
        return f"{self.ns}:conv:{cid}:br:{b}:partial"

    def index_prefix(self, cid: str) -> str:
        return f"{self.ns}:conv:{cid}:ix:"

    def by_kind(self, cid: str, kind: str) -> str:
        return f"{self.index_prefix(cid)}kind:{kind}"

    def by_agent(self, cid: str, agent: str) -> str:
        return f"{self.index_prefix(cid)}agent:{agent}"

    def scores(self, cid: str) -> str:
        return f"{self.ns}:conv:{cid}:scores"

    def tree(self, cid: str) -> str:
        return f"{self.ns}:conv:{cid}:tree"

    def notes(self, cid: str) -> str:
        return f"{self.ns}:conv:{cid}:notes"

    @property
    def conv_pattern(self) -> str:
        """A pattern matching every conversation's keys (to name them in an error)."""
        return f"{self.ns}:conv:*"

    @property
    def rollouts(self) -> str:
        return f"{self.ns}:rollouts"

    def rollout(self, rid: str) -> str:
        return f"{self.ns}:rollout:{rid}"

    def rollout_rows(self, rid: str) -> str:
        return f"{self.rollout(rid)}:rows"

    def rollout_attempts(self, rid: str) -> str:
        return f"{self.rollout(rid)}:attempts"

    def rollout_lease(self, rid: str) -> str:
        return f"{self.rollout(rid)}:driver"

    @property
    def ledger(self) -> LedgerKeys:
        return LedgerKeys(self.ns)


class LedgerKeys:
    """The embedded ledger's keys under a namespace (`ns:ledger:*` in the table above)."""

    def __init__(self, namespace: str):
        self.ns = Keys(namespace).ns
        p = f"{self.ns}:ledger:"
        self.prefix = p
        self.meta, self.bal, self.journal, self.cmds = p + "meta", p + "bal", p + "journal", p + "cmd"
        self.parties, self.escrows, self.policy, self.config = (
            p + "parties",
            p + "escrows",
            p + "policy",
            p + "config",
        )

    def history(self, wallet: str) -> str:
        return f"{self.prefix}w:{wallet}"

    def spent(self, wallet: str) -> str:
        return f"{self.prefix}spent:{wallet}"

    def scope(self, scope: str) -> str:
        return f"{self.prefix}scope:{scope}"

    def escrow(self, escrow_id: str) -> str:
        return f"{self.prefix}escrow:{escrow_id}"

    @property
    def common(self) -> list[str]:
        """The keys every ledger script touches."""
        return [self.meta, self.bal, self.journal, self.cmds]
