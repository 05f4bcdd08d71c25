"""Turn policies: who drives an agent's turn.

At each `CallAgent` the driver asks its policy (if it has one) whether the policy drives that
turn; if not, the agent takes its step as usual. A policy that drives a turn (guided search:
fork, run, score, choose) does so only through `TurnDriver`, the narrow face the driver offers,
and hands back the commands due on the conversation afterwards. The driver is given its policy
by whoever builds it, so it never imports one.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

from p2e.agents import AgentSpec
from p2e.machine import CallAgent, Command
from p2e.runtime.hosted import Hosted
from p2e.store import EventLog
from p2e.store.aio import GroupCommit


class Spend(NamedTuple):
    """Tokens and dollars a policy spent for a conversation that its branch does not show."""

    tokens: int = 0
    cost_usd: float = 0.0


class TurnDriver(Protocol):
    """What a policy may do while it drives a turn."""

    @property
    def log(self) -> EventLog: ...
    @property
    def writer(self) -> GroupCommit: ...

    def spec(self, agent: str, overrides: dict[str, Any] | None) -> AgentSpec | None:
        """`agent`'s spec under a variant's overrides, or None without a team config."""
        ...

    async def perform(self, hosted: Hosted, cmd: Command) -> list[Command]:
        """Carry out one command (stepping an agent, running tools, ...) and store what follows,
        without asking the policy: what a policy runs is never driven by it again."""
        ...

    async def fork(self, hosted: Hosted, name: str, overrides: dict[str, dict[str, Any]]) -> Hosted:
        """A new branch `name` of `hosted` at its current length, hosted apart, run with
        `overrides`."""
        ...

    async def adopt(self, hosted: Hosted, child: Hosted) -> None:
        """Continue `hosted` on `child`'s branch (checked out)."""
        ...


class Turn(Protocol):
    async def run(self) -> list[Command]:
        """Drive the turn; the commands due on the conversation after it."""
        ...


class TurnPolicy(Protocol):
    def turn(self, driver: TurnDriver, hosted: Hosted, cmd: CallAgent) -> Turn | None:
        """The turn this policy drives instead of the agent's step, or None: the agent steps
        as usual. Asked at every agent call, so the common answer must cost little."""
        ...

    def spent(self, hosted: Hosted) -> Spend:
        """What this policy spent for `hosted` beyond its branch (children it did not choose)."""
        ...
