"""A wallet handle that can only spend its owner's money, under the owner's spending policy.

`Wallet` is what holds a party's identity: it is built for one owner and every payment it makes
leaves from that owner; there is no way to name another payer. The Wallet actor
(`actors/wallet.py`) hosts one per agent under Ray; without Ray the agent tools build one in
process. Both run this same code, so the policy is enforced identically on either path.

`wallet_for` picks the path for a tool call: the agent's Wallet actor if Ray runs and the actor
exists, else a local `Wallet`. The core never imports Ray: the Ray path is taken only when the
process has loaded and initialised Ray already (inside an actor, it has).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from p2e.errors import P2EError
from p2e.ledger.base import Entry, Ledger, Receipt, check_command_id, check_reason, check_wallet_name
from p2e.ledger.policy import PolicyStore, SpendingPolicy
from p2e.redact import default_redactor

if TYPE_CHECKING:
    from p2e.agents import TeamConfig
    from p2e.store import EventLog

RAY_NAMESPACE = "p2e"
"""Ray namespace of p2e's named actors (the same as `actors.supervisor.RAY_NAMESPACE`)."""
ACTOR_CALL_TIMEOUT_S = 8.0
"""Below the tools' 10 s timeout, so a stuck actor gives the model an error it can read."""
ENTRIES = TypeAdapter(list[Entry])
LEDGER_TOOLS = ("check_balance", "transfer", "reward", "transaction_history")
"""The agent tools that use the caller's wallet (`p2e/tools/ledger.py`)."""


def wallet_agents(team: TeamConfig) -> list[str]:
    """The team's agents that use their wallet (a ledger tool): each gets a Wallet actor."""
    return sorted(a for a, spec in team.agents.items() if set(spec.tools) & set(LEDGER_TOOLS))


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


class ActorWallet:
    """A Wallet actor seen from another process (calls block; tools run in worker threads)."""

    def __init__(self, handle: Any, owner: str, ray: Any):
        self.handle, self.owner, self._ray = handle, owner, ray

    def _get(self, ref: Any) -> Any:
        """Wait for the reply in this (worker) thread. Through the ref's future, not `ray.get`:
        in an async actor (the Agent actor) `ray.get` warns that it blocks the event loop even
        from a worker thread, which does not block it; an inline tool calling this would."""
        try:
            return ref.future().result(timeout=ACTOR_CALL_TIMEOUT_S)
        except self._ray.exceptions.RayTaskError as e:  # (before TimeoutError: it may be one too)
            if isinstance(e.cause, P2EError):
                raise e.cause from None
            raise
        except TimeoutError:
            raise P2EError(
                f"the wallet of {self.owner} did not answer within {ACTOR_CALL_TIMEOUT_S:g} s; try again"
            ) from None

    def balance(self) -> int:
        return int(self._get(self.handle.balance.remote()))

    def history(self, limit: int = 20) -> list[Entry]:
        return ENTRIES.validate_json(self._get(self.handle.history.remote(limit)))

    def pay(self, req: PayRequest) -> Receipt:
        return Receipt.model_validate_json(self._get(self.handle.pay.remote(req.model_dump_json().encode())))


_local_lock = threading.Lock()
_local: dict[tuple[str, str], Ledger] = {}


def _ray_wallet(namespace: str, agent: str) -> ActorWallet | None:
    ray = sys.modules.get("ray")  # never imported here: used only if this process runs Ray already
    if ray is None or not ray.is_initialized():
        return None
    try:
        handle = ray.get_actor(wallet_actor_name(namespace, agent), namespace=RAY_NAMESPACE)
    except ValueError:  # no such actor
        return None
    return ActorWallet(handle, agent, ray)


def local_ledger(store: EventLog) -> Ledger:
    """The ledger this store's namespace uses (its stored settings), one per process and store."""
    from p2e.ledger.settings import open_ledger_on

    key = (store.url, store.keys.ns)
    with _local_lock:
        if key not in _local:
            _local[key] = open_ledger_on(store)
        return _local[key]


def wallet_for(store: EventLog, agent: str) -> WalletAccess:
    """The calling agent's own wallet: through its Wallet actor when there is one, else local."""
    remote = _ray_wallet(store.keys.ns, agent)
    if remote is not None:
        return remote
    policies = PolicyStore(store.r, store.keys.ns)
    return Wallet(local_ledger(store), agent, lambda: policies.get(agent))
