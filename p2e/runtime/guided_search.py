"""Evaluator-guided branching: the supervisor forks a conversation at an agent's turn into
children that differ by variant or seed, runs each, scores it, and continues on the best.

Every child is a real branch in the store (an O(1) fork), so the tree stays inspectable after
the search: its nodes (branch, parent, value, visits, chosen) are kept in the conversation's
`tree` hash (`p2e conversation tree`), and each child's score is an ordinary stored score
(`p2e eval top`). Children run on the same driver as any conversation: write-ahead, limits,
tools and delegation apply as usual; a child's own turns are not searched again.

Searches: `best_of_n` (one level of n children), `beam` (keep the best `width` nodes per level,
`depth` levels of one step each) and `best_first` (always expand the most valuable open node,
until `budget` children exist or the best node is finished).

`GuidedSearch` is a turn policy (`p2e.runtime.turns`): whoever builds a driver gives it one, and
it drives a search through the driver's `TurnDriver` face, so the driver never imports it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from weakref import WeakKeyDictionary

from pydantic import BaseModel

from p2e.agents import TeamConfig
from p2e.evals import default_registry
from p2e.evals.registry import BoundEvaluator
from p2e.evals.runner import evaluate_targets, step_seqs
from p2e.llm import Providers
from p2e.machine import CallAgent, Command, Fail, Reply, State, pending
from p2e.policies.guide import GuidePolicy, GuideValue
from p2e.redact import redact
from p2e.runtime.hosted import Hosted
from p2e.runtime.turns import Spend, TurnDriver
from p2e.store import EventLog
from p2e.store.keys import TREE_COUNTER


class Node(BaseModel):
    """One child of a search: a branch forked from `parent` at `fork_at` and run by the search."""

    branch: str
    parent: str
    fork_at: int
    agent: str
    search: str
    label: str
    overrides: dict[str, Any] = {}
    level: int = 0
    value: float | None = None
    """The evaluator's score of this child (None: the evaluation failed, see `error`)."""
    error: str | None = None
    visits: int = 1
    """Times the search ran this node: once when created, once more per expansion."""
    terminal: bool = False
    """The searched frame ended here (answered, popped or failed): nothing left to expand."""
    chosen: bool = False
    """On the path the conversation continued on."""
    tokens: int = 0
    cost_usd: float = 0.0
    """What this child's own run spent (beyond its parent)."""


def read_tree(log: EventLog, conv: str) -> list[Node]:
    """Every search node of a conversation, in creation order."""
    raw = log.fields(log.keys.tree(log.resolve(conv)))
    nodes = [Node.model_validate_json(v) for k, v in raw.items() if k.decode() != TREE_COUNTER]
    return sorted(nodes, key=lambda n: int(n.branch[1:]) if n.branch[1:].isdecimal() else 0)


class Child:
    def __init__(self, host: Hosted, node: Node, parent: Child | None):
        self.host, self.node, self.parent = host, node, parent

    @property
    def rank(self) -> float:
        return -1.0 if self.node.value is None else self.node.value


class Valuer:
    """The search's evaluator and the providers its judges use, made once per policy."""

    def __init__(self, team: TeamConfig, value: GuideValue):
        self.evaluator: BoundEvaluator = default_registry(team.evaluator_modules).create(
            value.id, **value.params
        )
        self.providers = Providers(team.providers)


class GuidedSearch:
    """The turn policy of agents with a `guide:`: at each of their turns, a search drives it.

    Its state per hosted conversation is what the searches spent on children that were not
    chosen (not on the branch, but counted in the episode's spend and budgets)."""

    def __init__(self, team: TeamConfig):
        self.team = team
        self._guided = any(a.guide is not None for a in team.agents.values())
        """Whether the file itself guides an agent; if not, only a variant naming `guide` can
        (checked without building the agent's spec: the common case costs nothing per step)."""
        self._valuers: dict[str, Valuer] = {}
        self._spent: WeakKeyDictionary[Hosted, Spend] = WeakKeyDictionary()

    def turn(self, driver: TurnDriver, hosted: Hosted, cmd: CallAgent) -> Search | None:
        agent = cmd.frame.agent
        overrides = hosted.overrides.get(agent)
        if not self._guided and not (overrides and "guide" in overrides):
            return None
        spec = driver.spec(agent, overrides)
        if spec is None or spec.guide is None:
            return None
        return Search(self, driver, hosted, cmd, spec.guide)

    def spent(self, hosted: Hosted) -> Spend:
        return self._spent.get(hosted, Spend())

    def charge(self, hosted: Hosted, tokens: int, cost_usd: float) -> None:
        """Count what a search spent for `hosted` off its branch."""
        before = self.spent(hosted)
        self._spent[hosted] = Spend(before.tokens + tokens, before.cost_usd + cost_usd)

    def valuer(self, value: GuideValue) -> Valuer:
        key = json.dumps(value.model_dump(), sort_keys=True, default=str)
        v = self._valuers.get(key)
        if v is None:
            v = self._valuers[key] = Valuer(self.team, value)
        return v


class Search:
    """One guided turn: fork, run and value children, continue on the best."""

    def __init__(
        self, policy: GuidedSearch, driver: TurnDriver, hosted: Hosted, cmd: CallAgent, guide: GuidePolicy
    ):
        self.policy, self.driver, self.hosted, self.guide = policy, driver, hosted, guide
        self.agent, self.depth, self.start = cmd.frame.agent, cmd.depth, cmd.frame.start
        self.base = hosted.overrides.get(self.agent, {})
        self.valuer = policy.valuer(guide.value)
        self.children: list[Child] = []

    async def run(self) -> list[Command]:
        root = self.hosted.conv.state
        if self.guide.search == "best_of_n":
            best = self._best(await self._level([None], 0))
        elif self.guide.search == "beam":
            best = await self._beam()
        else:
            best = await self._best_first()
        return await self._adopt(best, root)

    # --- searches ------------------------------------------------------------------------------

    async def _level(self, parents: list[Child | None], level: int) -> list[Child]:
        """Expand each parent (None: the conversation itself) into one child per candidate."""
        jobs = [(p, label, ov) for p in parents for label, ov in self.guide.children()]
        kids = await asyncio.gather(*(self._expand(p, level, label, ov) for p, label, ov in jobs))
        for p in parents:
            if p is not None:
                p.node.visits += 1
        return list(kids)

    async def _beam(self) -> Child:
        frontier: list[Child | None] = [None]
        kept: list[Child] = []
        for level in range(self.guide.depth):
            kids = await self._level(frontier, level)
            ranked = sorted(kids, key=lambda c: -c.rank)[: self.guide.width]  # stable: ties keep order
            kept = [c for c in kept if c.node.terminal] + ranked
            frontier = [c for c in ranked if not c.node.terminal]
            if not frontier or self._over_budget():
                break
        return self._best(kept)

    async def _best_first(self) -> Child:
        n = self.guide.n
        await self._level([None], 0)
        while len(self.children) + n <= self.guide.budget and not self._over_budget():
            open_ = [c for c in self.children if not c.node.terminal]
            best = self._best(self.children)
            if not open_ or best.node.terminal:  # nothing left, or the best is already finished
                break
            node = self._best(open_)
            await self._level([node], node.node.level + 1)
        return self._best(self.children, prefer_deep=True)

    def _best(self, children: list[Child], prefer_deep: bool = False) -> Child:
        """The most valuable child; ties go to the earlier one (or the deeper, for best-first)."""
        best = children[0]
        for c in children[1:]:
            if c.rank > best.rank or (prefer_deep and c.rank == best.rank and c.node.level > best.node.level):
                best = c
        return best

    def _over_budget(self) -> bool:
        """The conversation's token or cost budget, counting every child run so far."""
        state, spent = self.hosted.conv.state, self.policy.spent(self.hosted)
        limits = state.limits
        tokens = state.tokens + spent.tokens + sum(c.node.tokens for c in self.children)
        cost = state.cost_usd + spent.cost_usd + sum(c.node.cost_usd for c in self.children)
        return (limits.max_tokens is not None and tokens >= limits.max_tokens) or (
            limits.max_cost_usd is not None and cost >= limits.max_cost_usd
        )

    # --- one child -----------------------------------------------------------------------------

    async def _expand(self, parent: Child | None, level: int, label: str, overrides: dict[str, Any]) -> Child:
        source = self.hosted if parent is None else parent.host
        name = f"g{await self.driver.writer.tree_node(self.hosted.conv.id)}"
        at = source.conv.state.length
        forced = {**source.overrides, self.agent: {**self.base, **overrides}}
        host = await self.driver.fork(source, name, forced)
        before = source.conv.state
        terminal = await self._advance(host)
        after = host.conv.state
        node = Node(
            branch=name,
            parent=source.conv.branch.name,
            fork_at=at,
            agent=self.agent,
            search=self.guide.search,
            label=label,
            overrides=overrides,
            level=level,
            terminal=terminal,
            tokens=after.tokens - before.tokens,
            cost_usd=after.cost_usd - before.cost_usd,
        )
        node.value, node.error = await self._value(host, at)
        child = Child(host, node, parent)
        self.children.append(child)
        await self._save([child])
        return child

    async def _advance(self, host: Hosted) -> bool:
        """Run a child for the search's scope; True when the searched frame is over in it."""
        todo = pending(host.conv.state)
        stepped = False
        while todo:
            cmd = todo.pop(0)
            if isinstance(cmd, CallAgent):
                if stepped and self.guide.scope == "step":
                    break  # the step is done (its tool results are stored): value it here
                stepped = stepped or self._searched(cmd)
            todo = await self.driver.perform(host, cmd) + todo
            if self._over(host.conv.state):
                for reply in (c for c in todo if isinstance(c, Reply)):
                    await self.driver.perform(host, reply)  # the root's answer, for the turn's result
                break
        return self._over(host.conv.state)

    def _searched(self, cmd: CallAgent) -> bool:
        return cmd.depth == self.depth and cmd.frame.agent == self.agent and cmd.frame.start == self.start

    def _over(self, state: State) -> bool:
        if state.status != "running":
            return True
        if state.depth < self.depth:
            return True
        frame = state.stack[self.depth - 1]
        return (frame.agent, frame.start) != (self.agent, self.start)

    async def _value(self, host: Hosted, fork_at: int) -> tuple[float | None, str | None]:
        info = host.conv.branch
        history = (
            host.record if host.record is not None else await asyncio.to_thread(self.driver.log.read, info)
        )
        seq = None
        if self.guide.value.per == "step":
            mine = [s for s in step_seqs(history, self.agent) if s >= fork_at]
            if not mine:
                return None, f"{self.agent!r} made no step in this child to score"
            seq = mine[-1]
        (score,) = await evaluate_targets(
            self.driver.log,
            info,
            history,
            [self.valuer.evaluator],
            [seq],
            host.reference,
            self.valuer.providers,
            skip_done=False,
            mark_pending=False,
        )
        return (score.value, None) if score.status == "done" else (None, score.error)

    # --- the choice ----------------------------------------------------------------------------

    async def _adopt(self, best: Child, root: State) -> list[Command]:
        """Continue the conversation on `best`; count what the other children spent."""
        c: Child | None = best
        while c is not None:
            c.node.chosen = True
            c = c.parent
        await self._save(self.children)
        spent_tokens = sum(c.node.tokens for c in self.children)
        spent_cost = sum(c.node.cost_usd for c in self.children)
        final = best.host.conv.state
        self.policy.charge(
            self.hosted,
            spent_tokens - (final.tokens - root.tokens),
            spent_cost - (final.cost_usd - root.cost_usd),
        )
        await self.driver.adopt(self.hosted, best.host)
        state, spent = self.hosted.conv.state, self.policy.spent(self.hosted)
        limits = state.limits
        if state.status == "running" or state.status == "idle":
            tokens = state.tokens + spent.tokens
            if limits.max_tokens is not None and tokens > limits.max_tokens:
                msg = f"token budget passed, counting guided-search children: {tokens} > {limits.max_tokens}"
                return [Fail(code="budget", message=msg)]
            cost = state.cost_usd + spent.cost_usd
            if limits.max_cost_usd is not None and cost > limits.max_cost_usd:
                msg = (
                    "cost budget passed, counting guided-search children: "
                    f"${cost:.4f} > ${limits.max_cost_usd:g}"
                )
                return [Fail(code="budget", message=msg)]
        return pending(state)

    async def _save(self, children: list[Child]) -> None:
        # an error may quote a key
        nodes = {c.node.branch: redact(c.node.model_dump_json()) for c in children}
        if nodes:
            await self.driver.writer.save_tree(self.hosted.conv.id, nodes)
