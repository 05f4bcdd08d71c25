"""A wallet handle that can only spend its owner's money, under the owner's spending policy.

`Wallet` is what holds a party's identity: it is built for one owner and every payment it makes
leaves from that owner; there is no way to name another payer. The Wallet actor
(`actors/wallet.py`) hosts one per agent under Ray; without Ray the agent tools build one in
process. Both run this same code, so the policy is enforced identically on either path.

`wallet_for` picks the path for a tool call: the agent's Wallet actor when the tool context
brings a finder (`WalletFinder`: an Agent actor's is `actors.wallet.actor_wallets`) and it finds
one, else a local `Wallet`. This module never touches Ray.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from p2e.ledger.base import Entry, Ledger, Receipt, check_command_id, check_reason, check_wallet_name
from p2e.ledger.policy import PolicyStore, SpendingPolicy
from p2e.redact import default_redactor

if TYPE_CHECKING:
    from p2e.store import EventLog

ENTRIES = TypeAdapter(list[Entry])
LEDGER_TOOLS = ("check_balance", "transfer", "reward", "transaction_history")
"""The agent tools that use the caller's wallet (`p2e/tools/ledger.py`)."""


def wallet_agents(tools: Mapping[str, Sequence[str]]) -> list[str]:
    """Of a team's agents (agent -> the tools it names), those that use their wallet (a ledger
    tool): each gets a Wallet actor."""
    return sorted(a for a, names in tools.items() if set(names) & set(LEDGER_TOOLS))


def wallet_actor_name(namespace: str, agent: str) -> str:
    """`p2e:wallet:writer` for the default namespace: the name the Ray dashboard shows."""
    return f"{namespace}:wallet:{agent}"


class PayRequest(BaseModel):
    """A payment asked of a Wallet actor (it crosses processes as JSON)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    payee: str
    amount: int = Field(gt=0)
    reason: str = ""
    command_id: str
    episode: str | None = None

    @field_validator("reason")
    @classmethod
    def _redacted(cls, v: str) -> str:
        """A model writes the reason, and the journal keeps it forever: no key gets in."""
        return default_redactor().text(v)


class WalletAccess(Protocol):
    """What the agent tools need; `Wallet` (in process) and `ActorWallet` (Ray) provide it."""

    owner: str

    def balance(self) -> int: ...

    def history(self, limit: int = 20) -> list[Entry]: ...

    def pay(self, req: PayRequest) -> Receipt: ...


class Wallet:
    """One owner's wallet on a ledger, paying only under its spending policy."""

    def __init__(
        self,
        ledger: Ledger,
        owner: str,
        policy: SpendingPolicy | Callable[[], SpendingPolicy] | None = None,
    ):
        self.ledger = ledger
        self.owner = check_wallet_name(owner)
        self._policy = policy

    def policy(self) -> SpendingPolicy:
        """The policy in force now (read afresh when it comes from the store)."""
        if callable(self._policy):
            return self._policy()
        return self._policy or SpendingPolicy()

    def balance(self) -> int:
        return self.ledger.balance(self.owner)

    def history(self, limit: int = 20) -> list[Entry]:
        return self.ledger.history(self.owner, limit)

    def pay(self, req: PayRequest) -> Receipt:
        """Pay from this wallet: policy first (payee, cap), then the ledger (funds, budget)."""
        check_wallet_name(req.payee, "payee")
        check_reason(req.reason)
        check_command_id(req.command_id)
        policy = self.policy()
        policy.check(self.owner, req.payee, req.amount)
        return self.ledger.transfer(
            self.owner,
            req.payee,
            req.amount,
            reason=req.reason,
            command_id=req.command_id,
            budget=policy.budget(req.episode),
        )


_local_lock = threading.Lock()
_local: dict[tuple[str, str], Ledger] = {}


def local_ledger(store: EventLog) -> Ledger:
    """The ledger this store's namespace uses (its stored settings), one per process and store."""
    from p2e.ledger.settings import open_ledger_on

    key = (store.url, store.keys.ns)
    with _local_lock:
        if key not in _local:
            _local[key] = open_ledger_on(store)
        return _local[key]


WalletFinder = Callable[[str], WalletAccess | None]
"""Agent -> its Wallet actor (seen from this process), or None where it has none."""


def wallet_for(store: EventLog, agent: str, find: WalletFinder | None = None) -> WalletAccess:
    """The calling agent's own wallet: through its Wallet actor when `find` finds one, else local."""
    remote = find(agent) if find is not None else None
    if remote is not None:
        return remote
    policies = PolicyStore(store)
    return Wallet(local_ledger(store), agent, lambda: policies.get(agent))
