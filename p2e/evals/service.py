"""Evaluation as the runtime runs it: the evaluators of a team's config, applied to steps as
they are stored and to the branch when the root answers. The Evaluator actor hosts one of these;
the supervisor sends it work and never waits for it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from p2e.agents import TeamConfig
from p2e.evals import default_registry
from p2e.evals.registry import BoundEvaluator
from p2e.evals.runner import evaluate_targets, step_seqs
from p2e.evals.score import Score
from p2e.events import Event
from p2e.llm import Providers
from p2e.store import BranchInfo, EventLog


class EvalService:
    def __init__(self, log: EventLog, team: TeamConfig):
        self.log = log
        registry = default_registry(team.evaluator_modules)
        self.step: list[BoundEvaluator] = []
        self.episode: list[BoundEvaluator] = []
        for cfg in team.evaluators:
            (self.step if cfg.per == "step" else self.episode).append(registry.create(cfg.id, **cfg.params))
        self.providers = Providers(team.providers)

    async def on_step(self, conversation: str, branch: str, seq: int) -> list[Score]:
        return await self._run(conversation, branch, [seq], self.step)

    async def on_episode(self, conversation: str, branch: str) -> list[Score]:
        return await self._run(conversation, branch, [None], self.episode)

    async def score(
        self,
        conversation: str,
        branch: str,
        reference: str | None = None,
        *,
        info: BranchInfo | None = None,
        history: Sequence[Event] | None = None,
        save: Callable[[list[Score]], Awaitable[None]] | None = None,
    ) -> list[Score]:
        """A finished episode, all at once: every step with the step evaluators and the branch
        with the episode ones (against `reference`, the scenario's expected answer).

        A host that still holds the branch (`info`) and its events (`history`, seqs set) passes
        them and reads nothing; `save` replaces the blocking write of the scores."""
        if info is None:
            info = await asyncio.to_thread(self.log.branch, conversation, branch)
        if history is None:
            history = await asyncio.to_thread(self.log.read, info)
        jobs: list[tuple[list[BoundEvaluator], list[int | None]]] = []
        if self.step:
            jobs.append((self.step, [*step_seqs(history)]))
        if self.episode:
            jobs.append((self.episode, [None]))
        # step and episode evaluators run side by side (their writes can share a round trip)
        done = await asyncio.gather(
            *(
                evaluate_targets(
                    self.log,
                    info,
                    history,
                    evaluators,
                    seqs,
                    reference,
                    self.providers,
                    skip_done=False,
                    mark_pending=False,
                    save=save,
                )
                for evaluators, seqs in jobs
            )
        )
        return [s for part in done for s in part]

    async def _run(
        self, conversation: str, branch: str, seqs: list[int | None], evaluators: list[BoundEvaluator]
    ) -> list[Score]:
        if not evaluators:
            return []
        info = await asyncio.to_thread(self.log.branch, conversation, branch)
        end = None if seqs == [None] else max(s for s in seqs if s is not None) + 1
        history = await asyncio.to_thread(self.log.read, info, 0, end)
        return await evaluate_targets(
            self.log, info, history, evaluators, seqs, providers=self.providers, skip_done=False
        )
