"""Expanding a spec into episodes: teams x variants x scenarios x repeats, deterministically.

An episode's id hashes what defines it (the team, the variant's overrides, the scenario's text
and the seed), so the same spec always yields the same ids and a resumed rollout can skip what
is done; change a variant's overrides and its episodes get new ids, as they should.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict

from p2e.agents import AgentSpec
from p2e.events import Limits
from p2e.rollouts.spec import Resolved, Team, agent_specs


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
    reference: str | None = None
    limits: Limits
    round: int | None = None
    """Adaptive rollouts: the round the episode belongs to (p2e/rollouts/adaptive.py)."""


def episode_id(team: Team, variant_overrides: dict[str, Any], variant: str, scenario: Any, seed: int) -> str:
    payload = json.dumps(
        {
            "team": [team.id, team.root, sorted(team.members)],
            "variant": [variant, variant_overrides],
            "scenario": [scenario.id, scenario.message, scenario.reference],
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


def expand(resolved: Resolved) -> list[Episode]:
    """Every episode of the spec, in a stable order (scenario-major, so early results cover
    every variant)."""
    spec = resolved.spec
    out: list[Episode] = []
    per_variant = []
    for v in resolved.variants:
        specs = agent_specs(resolved, v)
        per_variant.append((v, specs))
    for seed_index, seed in enumerate(spec.seeds):
        for scenario in resolved.scenarios:
            for team in spec.teams:
                for v, specs in per_variant:
                    graph = team_graph(team, specs)
                    overrides = {
                        a: {**({"seed": seed} if specs[a].seed is None else {}), **_own(v.overrides, a)}
                        for a in graph
                    }
                    out.append(
                        Episode(
                            id=episode_id(team, v.overrides, v.name, scenario, seed),
                            team=team.id,
                            variant=v.name,
                            scenario=scenario.id,
                            repeat=seed_index,
                            seed=seed,
                            root=team.root,
                            graph=graph,
                            overrides=overrides,
                            message=scenario.message,
                            reference=scenario.reference,
                            limits=resolved.limits,
                        )
                    )
    return out


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


def summarize(resolved: Resolved, episodes: list[Episode]) -> PlanSummary:
    low = high = 0
    specs = {v.name: agent_specs(resolved, v) for v in resolved.variants}  # once per variant
    for e in episodes:
        root, most = _calls_per_step(specs[e.variant], e)
        low += root
        high += most * resolved.limits.max_steps
    return PlanSummary(
        episodes=len(episodes),
        teams=len(resolved.spec.teams),
        variants=[v.name for v in resolved.variants],
        scenarios=len(resolved.scenarios),
        repeats=len(resolved.spec.seeds),
        min_model_calls=low,
        max_model_calls=high,
    )


def _calls_per_step(specs: dict[str, AgentSpec], e: Episode) -> tuple[int, int]:
    """Model calls one step can cost in this episode (its variant's `specs`): (the root's least,
    any agent's most). A guided agent's step is a search: n children, n per kept node in a
    beam, or the budget."""
    least, most = 1, 1
    for agent in e.graph:
        guide = specs[agent].guide
        if guide is None:
            continue
        per = {"best_of_n": guide.n, "beam": guide.n * guide.width, "best_first": guide.budget}[guide.search]
        most = max(most, per)
        if agent == e.root:
            least = guide.n
    return least, most
