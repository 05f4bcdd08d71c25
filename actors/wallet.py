"""The Wallet actor: one per agent (party), the only holder of that party's ledger identity.

It hosts a `p2e.ledger.Wallet` for its owner, so every payment it makes leaves from the owner's
wallet and passes the owner's spending policy (read from the store on each payment, so a policy
change applies at once). The agent tools find it by name (`{ns}:wallet:{agent}`) and send their
payments here (`actor_wallets`, handed to the Agent actors' tool context); without it they run
the same `Wallet` code in process.

A payment carries a command id, so Ray may retry it (`max_task_retries`) and restart the actor
(`max_restarts=-1`) freely: the ledger applies a command id once.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ray
from ray.exceptions import RayTaskError
from ray.util import metrics

from actors import RAY_NAMESPACE
from p2e.errors import P2EError, p2e_cause
from p2e.ledger import Ledger, PayRequest, PolicyStore, Wallet, open_ledger_on, wallet_actor_name
from p2e.ledger.base import Entry, Receipt
from p2e.ledger.wallet import ENTRIES, WalletAccess, WalletFinder
from p2e.store import EventLog


# Ray's overloads for `ray.remote(...)` omit the actor options (concurrency_groups, ...)
@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=3, concurrency_groups={"control": 1})  # type: ignore[call-overload]
class WalletActor:
    def __init__(self, owner: str, store_url: str, namespace: str):
        self.owner = owner
        self.store = EventLog(store_url, namespace)
        self.ledger: Ledger = open_ledger_on(self.store)
        self.ledger.open_wallet(owner)
        policies = PolicyStore(self.store)
        self.wallet = Wallet(self.ledger, owner, lambda: policies.get(owner))
        self.payments = 0
        self.refused = 0
        self._paid = metrics.Counter(
            "p2e_wallet_payments", "payments made by a wallet", tag_keys=("wallet", "outcome")
        )
        self._balance = metrics.Gauge(
            "p2e_wallet_balance_minor", "wallet balance, minor units", tag_keys=("wallet",)
        )

    # Requests and receipts cross as JSON bytes (pydantic), like the other actors' messages.

    def pay(self, req: bytes) -> bytes:
        try:
            receipt = self.wallet.pay(PayRequest.model_validate_json(req))
        except Exception:
            self.refused += 1
            self._paid.inc(tags={"wallet": self.owner, "outcome": "refused"})
            raise
        self.payments += 1
        self._paid.inc(tags={"wallet": self.owner, "outcome": "replayed" if receipt.replayed else "paid"})
        after = receipt.entry.after(self.owner)
        if after is not None:
            self._balance.set(after, tags={"wallet": self.owner})
        return receipt.model_dump_json().encode()

    def balance(self) -> int:
        return self.wallet.balance()

    def history(self, limit: int = 20) -> bytes:
        return ENTRIES.dump_json(self.wallet.history(limit))

    @ray.method(concurrency_group="control")
    def health(self) -> dict[str, Any]:
        """Who this is and what it did since it (re)started."""
        return {
            "wallet": self.owner,
            "backend": self.ledger.backend,
            "payments": self.payments,
            "refused": self.refused,
        }


@dataclasses.dataclass
class WalletSet:
    """The Wallet actors a runtime or a rollout pays through, by agent. Another runtime or rollout
    in the namespace shares them (one actor per party); `kill` stops only those this one started,
    so it never pulls a wallet from under another (whose tools would then pay in process)."""

    handles: dict[str, Any]
    started: tuple[str, ...]

    def kill(self) -> None:
        for agent in self.started:
            ray.kill(self.handles[agent])


def spawn_wallets(agents: list[str], store_url: str, namespace: str) -> WalletSet:
    """Create (or find, by name) a Wallet actor per agent and wait until each answers; each
    opens its owner's wallet if it is not open yet. `p2e.init()` (agents with ledger tools) and
    rollouts (the agents of a `ledger:` section) both start their wallets here."""
    handles: dict[str, Any] = {}
    started = []
    for a in agents:
        name = wallet_actor_name(namespace, a)
        try:
            handles[a] = ray.get_actor(name, namespace=RAY_NAMESPACE)
        except ValueError:  # none yet (two starting at once both count it: both stop it)
            started.append(a)
            # mypy keeps a decorated class's own type: it does not see Ray's ActorClass (`options`)
            handles[a] = WalletActor.options(  # type: ignore[attr-defined]
                name=name, namespace=RAY_NAMESPACE, get_if_exists=True
            ).remote(a, store_url, namespace)
    ray.get([h.health.remote() for h in handles.values()])
    return WalletSet(handles, tuple(started))


ACTOR_CALL_TIMEOUT_S = 8.0
"""Below the tools' 10 s timeout, so a stuck actor gives the model an error it can read."""


class ActorWallet:
    """A Wallet actor seen from another process (calls block; tools run in worker threads)."""

    def __init__(self, handle: Any, owner: str):
        self.handle, self.owner = handle, owner

    def _get(self, ref: Any) -> Any:
        """Wait for the reply in this (worker) thread. Through the ref's future, not `ray.get`:
        in an async actor (the Agent actor) `ray.get` warns that it blocks the event loop even
        from a worker thread, which does not block it; an inline tool calling this would."""
        try:
            return ref.future().result(timeout=ACTOR_CALL_TIMEOUT_S)
        except RayTaskError as e:  # (before TimeoutError: it may be one too)
            if (cause := p2e_cause(e)) is not None:
                raise cause from None
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


def actor_wallets(namespace: str) -> WalletFinder:
    """How an actor's tools find an agent's Wallet actor (`{ns}:wallet:{agent}`), by name; None
    when it has none (it then pays through a local `Wallet`, the same code)."""

    def find(agent: str) -> WalletAccess | None:
        try:
            handle = ray.get_actor(wallet_actor_name(namespace, agent), namespace=RAY_NAMESPACE)
        except ValueError:  # no such actor
            return None
        return ActorWallet(handle, agent)

    return find
