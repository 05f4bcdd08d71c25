"""What an agent needs when it runs, checked before anything runs: its tool modules import, its
tools exist, its model's provider exists and can serve the model (a mock rules set is there),
and its persona renders, for the agent and for every child of its guided search.

Without this, each of these fails only inside a running rollout: in an actor being created (a
traceback) or at an episode's first message. Importing a tool module runs its code, as the
agents do when they start; the caller says which modules it imported.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from p2e.agents.prompt import prepare_agent
from p2e.agents.spec import AgentSpec, TeamConfig
from p2e.errors import InvalidArgument
from p2e.llm.registry import Providers
from p2e.tools import REGISTRY, Registry

Found = list[tuple[tuple[Any, ...], str]]
"""(field of the agent, e.g. `("model",)` or `("guide", "candidates", 1, "persona")`, problem)."""


def import_tool_modules(modules: Sequence[str]) -> tuple[list[ModuleType], Found]:
    """Import each tool module (running its code): those that import, and `((index,), problem)`
    for each that does not."""
    imported, found = [], []
    for i, name in enumerate(modules):
        try:
            imported.append(importlib.import_module(name))
        except ModuleNotFoundError as e:
            missing = f" (module {e.name!r} is missing)" if e.name and e.name != name else ""
            problem = f"cannot import tool module {name!r}{missing}; check the module path and PYTHONPATH"
            found.append(((i,), problem))
        except Exception as e:  # its code fails: the agents would fail the same way when they start
            found.append(((i,), f"tool module {name!r} fails on import: {type(e).__name__}: {e}"))
    return imported, found


class AgentCheck:
    """Checks agents of one team as they would run; each distinct agent (a grid of variants
    repeats most of them) is checked once.

    The tools an agent may name are the registry's and those its `tool_modules` define: an agent
    process registers them when it imports the modules, but in this process the modules may have
    been imported (and their tools taken out of the registry again) before."""

    def __init__(
        self, team: TeamConfig, tool_modules: Sequence[ModuleType] = (), registry: Registry = REGISTRY
    ):
        self.team = team
        self.registry = registry.with_modules(tool_modules)
        self.providers = Providers(team.providers)
        self._done: dict[str, Found] = {}

    def __call__(self, spec: AgentSpec) -> Found:
        """(field, problem) for everything that would fail when `spec` runs."""
        key = spec.model_dump_json()
        if key not in self._done:
            self._done[key] = self._check(spec)
        return self._done[key]

    def _check(self, spec: AgentSpec) -> Found:
        unknown = [t for t in spec.tools if t not in self.registry]
        found: Found = []
        if unknown:
            found.append(
                (
                    ("tools",),
                    f"unknown tools {', '.join(map(repr, unknown))}; known tools: "
                    f"{', '.join(self.registry.names()) or '(none)'} (a module's tools are known once "
                    "it is listed under tool_modules)",
                )
            )
        found += self._runs(spec, ())
        if spec.guide is not None:
            for i, (_, overrides) in enumerate(spec.guide.children()):
                if overrides.keys() & {"model", "persona"}:
                    found += self._runs(spec.with_overrides(overrides), ("guide", "candidates", i))
        return found

    def _runs(self, spec: AgentSpec, at: tuple[Any, ...]) -> Found:
        """Its model and persona, as the agent prepares them for a step."""
        found: Found = []
        try:
            self.providers.check_model(spec.model)
        except InvalidArgument as e:
            found.append(((*at, "model"), str(e)))
        try:  # (its unknown tools are reported above)
            prepare_agent(spec, self.team, self.registry, [t for t in spec.tools if t in self.registry])
        except InvalidArgument as e:
            found.append(((*at, "persona"), str(e)))
        return found
