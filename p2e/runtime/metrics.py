"""Ray metrics (Prometheus, shown on the Ray dashboard) for what the runtime does.

Counters and histograms are created once per actor process and tagged by agent, model, status
or evaluator, so the dashboard can slice a rollout without p2e storing anything twice.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

from ray.util import metrics

from p2e.events import AgentReply

_LATENCY_MS = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000]
_EPISODE_S = [0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900]
_SCORE = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


FLUSH_S = 1.0
"""Counters are summed here and handed to Ray at most once a second: a Ray metric record costs
~20 us, and a busy supervisor would pay it three times a step for counts nobody reads sooner."""


class RayMeter:
    """The supervisor's meter (see `Driver`): steps, model latency, tokens, cost, episodes."""

    def __init__(self) -> None:
        self._sums: defaultdict[tuple[str, str, str], float] = defaultdict(float)
        self._due: asyncio.TimerHandle | None = None
        self.steps = metrics.Counter(
            "p2e_steps_total", description="agent replies stored", tag_keys=("agent", "model")
        )
        self.tokens = metrics.Counter(
            "p2e_tokens_total", description="model tokens (prompt + completion)", tag_keys=("agent", "model")
        )
        self.cost = metrics.Counter(
            "p2e_cost_usd_total", description="model cost in USD", tag_keys=("agent", "model")
        )
        self.latency = metrics.Histogram(
            "p2e_model_latency_ms",
            description="model call latency",
            boundaries=_LATENCY_MS,
            tag_keys=("agent", "model"),
        )
        self.episodes = metrics.Counter(
            "p2e_episodes_total", description="episodes finished", tag_keys=("status",)
        )
        self.episode_s = metrics.Histogram(
            "p2e_episode_seconds",
            description="episode wall time",
            boundaries=_EPISODE_S,
            tag_keys=("status",),
        )

    def reply(self, reply: AgentReply) -> None:
        """Called from the supervisor's event loop (a flush is scheduled on it)."""
        agent, model = reply.agent, reply.model or "?"
        sums = self._sums
        sums["steps", agent, model] += 1
        u = reply.usage
        if u is not None:
            if u.prompt_tokens or u.completion_tokens:
                sums["tokens", agent, model] += u.prompt_tokens + u.completion_tokens
            if u.cost_usd:
                sums["cost", agent, model] += u.cost_usd
            self.latency.observe(u.latency_ms, {"agent": agent, "model": model})
        if self._due is None:
            self._due = asyncio.get_running_loop().call_later(FLUSH_S, self.flush)

    def episode(self, status: str, wall_s: float) -> None:
        self.episodes.inc(1, {"status": status})
        self.episode_s.observe(wall_s, {"status": status})

    def flush(self) -> None:
        """Hand the summed counters to Ray."""
        counters = {"steps": self.steps, "tokens": self.tokens, "cost": self.cost}
        for (name, agent, model), value in self._sums.items():
            if value:
                counters[name].inc(value, {"agent": agent, "model": model})
        self._sums.clear()
        if self._due is not None:
            self._due.cancel()
            self._due = None


class ScoreMeter:
    """The evaluator's meter: every finished score, by evaluator."""

    def __init__(self) -> None:
        self.scores = metrics.Histogram(
            "p2e_score", description="evaluator scores in [0, 1]", boundaries=_SCORE, tag_keys=("evaluator",)
        )
        self.errors = metrics.Counter(
            "p2e_score_errors_total", description="evaluations that failed", tag_keys=("evaluator",)
        )

    def score(self, evaluator: str, value: float | None) -> None:
        if value is None:
            self.errors.inc(1, {"evaluator": evaluator})
        else:
            self.scores.observe(value, {"evaluator": evaluator})
