"""Running evaluators over a branch: every step, or the branch as an episode, concurrently.

Each evaluation is recorded as `pending` first, marked `running` if it takes a while, then
replaced by its outcome (`done` or `error` with the reason), so `p2e eval show` tells a running
evaluation from a missing one, and a crash leaves visible entries rather than nothing. A judge
that fails is an error score, never a silent 0.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal

from p2e.evals.registry import BoundEvaluator, EvalContext
from p2e.evals.score import Score
from p2e.evals.store import ScoreStore
from p2e.events import AgentReply, Event
from p2e.llm import Providers
from p2e.store import BranchInfo, EventLog

On = Literal["step", "episode"]

RUNNING_AFTER_S = 0.25
"""An evaluation still in flight after this long is marked `running` (quicker ones go straight
from `pending` to their outcome: marking them would cost writes and tell nobody anything)."""


def step_seqs(history: Sequence[Event], agent: str | None = None) -> list[int]:
    """The seqs of the steps (agent replies) of a history, optionally of one agent."""
    return [
        e.seq for e in history if isinstance(e, AgentReply) and e.seq is not None and agent in (None, e.agent)
    ]


async def evaluate_branch(
    log: EventLog,
    info: BranchInfo,
    evaluators: Sequence[BoundEvaluator],
    on: On = "step",
    reference: str | None = None,
    providers: Providers | None = None,
    concurrency: int = 64,
    skip_done: bool = True,
) -> list[Score]:
    """Score a branch's steps (or the branch as an episode) with each evaluator; store and
    return the scores. Targets already scored `done` by the same evaluator version with the same
    parameters are skipped unless `skip_done` is False."""
    history = await asyncio.to_thread(log.read, info)
    seqs: list[int | None] = list(step_seqs(history)) if on == "step" else [None]
    return await evaluate_targets(
        log, info, history, evaluators, seqs, reference, providers, concurrency, skip_done
    )


async def evaluate_targets(
    log: EventLog,
    info: BranchInfo,
    history: Sequence[Event],
    evaluators: Sequence[BoundEvaluator],
    seqs: Sequence[int | None],
    reference: str | None = None,
    providers: Providers | None = None,
    concurrency: int = 64,
    skip_done: bool = True,
    mark_pending: bool = True,
    save: Callable[[list[Score]], Awaitable[None]] | None = None,
) -> list[Score]:
    """Score the given steps of a branch (None: the branch as an episode) with each evaluator.

    `mark_pending`: store a `pending` score for each job first, so watchers see the work queued
    (a caller that waits for the outcome anyway, like a rollout, can skip the write). `save`
    stores the outcomes instead of a blocking write in a thread (a supervisor's group commit)."""
    store = ScoreStore(log)
    existing = (
        {(s.evaluator, s.target.ref): s for s in await asyncio.to_thread(store.all, info.conversation)}
        if skip_done
        else {}
    )
    jobs: list[tuple[BoundEvaluator, EvalContext]] = []
    for seq in seqs:
        target = store.target_of(info, seq)
        for ev in evaluators:
            if skip_done and ev.is_current(existing.get((ev.id, target.ref))):
                continue
            ctx = EvalContext.for_target(history, target, reference=reference, providers=providers)
            jobs.append((ev, ctx))
    if not jobs:
        return []
    if mark_pending:
        await asyncio.to_thread(store.put, [ev.pending(ctx.target) for ev, ctx in jobs])
    running = _Batcher(store)
    gate = asyncio.Semaphore(concurrency)
    loop = asyncio.get_running_loop()

    async def one(ev: BoundEvaluator, ctx: EvalContext) -> Score:
        async with gate:
            timer = loop.call_later(RUNNING_AFTER_S, running.mark, ev, ctx)
            try:
                return await ev.evaluate(ctx)
            finally:
                timer.cancel()

    scores = await asyncio.gather(*(one(ev, ctx) for ev, ctx in jobs))
    await running.drain()
    if save is not None:  # after the last `running` mark: outcomes win
        await save(list(scores))
    else:
        await asyncio.to_thread(store.put, scores)
    return list(scores)


class _Batcher:
    """Writes `running` marks in batches (one round trip for all that started meanwhile), off
    the evaluations' path: nothing waits for a mark."""

    def __init__(self, store: ScoreStore):
        self.store = store
        self.queue: list[Score] = []
        self.task: asyncio.Task[None] | None = None

    def mark(self, ev: BoundEvaluator, ctx: EvalContext) -> None:
        self.queue.append(ev.pending(ctx.target).running())
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        while self.queue:
            batch, self.queue = self.queue, []
            await asyncio.to_thread(self.store.put, batch)

    async def drain(self) -> None:
        while self.task is not None and not self.task.done():
            await self.task
