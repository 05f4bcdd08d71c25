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
from p2e.ledger import LedgerConfig, PolicyStore, RolloutLedger, open_ledger_on
from p2e.ledger.amount import format_amount, parse_amount
from p2e.rollouts.plan import Episode
from p2e.rollouts.store import Row
from p2e.store import EventLog

PAYMENT_TOOLS = ("transfer", "reward")


def episode_deltas(events: Iterable[Event]) -> dict[str, str]:
    """Wallet -> net change (decimal text) from the payments an episode's agents made."""
    net: dict[str, int] = defaultdict(int)
    for e in events:
        if not isinstance(e, ToolResult) or e.is_error or e.name not in PAYMENT_TOOLS:
            continue
        try:
            paid = json.loads(e.output)
            if paid.get("already_done"):
                continue  # a retried call: the money moved once, counted the first time
            amount = parse_amount(paid["paid"])
            net[e.agent] -= amount
            net[paid["to"]] += amount
        except (ValueError, KeyError, TypeError):
            continue  # not a payment receipt (a custom tool with the same name)
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
        self.hook = RolloutLedger(self.ledger, config, rollout_id, agents, PolicyStore(log.r, log.keys.ns))
        self.agents = agents

    def setup(self) -> dict[str, int]:
        return self.hook.setup()

    def deltas(self, conversation: str, branch: str) -> dict[str, str]:
        return episode_deltas(self.log.history(conversation, branch))

    def settle(self, rows: Iterable[Row]) -> dict[str, Any]:
        """Pay the bounty by the payout rule (once: a resumed rollout replays the receipt) and
        say what happened, with the balances after. A variant's score is the mean of its done
        episodes' primary scores (or of the metric the payout rule names)."""
        metric = self.config.payout.metric
        values: dict[str, list[float]] = defaultdict(list)
        for r in rows:
            value = r.primary if metric is None else r.scores.get(metric)
            if r.status == "done" and value is not None:
                values[r.variant].append(value)
        scores: dict[str, float | None] = {
            v: (sum(values[v]) / len(values[v]) if values[v] else None) for v in self.variant_agents
        }
        payout = self.hook.pay_out(scores, self.variant_agents)
        out: dict[str, Any] = {"balances_after": _fmt(self.hook.balances())}
        if payout is not None:
            out["payout"] = {
                "escrow": payout.escrow,
                "winners": list(payout.winners),
                "paid": _fmt(payout.payouts),
                "refunded": payout.refunded,
            }
        return out

    def close(self) -> None:
        self.ledger.close()


def _fmt(amounts: dict[str, int]) -> dict[str, str]:
    return {w: format_amount(v) for w, v in sorted(amounts.items())}
