"""Expanding a spec into episodes: teams x variants x scenarios x repeats, deterministically.

An episode's id hashes what defines it (the team, the variant's overrides, the scenario's text
and the seed), so the same spec always yields the same ids and a resumed rollout can skip what
is done; change a variant's overrides and its episodes get new ids, as they should.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Container, Iterator, Sequence
from typing import Any, NamedTuple, overload

from pydantic import BaseModel, ConfigDict

from p2e.agents import AgentSpec
from p2e.events import Limits
from p2e.rollouts.spec import MAX_TURNS, Resolved, Scenario, Team, Variant, agent_specs
from p2e.runtime.steps import SimulatedUser, Turn


class Episode(BaseModel):
    """One conversation of a rollout: a team under a variant on a scenario, with a seed."""

    model_config = ConfigDict(frozen=True)

    id: str
    team: str
    variant: str
    scenario: str
    repeat: int
    seed: int
    root: str
    graph: dict[str, tuple[str, ...]]
    """Who may delegate to whom in this episode (the team under the variant's overrides)."""
    overrides: dict[str, dict[str, Any]]
    message: str
    turns: tuple[Turn, ...] = ()
    """The scenario's scripted user turns after `message`."""
    user: SimulatedUser | None = None
    """The scenario's simulated user, who writes the turns after `message`."""
    max_turns: int = MAX_TURNS
    """The most user turns in the dialogue (the spec's `limits.max_turns`)."""
    reference: str | None = None
    limits: Limits
    round: int | None = None
    """Adaptive rollouts: the round the episode belongs to (p2e/rollouts/adaptive.py)."""


def episode_id(
    team: Team, variant_overrides: dict[str, Any], variant: str, scenario: Scenario, seed: int
) -> str:
    """The episode's hash; a scenario's scripted turns count only when it has some, so a
    single-turn episode keeps the id it had before there were turns (its rollouts resume)."""
    text: list[Any] = [scenario.id, scenario.message, scenario.reference]
    if scenario.turns:
        text.append([t.model_dump() for t in scenario.turns])
    if scenario.user is not None:
        text.append({"user": scenario.user.model_dump()})
    payload = json.dumps(
        {
            "team": [team.id, team.root, sorted(team.members)],
            "variant": [variant, variant_overrides],
            "scenario": text,
            "seed": seed,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def team_graph(team: Team, specs: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """The delegation edges reachable from the team's root, kept inside its members if it names
    them."""
    members = set(team.members) | {team.root} if team.members else None
    graph: dict[str, tuple[str, ...]] = {}
    todo = [team.root]
    while todo:
        a = todo.pop()
        if a in graph:
            continue
        edges = tuple(d for d in specs[a].can_delegate_to if members is None or d in members)
        graph[a] = edges
        todo.extend(edges)
    return graph


class Episodes(Sequence[Episode]):
    """Every episode of a spec, in a stable order (scenario-major, so early results cover every
    variant), without building them: counted by arithmetic, built one at a time when read (by
    index or in order), so a plan of millions costs what one episode does."""

    def __init__(self, resolved: Resolved):
        self.resolved = resolved
        self.seeds = resolved.spec.seeds
        self.cells = [_Cell.of(resolved, team, v) for team in resolved.spec.teams for v in resolved.variants]
        """Each (team, variant) in expansion order, with what its episodes share."""

    def __len__(self) -> int:
        return len(self.seeds) * len(self.resolved.scenarios) * len(self.cells)

    @overload
    def __getitem__(self, index: int) -> Episode: ...
    @overload
    def __getitem__(self, index: slice) -> list[Episode]: ...
    def __getitem__(self, index: int | slice) -> Episode | list[Episode]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        rest, cell = divmod(index, len(self.cells))
        rep, scenario = divmod(rest, len(self.resolved.scenarios))
        scenarios = self.resolved.scenarios
        return self.cells[cell].episode(self.resolved, rep, self.seeds[rep], scenarios[scenario])

    def __iter__(self) -> Iterator[Episode]:
        return self.where()

    def where(
        self, variants: Container[str] | None = None, units: Container[tuple[int, str]] | None = None
    ) -> Iterator[Episode]:
        """Its episodes in order, only those of `variants` on `units` (repeat index, scenario
        id) if given: the others are skipped before they are built."""
        cells = [c for c in self.cells if variants is None or c.variant.name in variants]
        for rep, seed in enumerate(self.seeds):
            for scenario in self.resolved.scenarios:
                if units is not None and (rep, scenario.id) not in units:
                    continue
                for cell in cells:
                    yield cell.episode(self.resolved, rep, seed, scenario)


class _Cell(NamedTuple):
    """A team under a variant: what its episodes share."""

    team: Team
    variant: Variant
    specs: dict[str, AgentSpec]
    graph: dict[str, tuple[str, ...]]
    own: dict[str, dict[str, Any]]
    """Each agent of the graph: the variant's overrides of it."""

    @classmethod
    def of(cls, resolved: Resolved, team: Team, v: Variant) -> _Cell:
        specs = agent_specs(resolved, v)
        graph = team_graph(team, specs)
        return cls(team, v, specs, graph, {a: _own(v.overrides, a) for a in graph})

    def episode(self, resolved: Resolved, rep: int, seed: int, scenario: Scenario) -> Episode:
        """Its episode on `scenario`, repeat `rep` (seeded `seed`)."""
        v = self.variant
        overrides = {}
        for a, own in self.own.items():  # the repeat's seed, unless the agent or variant sets one
            overrides[a] = {"seed": seed, **own} if self.specs[a].seed is None else own
        user = scenario.user.agent if scenario.user is not None else None
        if user is not None and user not in overrides:  # it plays the user: seeded, overridable
            own = _own(self.variant.overrides, user)
            overrides[user] = {"seed": seed, **own} if self.specs[user].seed is None else own
        return Episode(
            id=episode_id(self.team, v.overrides, v.name, scenario, seed),
            team=self.team.id,
            variant=v.name,
            scenario=scenario.id,
            repeat=rep,
            seed=seed,
            root=self.team.root,
            graph=self.graph,
            overrides=overrides,
            message=scenario.message,
            turns=scenario.turns,
            user=scenario.user,
            max_turns=resolved.max_turns,
            reference=scenario.reference,
            limits=resolved.limits,
        )


def expand(resolved: Resolved) -> list[Episode]:
    """Every episode of the spec, built (`Episodes` counts or streams them without)."""
    return list(Episodes(resolved))


def _own(overrides: dict[str, dict[str, Any]], agent: str) -> dict[str, Any]:
    return {**overrides.get("*", {}), **overrides.get(agent, {})}


class PlanSummary(BaseModel):
    episodes: int
    teams: int
    variants: list[str]
    scenarios: int
    repeats: int
    min_model_calls: int
    """One per episode (the root must answer at least once); n for a guided root."""
    max_model_calls: int
    """Every episode running to its step limit, each step searched if its agent is guided."""


def summarize_plan(resolved: Resolved) -> PlanSummary:
    """The plan's numbers, counted per (team, variant): every scenario and seed of one costs
    the same calls."""
    episodes = Episodes(resolved)
    units = len(resolved.scenarios) * len(resolved.spec.seeds)
    low = high = 0
    for cell in episodes.cells:
        root, most = _calls_per_step(cell.specs, cell.graph, cell.team.root)
        low += root * units
        high += most * resolved.limits.max_steps * units
    return PlanSummary(
        episodes=len(episodes),
        teams=len(resolved.spec.teams),
        variants=[v.name for v in resolved.variants],
        scenarios=len(resolved.scenarios),
        repeats=len(resolved.spec.seeds),
        min_model_calls=low,
        max_model_calls=high,
    )


def _calls_per_step(
    specs: dict[str, AgentSpec], graph: dict[str, tuple[str, ...]], root: str
) -> tuple[int, int]:
    """Model calls one step can cost in an episode of this team (`graph`) under its variant's
    `specs`: (the root's least, any agent's most). A guided agent's step is a search: n
    children, n per kept node in a beam, or the budget."""
    least, most = 1, 1
    for agent in graph:
        guide = specs[agent].guide
        if guide is None:
            continue
        per = {"best_of_n": guide.n, "beam": guide.n * guide.width, "best_first": guide.budget}[guide.search]
        most = max(most, per)
        if agent == root:
            least = guide.n
    return least, most
