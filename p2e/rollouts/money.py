"""The ledger in a rollout: wallets set up and a bounty locked before the first episode, each
episode's money movements in its row, and the bounty paid to the best variant's agents at the end.

An episode's ledger deltas come from its own events (the results of its `transfer` and `reward`
calls), not from balance snapshots: episodes run concurrently and every variant's agents are the
same wallets, so a snapshot taken around one episode would count the others' payments too.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from p2e.events import Event, ToolResult
from p2e.ledger import Entry, LedgerConfig, PolicyStore, RolloutLedger, open_ledger_on
from p2e.ledger.amount import format_amount, parse_amount
from p2e.rollouts.plan import Episode
from p2e.rollouts.stats import variant_means
from p2e.rollouts.store import Row
from p2e.store import EventLog

PAYMENT_TOOLS = ("transfer", "reward")


def episode_deltas(events: Iterable[Event]) -> dict[str, str]:
    """Wallet -> net change (decimal text) from the payments an episode's agents made, in the
    events of one or several attempts at it. Each journal entry counts once: a retried call, or
    an attempt repeating an abandoned one's payment, answers with the original entry
    (`already_done`), and the money moved once."""
    paid: dict[int, tuple[str, str, int]] = {}
    for e in events:
        if not isinstance(e, ToolResult) or e.is_error or e.name not in PAYMENT_TOOLS:
            continue
        try:
            receipt = json.loads(e.output)
            paid[int(receipt["entry"])] = (e.agent, str(receipt["to"]), parse_amount(receipt["paid"]))
        except (ValueError, KeyError, TypeError):
            continue  # not a payment receipt (a custom tool with the same name)
    net: dict[str, int] = defaultdict(int)
    for payer, payee, amount in paid.values():
        net[payer] -= amount
        net[payee] += amount
    return {w: format_amount(d, signed=True) for w, d in sorted(net.items()) if d}


def entry_deltas(entries: Iterable[Entry]) -> dict[str, str]:
    """Wallet -> net change (decimal text) over ledger entries."""
    net: dict[str, int] = defaultdict(int)
    for entry in entries:
        for wallet, delta, _ in entry.moves:
            net[wallet] += delta
    return {w: format_amount(d, signed=True) for w, d in sorted(net.items()) if d}


class RolloutMoney:
    """What a rollout does with its `ledger:` section, around the coordinator."""

    def __init__(self, log: EventLog, config: LedgerConfig, rollout_id: str, episodes: Sequence[Episode]):
        self.log = log
        self.config = config
        self.variant_agents: dict[str, set[str]] = defaultdict(set)
        for ep in episodes:
            self.variant_agents[ep.variant].update(ep.graph)
        agents = sorted({a for agents in self.variant_agents.values() for a in agents})
        self.ledger = open_ledger_on(log, config.backend, config.url)
        self.bounty = RolloutLedger(self.ledger, config, rollout_id, agents, PolicyStore(log))
        self.agents = agents

    def setup(self) -> dict[str, int]:
        return self.bounty.setup()

    def deltas(self, episode: str, attempts: Sequence[tuple[str, str | None]]) -> dict[str, str]:
        """An episode's net payments over its attempts. From the ledger's index of the episode's
        payments where the backend keeps one (the embedded ledger): that counts too a payment an
        attempt made but died before storing, whose retry then took another path. Else from the
        attempts' events: (conversation, branch or None for the checked-out one) each."""
        entries = self.ledger.scope_entries(episode)
        if entries is not None:
            return entry_deltas(entries)
        events: list[Event] = []
        for conversation, branch in attempts:
            events += self.log.history(conversation, branch)
        return episode_deltas(events)

    def settle(self, rows: Iterable[Row]) -> dict[str, Any]:
        """Pay the bounty by the payout rule (once: a resumed rollout replays the receipt) and
        say what happened, with the balances after. A variant's score is its mean as every
        summary shows it (`stats.variant_means`: done episodes' primary scores, or the metric the
        payout rule names; teams pooled)."""
        means = variant_means(rows, self.config.payout.metric)
        scores: dict[str, float | None] = {v: means.get(v) for v in self.variant_agents}
        payout = self.bounty.pay_out(scores, self.variant_agents)
        out: dict[str, Any] = {"balances_after": _fmt(self.bounty.balances())}
        if payout is not None:
            out["payout"] = {
                "escrow": payout.escrow,
                "winners": list(payout.winners),
                "paid": _fmt(payout.payouts),
                "refunded": payout.refunded,
                "scores": scores,
            }
        return out

    def close(self) -> None:
        self.ledger.close()


def _fmt(amounts: dict[str, int]) -> dict[str, str]:
    return {w: format_amount(v) for w, v in sorted(amounts.items())}
