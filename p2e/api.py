"""The driver-side facade: `p2e.init()` starts or joins Ray and the store; `chat()` talks.

```python
import p2e

rt = p2e.init()                         # local Ray, embedded store, experiments/agents.yaml
chat = rt.chat("planner")               # a new conversation rooted at `planner`
print(chat.send("Weather in Paris?").answer)
chat.rewind(1)                          # back to just after the first user message (a new branch)
print(chat.send("And in Oslo?").answer)
chat.send("And in Lima?", on_delta=lambda d: print(d.text, end="", flush=True))  # as it is written
```
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError

from actors.actorset import connect_ray, spawn
from actors.wallet import WalletSet, spawn_wallets
from p2e.agents import TeamConfig, load_team
from p2e.conversation import Conversation
from p2e.errors import NotFound, P2EError, p2e_cause
from p2e.events import Event, Limits
from p2e.ledger.wallet import wallet_agents
from p2e.rollouts import run as rollouts_run
from p2e.rollouts.run import RolloutResult
from p2e.rollouts.spec import Resolved
from p2e.runtime.driver import Driver, TurnResult
from p2e.runtime.local import local_driver
from p2e.settings import settings
from p2e.store import BranchInfo, EventLog, connect
from p2e.store.log import new_id
from p2e.store.server import configured_url
from p2e.streaming import Deltas, OnText, PartialReply, read_partial

_DEAD = (RayActorError, ActorDiedError, ActorUnavailableError)
POLL_S = 0.05
"""How often a streaming Ray chat reads the partial reply from the store."""


def _get(ref: Any, timeout: float | None = None) -> Any:
    """`ray.get`, with p2e errors raised by an actor re-raised as themselves (one clear line
    for the user, not a remote traceback)."""
    try:
        return ray.get(ref, timeout=timeout)
    except RayTaskError as e:
        if (cause := p2e_cause(e)) is not None:
            raise cause from None
        raise


class Runtime:
    """Ray, the store and the actor set for one team of agents."""

    def __init__(
        self,
        team: TeamConfig,
        log: EventLog,
        supervisors: list[Any],
        agents: dict[str, list[Any]],
        started_ray: bool,
        evaluators: list[Any] | None = None,
        wallets: WalletSet | None = None,
    ):
        self.team = team
        self.log = log
        self.supervisors = supervisors
        self.agents = agents
        self.started_ray = started_ray
        self.evaluators = evaluators or []
        self.wallets = wallets or WalletSet({}, ())

    def supervisor_for(self, cid: str) -> Any:
        """Conversations are spread over supervisors by id, so each has exactly one host."""
        return self.supervisors[zlib.crc32(cid.encode()) % len(self.supervisors)]

    def chat(
        self,
        agent: str | None = None,
        conversation: str | None = None,
        limits: Limits | None = None,
        overrides: dict[str, dict[str, Any]] | None = None,
    ) -> Chat:
        """Open `conversation` if it exists, else start it (named so) with root `agent`."""
        if conversation is not None:
            try:
                info = self.log.conversation(conversation)
                return Chat(self, info.id, info.name)
            except NotFound:
                if agent is None:
                    raise
        if agent is None:
            raise P2EError("say which agent to talk to (or name an existing conversation)")
        self.team.agent(agent)
        cid = new_id()
        _get(self.supervisor_for(cid).create.remote(agent, limits, conversation, overrides, cid))
        return Chat(self, cid, conversation or cid)

    def shutdown(self) -> None:
        """Stop this runtime's actors (its Wallet actors as a rollout does: those it started);
        stop Ray too if `init` started it."""
        for handle in [*self.supervisors, *self.evaluators, *(h for hs in self.agents.values() for h in hs)]:
            ray.kill(handle)
        self.wallets.kill()
        self.log.close()
        if self.started_ray:
            ray.shutdown()


class ChatBase:
    """What every chat can do through the store alone: history, branches, rewind, checkout."""

    def __init__(self, log: EventLog, cid: str, name: str):
        self.log, self.id, self.name = log, cid, name

    def send(self, text: str, timeout: float | None = None, on_delta: OnText | None = None) -> TurnResult:
        """Post a user message on the checked-out branch and wait for the root's answer.
        `on_delta` is told of the agents' replies as their models write them (`StreamDelta`:
        the step's seq, the agent, the new text; see `p2e.streaming`); the stored events and the
        result are the complete replies either way."""
        raise NotImplementedError

    def resume(self, timeout: float | None = None, on_delta: OnText | None = None) -> TurnResult:
        """Finish what is outstanding (after a crash, or after a rewind into the middle of a turn)."""
        raise NotImplementedError

    def _release(self) -> None:
        """Tell the host to drop its copy: the store changed under it (rewind, checkout)."""

    def close(self) -> None:
        """Release what this chat holds in this process (the conversation stays in the store)."""

    def history(self, branch: str | None = None) -> list[Event]:
        return self.log.history(self.id, branch)

    def branches(self) -> list[BranchInfo]:
        return self.log.branches(self.id)

    def branch(self) -> BranchInfo:
        return self.log.branch(self.id)

    def rewind(self, seq: int, name: str | None = None) -> str:
        """A new branch ending with event `seq`, checked out; the next `send` continues there."""
        fork = Conversation.open(self.log, self.id).rewind(seq, name)
        self._release()
        return fork.branch.name

    def checkout(self, branch: str) -> None:
        self.log.checkout(self.id, branch)
        self._release()


class Chat(ChatBase):
    """A conversation hosted by a supervisor actor."""

    def __init__(self, runtime: Runtime, cid: str, name: str):
        super().__init__(runtime.log, cid, name)
        self.rt = runtime

    @property
    def _sup(self) -> Any:
        return self.rt.supervisor_for(self.id)

    def send(self, text: str, timeout: float | None = None, on_delta: OnText | None = None) -> TurnResult:
        before = self.rt.log.branch(self.id)
        try:
            return self._wait(self._sup.send.remote(self.id, text), timeout, before, on_delta)
        except _DEAD:
            return self._recover(before.length, text, timeout)

    def resume(self, timeout: float | None = None, on_delta: OnText | None = None) -> TurnResult:
        for attempt in range(30):
            try:
                ref = self._sup.resume.remote(self.id)
                return self._wait(ref, timeout, self.rt.log.branch(self.id), on_delta)
            except _DEAD:
                time.sleep(min(0.1 * 2**attempt, 2.0))  # Ray restarts the supervisor
        raise P2EError(f"the supervisor of conversation {self.name!r} did not come back; try again later")

    def _wait(
        self, ref: Any, timeout: float | None, branch: BranchInfo, on_delta: OnText | None
    ) -> TurnResult:
        """The turn's result; meanwhile, with `on_delta`, what the partial replies published in
        the store add (each `POLL_S`; one last read when the turn is over, for its end)."""
        if on_delta is not None:
            deltas = Deltas(on_delta, since=branch.length)
            end = None if timeout is None else time.monotonic() + timeout
            while True:
                ready, _ = ray.wait([ref], timeout=POLL_S)
                deltas(read_partial(self.log, self.id, branch.name))
                if ready or (end is not None and time.monotonic() >= end):
                    break
            timeout = None if end is None else max(end - time.monotonic(), 0.0)
        return _get(ref, timeout)

    def _recover(self, before: int, text: str, timeout: float | None) -> TurnResult:
        """The supervisor died mid-turn. Its restarted self rebuilds the conversation from the
        store: if our message was stored, finish the turn; if not, send it (once)."""
        if self.rt.log.branch(self.id).length > before:
            return self.resume(timeout)
        for attempt in range(30):
            try:
                return _get(self._sup.send.remote(self.id, text), timeout)
            except _DEAD:
                if self.rt.log.branch(self.id).length > before:
                    return self.resume(timeout)
                time.sleep(min(0.1 * 2**attempt, 2.0))
        raise P2EError(f"the supervisor of conversation {self.name!r} did not come back; try again later")

    def _release(self) -> None:
        ray.get(self._sup.release.remote(self.id))


class LocalChat(ChatBase):
    """A conversation driven in this process, without Ray (`p2e chat --local`, replay, tests)."""

    def __init__(
        self,
        log: EventLog,
        driver: Driver,
        loop: asyncio.AbstractEventLoop,
        cid: str,
        name: str,
        relay: Relay,
    ):
        """`relay`: the listener of `driver`'s agents (`local_driver(listener=...)`)."""
        super().__init__(log, cid, name)
        self.driver, self.loop, self.relay = driver, loop, relay

    def send(self, text: str, timeout: float | None = None, on_delta: OnText | None = None) -> TurnResult:
        with self.relay.to(on_delta):
            return self.loop.run_until_complete(asyncio.wait_for(self.driver.send(self.id, text), timeout))

    def resume(self, timeout: float | None = None, on_delta: OnText | None = None) -> TurnResult:
        with self.relay.to(on_delta):
            return self.loop.run_until_complete(asyncio.wait_for(self.driver.resume(self.id), timeout))

    def _release(self) -> None:
        self.driver.release(self.id)

    def close(self) -> None:
        self.loop.run_until_complete(self.driver.writer.close())
        self.loop.close()


class Relay:
    """The local agents' listener: hands each partial reply to the `on_delta` of the send that
    runs (`p2e.streaming`)."""

    def __init__(self) -> None:
        self.deltas: Deltas | None = None

    def __call__(self, partial: PartialReply) -> None:
        if self.deltas is not None:
            self.deltas(partial)

    @contextlib.contextmanager
    def to(self, on_delta: OnText | None) -> Iterator[None]:
        self.deltas = Deltas(on_delta) if on_delta is not None else None
        try:
            yield
        finally:
            self.deltas = None


def local_chat(
    agent: str | None = None,
    conversation: str | None = None,
    agents: str | Path | TeamConfig | None = None,
    limits: Limits | None = None,
    store_url: str | None = None,
    namespace: str | None = None,
) -> LocalChat:
    """Open or start a conversation driven in this process (no Ray)."""
    team = _team(agents)
    log = connect(store_url, namespace)
    loop = asyncio.new_event_loop()
    relay = Relay()
    driver = local_driver(log, team, listener=relay)
    if conversation is not None:
        try:
            info = log.conversation(conversation)
            return LocalChat(log, driver, loop, info.id, info.name, relay)
        except NotFound:
            if agent is None:
                raise
    if agent is None:
        raise P2EError("say which agent to talk to (or name an existing conversation)")
    create = driver.create(agent, team.team_of(agent), limits or team.limits, conversation)
    cid = loop.run_until_complete(create)
    return LocalChat(log, driver, loop, cid, conversation or cid, relay)


def _team(agents: str | Path | TeamConfig | None) -> TeamConfig:
    if isinstance(agents, TeamConfig):
        return agents
    return load_team(agents or settings().agents)


def init(
    address: str | None = None,
    agents: str | Path | TeamConfig | None = None,
    supervisors: int = 1,
    evaluators: int = 1,
    store_url: str | None = None,
    namespace: str | None = None,
    **ray_options: Any,
) -> Runtime:
    """Start (or join) Ray, ensure the store, and create the named actor set.

    `address`: None starts a local Ray; "auto" or "ray://host:10001" joins a cluster, which needs
    a store every node reaches (P2E_REDIS_URL). The store URL is handed to every actor.
    `evaluators`: how many Evaluator actors share the scoring, when the team config names
    evaluators to run. Each agent with a ledger tool gets its Wallet actor (`{ns}:wallet:{agent}`,
    shared with any rollout in the namespace): its payments go through it, as in a rollout.
    """
    team = _team(agents)
    log = connect(store_url, namespace)
    started_ray = connect_ray(address, bool(store_url or configured_url()), **ray_options)
    wallets = spawn_wallets(wallet_agents(team.tools()), log.url, log.keys.ns)
    actors = spawn(
        team, log.url, log.keys.ns, supervisors=supervisors, evaluators=evaluators if team.evaluators else 0
    )
    return Runtime(team, log, actors.supervisors, actors.agents, started_ray, actors.evaluators, wallets)


def run_rollout(spec: str | Path | Resolved, **options: Any) -> RolloutResult:
    """Run (or resume) a rollout on Ray (a local one, or `address=`) and return its result; the
    options are `p2e.rollouts.run.run_rollout`'s: address, resume, store_url, namespace, on_start,
    on_row, on_round and Ray's own.

    ```python
    result = p2e.rollout("experiments/quickstart.yaml")
    for s in result.summary():
        print(s.variant, s.mean, (s.ci_low, s.ci_high), s.n, s.failures)
    ```

    `result.rows` is read from the store as it is iterated (the summary and the exports stream
    it too): however many episodes ran, this process holds none of their rows.
    """
    from actors.rollout import execute

    return rollouts_run.run_rollout(spec, execute=execute, **options)
