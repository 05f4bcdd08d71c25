"""Ray metrics (Prometheus, shown on the Ray dashboard) for what the runtime does.

Counters and histograms are created once per actor process and tagged by agent, model, status
or evaluator, and by `rollout` and `variant` (empty outside a rollout), so the dashboard can
slice a rollout without p2e storing anything twice. Ray exports each name with a `ray_` prefix
(`p2e_steps_total` is scraped as `ray_p2e_steps_total`; docs/observability.md lists them).

The labels of the episode being run come from a context variable that the supervisor sets
around each episode (`labels`): the driver's hot path passes nothing extra, and every task the
episode starts inherits them.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections import defaultdict
from collections.abc import Iterator

from ray.util import metrics

from p2e.events import AgentReply

_LATENCY_MS: list[float] = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000]
_EPISODE_S = [0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900]
_SCORE = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]

FLUSH_S = 1.0
"""Counters are summed here and handed to Ray at most once a second, at the end of each episode
and turn, and on shutdown: a Ray metric record is not free (bench/README.md, rollout_bench's third
sitting), and a busy supervisor would pay it three times a step for counts nobody reads sooner."""

SCOPE = ("rollout", "variant")
"""The tag keys every p2e metric carries."""

_scope: contextvars.ContextVar[tuple[str, str]] = contextvars.ContextVar("p2e_metric_scope", default=("", ""))


@contextlib.contextmanager
def labels(rollout: str = "", variant: str = "") -> Iterator[None]:
    """Tag what is metered inside the block (and in the tasks it starts) with this rollout
    and variant."""
    token = _scope.set((rollout, variant))
    try:
        yield
    finally:
        _scope.reset(token)


def _tags(**tags: str) -> dict[str, str]:
    rollout, variant = _scope.get()
    return {**tags, "rollout": rollout, "variant": variant}


class RayMeter:
    """The supervisor's meter (see `Driver`): steps, model latency, tokens, cost, episodes."""

    def __init__(self) -> None:
        self._sums: defaultdict[tuple[str, str, str, str, str], float] = defaultdict(float)
        self._due: asyncio.TimerHandle | None = None
        keys = ("agent", "model", *SCOPE)
        self.steps = metrics.Counter("p2e_steps_total", description="agent replies stored", tag_keys=keys)
        self.tokens = metrics.Counter(
            "p2e_tokens_total", description="model tokens (prompt + completion)", tag_keys=keys
        )
        self.cost = metrics.Counter("p2e_cost_usd_total", description="model cost in USD", tag_keys=keys)
        self.latency = metrics.Histogram(
            "p2e_model_latency_ms", description="model call latency", boundaries=_LATENCY_MS, tag_keys=keys
        )
        self.episodes = metrics.Counter(
            "p2e_episodes_total", description="episodes finished", tag_keys=("status", *SCOPE)
        )
        self.episode_s = metrics.Histogram(
            "p2e_episode_seconds",
            description="episode wall time",
            boundaries=_EPISODE_S,
            tag_keys=("status", *SCOPE),
        )

    def reply(self, reply: AgentReply) -> None:
        """Called from the supervisor's event loop (a flush is scheduled on it)."""
        agent, model = reply.agent, reply.model or "?"
        rollout, variant = _scope.get()
        sums = self._sums
        sums["steps", agent, model, rollout, variant] += 1
        u = reply.usage
        if u is not None:
            if u.prompt_tokens or u.completion_tokens:
                sums["tokens", agent, model, rollout, variant] += u.prompt_tokens + u.completion_tokens
            if u.cost_usd:
                sums["cost", agent, model, rollout, variant] += u.cost_usd
            tags = {"agent": agent, "model": model, "rollout": rollout, "variant": variant}
            self.latency.observe(u.latency_ms, tags)
        if self._due is None:
            self._due = asyncio.get_running_loop().call_later(FLUSH_S, self.flush)

    def episode(self, status: str, wall_s: float) -> None:
        """An episode ended: counted, and everything summed so far handed to Ray, so that an
        episode's counts are exported before its outcome is (the actor may be killed next)."""
        tags = _tags(status=status)
        self.episodes.inc(1, tags)
        self.episode_s.observe(wall_s, tags)
        self.flush()

    def flush(self) -> None:
        """Hand the summed counters to Ray: one record per metric and label set."""
        counters = {"steps": self.steps, "tokens": self.tokens, "cost": self.cost}
        for (name, agent, model, rollout, variant), value in self._sums.items():
            if value:
                tags = {"agent": agent, "model": model, "rollout": rollout, "variant": variant}
                counters[name].inc(value, tags)
        self._sums.clear()
        if self._due is not None:
            self._due.cancel()
            self._due = None


class ScoreMeter:
    """The evaluator's meter: every finished score, by evaluator."""

    def __init__(self) -> None:
        keys = ("evaluator", *SCOPE)
        self.scores = metrics.Histogram(
            "p2e_score", description="evaluator scores in [0, 1]", boundaries=_SCORE, tag_keys=keys
        )
        self.errors = metrics.Counter(
            "p2e_score_errors_total", description="evaluations that failed", tag_keys=keys
        )

    def score(self, evaluator: str, value: float | None) -> None:
        if value is None:
            self.errors.inc(1, _tags(evaluator=evaluator))
        else:
            self.scores.observe(value, _tags(evaluator=evaluator))
