"""The coordinator's decisions without Ray: it talks to its workers through a `Fleet`, so a fleet
in this process can lose a worker, fail a call or stall, and the rows say what a user must see."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from p2e.events import Limits
from p2e.rollouts.coordinator import Coordinator
from p2e.rollouts.fleet import CallFailed, WorkerLost
from p2e.rollouts.plan import Episode
from p2e.rollouts.store import RolloutInfo, RolloutStore
from p2e.runtime.steps import EpisodeOutcome, EpisodeRequest
from p2e.store import EventLog

pytestmark = pytest.mark.store


def episode(i: int) -> Episode:
    return Episode(
        id=f"ep{i:02d}",
        team="t",
        variant="v",
        scenario=f"s{i}",
        repeat=0,
        seed=i,
        root="lead",
        graph={"lead": ()},
        overrides={},
        message="hi",
        limits=Limits(),
    )


class FakeFleet:
    """Supervisors in this process. `dies`: supervisor index -> how many of its calls die
    (WorkerLost) before it works; `broken`: episode ids whose call raises (CallFailed)."""

    def __init__(self, supervisors: int, dies: dict[int, int] | None = None, broken: set[str] = frozenset()):
        self._n = supervisors
        self.dies = dict(dies or {})
        self.broken = broken
        self.ran: Counter[str] = Counter()
        self.on: dict[str, list[int]] = {}
        self.cancelled = False

    @property
    def supervisors(self) -> int:
        return self._n

    @property
    def evaluators(self) -> int:
        return 0

    async def run_episode(self, supervisor: int, request: bytes) -> bytes:
        req = EpisodeRequest.model_validate_json(request)
        self.on.setdefault(req.episode, []).append(supervisor)
        await asyncio.sleep(0)
        if self.dies.get(supervisor, 0) > 0:
            self.dies[supervisor] -= 1
            raise WorkerLost(RuntimeError(f"supervisor {supervisor} died"))
        if req.episode in self.broken:
            raise CallFailed(ValueError(f"{req.episode} is broken\nsecond line"))
        self.ran[req.episode] += 1
        outcome = EpisodeOutcome(
            conversation=req.cid,
            branch="main",
            status="done",
            answer="ok",
            steps=2,
            tokens=10,
            cost_usd=0.0,
            wall_s=0.0,
        )
        return outcome.model_dump_json().encode()

    async def health(self, supervisor: int) -> None:
        return None  # (back at once, as Ray restarts it)

    async def score(self, evaluator: int, conversation: str, branch: str, reference: str | None) -> bytes:
        raise AssertionError("no evaluators")

    def cancel(self) -> None:
        self.cancelled = True


def run(log: EventLog, fleet: FakeFleet, episodes: list[Episode], retries: int = 2) -> RolloutStore:
    store = RolloutStore(log)
    store.create(RolloutInfo(id="r1", name="r", spec_path="s.yaml", spec={}, created=0, updated=0))
    coordinator = Coordinator("r1", store, fleet, primary=None, in_flight=3, retries=retries)
    asyncio.run(coordinator.run(episodes))
    return store


def test_an_episode_on_a_lost_worker_runs_again_on_another_and_counts_once(log: EventLog) -> None:
    fleet = FakeFleet(supervisors=2, dies={0: 1})
    store = run(log, fleet, [episode(i) for i in range(6)])
    rows = {r.episode: r for r in store.rows("r1")}
    assert len(rows) == 6 and all(r.status == "done" for r in rows.values())
    assert all(n == 1 for n in fleet.ran.values()) and len(fleet.ran) == 6  # none run twice to the end
    (retried,) = [r for r in rows.values() if r.attempts == 2]
    assert fleet.on[retried.episode][0] == 0 and retried.abandoned == [f"r1.{retried.episode}.1"]


def test_a_call_that_raises_fails_its_row_in_one_line_and_is_not_retried(log: EventLog) -> None:
    fleet = FakeFleet(supervisors=2, broken={"ep01"})
    store = run(log, fleet, [episode(i) for i in range(3)])
    rows = {r.episode: r for r in store.rows("r1")}
    assert rows["ep01"].status == "failed" and rows["ep01"].attempts == 1
    assert rows["ep01"].error == "ValueError: ep01 is broken"
    assert rows["ep00"].status == rows["ep02"].status == "done"


def test_an_episode_that_keeps_killing_its_worker_is_given_up_after_its_retries(log: EventLog) -> None:
    fleet = FakeFleet(supervisors=1, dies={0: 10})  # (Ray brings the worker back each time)
    store = run(log, fleet, [episode(0)], retries=1)
    (row,) = store.rows("r1")
    assert row.status == "failed" and row.attempts == 2 and not fleet.ran
    assert row.error == "gave up after 2 attempts: RuntimeError: supervisor 0 died"
    assert row.abandoned == ["r1.ep00.1", "r1.ep00.2"]
