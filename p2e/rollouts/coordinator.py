"""The rollout coordinator: keeps a bounded number of episodes in flight, retries episodes whose
actor or node died, collects scores as they finish and writes a row per episode. It talks to the
workers through a `Fleet` (Ray's is `actors/fleet.py`), so it imports no Ray.

It runs in the driver process (the one with the progress bar and the Ctrl-C) and holds nothing
per finished episode: its row goes to the store (and to `on_row`), the conversations live in the
store, the supervisors release them when they end, and the episodes to run are pulled from a
lazy collection as slots free up. Its state is the store's, so a rollout stopped any way can be resumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Collection
from typing import Any

from p2e.errors import NotFound, P2EError, log_failure, one_line
from p2e.evals.score import SCORES, Score
from p2e.rollouts.failures import FailureLimit, TooManyFailures
from p2e.rollouts.fleet import CallFailed, Fleet, FleetError, WorkerLost
from p2e.rollouts.plan import Episode
from p2e.rollouts.store import RolloutStore, Row
from p2e.runtime.steps import EpisodeOutcome, EpisodeRequest, episode_key
from p2e.store.log import new_id

log = logging.getLogger("p2e.rollouts")
SUPERVISOR_RETURN_S = 120.0
"""How long the coordinator waits for Ray to restart a dead supervisor before giving up."""


def row_scores(scores: list[Score]) -> dict[str, float | None]:
    """Evaluator id -> one number per episode: the episode score, or the mean of the step
    scores; None when every evaluation of it failed."""
    values: dict[str, list[float]] = {}
    seen: set[str] = set()
    for s in scores:
        seen.add(s.evaluator)
        if s.value is not None:
            values.setdefault(s.evaluator, []).append(s.value)
    return {e: (sum(values[e]) / len(values[e]) if e in values else None) for e in sorted(seen)}


def attempt_name(rid: str, episode: str, n: int) -> str:
    """The conversation name of attempt `n` at an episode (so a resumed run finds them all)."""
    return f"{rid}.{episode[:10]}.{n}"


def _on_ctrl_c(task: asyncio.Task[Any] | None) -> Callable[[], bool]:
    """Ctrl-C cancels `task` (the run), whatever SIGINT handler Ray or others installed before;
    the returned function says whether it happened."""
    hit: list[bool] = []

    def on_sigint() -> None:
        hit.append(True)
        if task is not None:
            task.cancel()

    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, on_sigint)
    return lambda: bool(hit)


class Coordinator:
    def __init__(
        self,
        rid: str,
        store: RolloutStore,
        fleet: Fleet,
        *,
        primary: str | None,
        in_flight: int,
        retries: int,
        on_row: Callable[[Row], None] | None = None,
        ledger_deltas: Callable[[str, list[tuple[str, str | None]]], dict[str, str]] | None = None,
        score_in_supervisors: bool = False,
        ramp_s: float = 0.0,
        failures: FailureLimit | None = None,
    ):
        self.rid = rid
        self.store = store
        self.fleet = fleet
        self.load = [0] * fleet.supervisors
        self._turn = 0
        self.down: dict[int, asyncio.Task[None]] = {}
        """Supervisors that died, each with the task that waits for Ray to bring it back."""
        self._next_eval = 0
        self.primary = primary
        self.in_flight = in_flight
        self.retries = retries
        self.on_row = on_row
        self.ledger_deltas = ledger_deltas
        self.score_in_supervisors = score_in_supervisors
        self.ramp_s = ramp_s
        self.failures = failures
        """`run.max_failures`: past it, a row's episode raises `TooManyFailures`, which stops the
        run as Ctrl-C does (the other episodes in flight are cancelled, their rows unwritten)."""

    async def run(self, episodes: Collection[Episode]) -> None:
        """Run every episode, at most `in_flight` at once, pulling them from `episodes` as slots
        free up (a lazy collection is built one episode at a time: a million-episode plan is
        never held). On cancellation (Ctrl-C) the remote work in flight is cancelled too;
        finished episodes keep their rows. So it is when the rollout passes `run.max_failures`
        (`TooManyFailures`)."""
        todo = iter(episodes)
        n = min(self.in_flight, len(episodes))

        async def worker(i: int) -> None:
            # slot i starts i/n of the ramp late: episodes that all start (and then call their
            # models) at the same instant keep doing so, and each burst queues behind itself
            await asyncio.sleep(self.ramp_s * i / n)
            while (ep := next(todo, None)) is not None:
                await self._episode(ep)

        workers = [asyncio.create_task(worker(i)) for i in range(n)]
        interrupted = _on_ctrl_c(asyncio.current_task())
        try:
            await asyncio.gather(*workers)
        except BaseException as e:
            for w in workers:
                w.cancel()
            self.fleet.cancel()
            if isinstance(e, asyncio.CancelledError) and interrupted():
                raise KeyboardInterrupt from None
            raise
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)

    async def _pick(self) -> int:
        """The least loaded supervisor that is up, ties taken in turn (so that a light load
        still spreads over every supervisor and node); if none is up, wait for one to come back."""
        deadline = time.monotonic() + SUPERVISOR_RETURN_S
        n = self.fleet.supervisors
        while True:
            up = [i for i in range(n) if i not in self.down]
            if up:
                self._turn += 1
                return min(up, key=lambda i: (self.load[i], (i - self._turn) % n))
            if time.monotonic() > deadline:
                raise P2EError(f"no supervisor came back within {SUPERVISOR_RETURN_S:g}s; resume later")
            await asyncio.sleep(0.1)

    def _lost(self, i: int) -> None:
        """Supervisor `i` died: send no more episodes to it until it answers again."""
        if i not in self.down:
            self.down[i] = asyncio.create_task(self._wait_back(i))

    async def _wait_back(self, i: int) -> None:
        deadline = time.monotonic() + SUPERVISOR_RETURN_S
        while time.monotonic() < deadline:
            try:
                await asyncio.wait_for(self.fleet.health(i), timeout=2.0)
                break
            except (TimeoutError, FleetError):
                await asyncio.sleep(0.2)
        self.down.pop(i, None)

    async def _attempts(self, ep: Episode) -> tuple[EpisodeOutcome | None, str | None, int, list[str]]:
        """Run an episode, again on another supervisor (up to `retries` times) when the one
        running it dies: (outcome, error, attempts, conversations of the abandoned attempts)."""
        abandoned: list[str] = []
        outcome: EpisodeOutcome | None = None
        error: str | None = None
        attempts = 0
        while outcome is None and error is None:
            attempts += 1
            n = await asyncio.to_thread(self.store.next_attempt, self.rid, ep.id)
            if attempts == 1 and n > 1:  # attempts of an earlier run of the driver: orphans
                abandoned += await asyncio.to_thread(self._orphans, ep, n)
            req = EpisodeRequest(
                cid=new_id(),
                name=attempt_name(self.rid, ep.id, n),
                root=ep.root,
                graph=ep.graph,
                limits=ep.limits,
                overrides=ep.overrides,
                message=ep.message,
                turns=ep.turns,
                user=ep.user,
                max_turns=ep.max_turns,
                reference=ep.reference,
                score=self.score_in_supervisors,
                rollout=self.rid,
                variant=ep.variant,
                episode=ep.id,
            )
            i = await self._pick()
            self.load[i] += 1
            try:
                raw = await self.fleet.run_episode(i, req.model_dump_json().encode())
                outcome = EpisodeOutcome.model_validate_json(raw)
            except WorkerLost as e:
                self._lost(i)
                abandoned.append(req.name)
                why = one_line(e.cause)
                await asyncio.to_thread(self._mark, req.name, f"abandoned: attempt {n} died ({why})")
                if attempts > self.retries:
                    error = f"gave up after {attempts} attempts: {why}"
                else:
                    log.warning("episode %s: attempt %d died (%s); retrying", ep.id, n, why)
            except CallFailed as e:
                log_failure(log, f"episode {ep.id}: attempt {n}", e.cause)
                error = one_line(e.cause)
            finally:
                self.load[i] -= 1
        return outcome, error, attempts, abandoned

    async def _episode(self, ep: Episode) -> None:
        t0 = time.monotonic()
        outcome, error, attempts, abandoned = await self._attempts(ep)
        scores: dict[str, float | None] = {}
        if outcome is not None and outcome.scores:
            scores = row_scores(outcome.scores)
        elif outcome is not None and self.fleet.evaluators:
            scores = await self._score(outcome, ep.reference)
        if outcome is not None and outcome.goal_met is not None:  # the simulated user's verdict
            scores = {"goal_met": float(outcome.goal_met), "turns": float(outcome.turns), **scores}
        status = "failed" if outcome is None else outcome.status
        if status != "done":  # a failed episode has no score (its step scores stay in the store)
            scores = dict.fromkeys(scores)
        deltas: dict[str, str] = {}
        if self.ledger_deltas is not None:  # every attempt's payments: abandoned ones moved money too
            attempts_run: list[tuple[str, str | None]] = [(name, None) for name in abandoned]
            if outcome is not None:
                attempts_run.append((outcome.conversation, outcome.branch))
            key = episode_key(self.rid, ep.id)
            deltas = await asyncio.to_thread(self.ledger_deltas, key, attempts_run)
        row = Row(
            rollout=self.rid,
            episode=ep.id,
            team=ep.team,
            variant=ep.variant,
            scenario=ep.scenario,
            repeat=ep.repeat,
            seed=ep.seed,
            status=status,
            error=error if outcome is None else outcome.error,
            answer=None if outcome is None else outcome.answer,
            primary=scores.get(self.primary) if self.primary else None,
            scores=scores,
            steps=0 if outcome is None else outcome.steps,
            tokens=0 if outcome is None else outcome.tokens,
            cost_usd=0.0 if outcome is None else outcome.cost_usd,
            wall_s=time.monotonic() - t0,
            conversation="" if outcome is None else outcome.conversation,
            branch="main" if outcome is None else outcome.branch,
            attempts=attempts,
            abandoned=abandoned,
            ledger_deltas=deltas,
            node="" if outcome is None else outcome.node,
            finished=time.time(),
            round=ep.round,
            turns=0 if outcome is None else outcome.turns,
            ended_by="error" if outcome is None else outcome.ended_by,
            end_reason="no attempt finished" if outcome is None else outcome.end_reason,
            goal_met=None if outcome is None or status != "done" else outcome.goal_met,
        )
        await asyncio.to_thread(self.store.put_row, row)
        if self.on_row is not None:
            self.on_row(row)
        if self.failures is not None and self.failures.add(row):
            raise TooManyFailures(self.failures.reason())

    def _orphans(self, ep: Episode, n: int) -> list[str]:
        """The conversations of attempts 1..n-1 at `ep`, made by an earlier run of the driver (it
        was killed or stopped before writing the row, or the row said failed): each is marked
        abandoned (none counts) and listed in the row, and its payments are accounted for in it."""
        found = []
        for k in range(1, n):
            name = attempt_name(self.rid, ep.id, k)
            try:
                info = self.store.log.conversation(name)
            except NotFound:
                continue  # it stopped before creating its conversation
            if not info.note.startswith("abandoned"):
                self.store.log.mark(name, f"abandoned: superseded by attempt {n} (the rollout was resumed)")
            found.append(name)
        return found

    def _mark(self, name: str, note: str) -> None:
        with contextlib.suppress(NotFound):  # it died before creating its conversation: no mark
            self.store.log.mark(name, note)

    async def _score(self, outcome: EpisodeOutcome, reference: str | None) -> dict[str, float | None]:
        """Scores from an evaluator actor; one that dies is replaced by the next (Ray restarts
        it), and an evaluation that keeps failing leaves the scores empty, never the row."""
        for attempt in range(3):
            ev = self._next_eval % self.fleet.evaluators
            self._next_eval += 1
            try:
                raw = await self.fleet.score(ev, outcome.conversation, outcome.branch, reference)
                return row_scores(SCORES.validate_json(raw))
            except FleetError as e:
                log.warning(
                    "scoring %s failed (attempt %d): %s", outcome.conversation, attempt + 1, one_line(e.cause)
                )
        return {}
