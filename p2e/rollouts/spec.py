"""A rollout spec: the YAML a user writes to sweep teams x variants x scenarios x repeats.

```yaml
name: quickstart
agents: agents.yaml                  # an agents file (relative to this spec) or an inline mapping
teams:
  - {id: research, root: planner}    # members: [planner, researcher] limits who may be delegated to
scenarios:                           # inline, and/or `- file: more.jsonl` (one scenario per line)
  - {id: paris, message: "What is the weather in Paris?", reference: Paris}
variants:                            # a list of named overrides ...
  - name: baseline
  - name: hot-writer
    overrides: {writer: {temperature: 1.2}}     # `"*"` overrides every agent
# variants: {grid: {writer.temperature: [0.2, 1.0], "*.model": [mock/default, mock/terse]}}
repeats: 2                           # or a list of seeds: [7, 11, 13]
evaluators: [{id: contains}]
primary: contains                    # the metric variants are ranked by (default: the first)
limits: {max_steps: 40, deadline_s: 120, max_cost_usd: 0.5}
run: {in_flight: 64, supervisors: 1, retries: 2}
adaptive: {method: halving, keep: 0.5, rounds: auto}   # optional: successive halving (adaptive.py)
```

Every problem is an `InvalidArgument` naming the file, the field and, where it can, the line.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from p2e.agents import AgentSpec, EvaluatorConfig, TeamConfig, load_team, render_persona
from p2e.agents.spec import team_from_mapping
from p2e.errors import InvalidArgument
from p2e.events import Limits
from p2e.ledger.rollout import LedgerConfig
from p2e.store.keys import NAME_RE
from p2e.yamlfile import field_problems, read_yaml_lines


def _name(v: str) -> str:
    if not NAME_RE.fullmatch(v):
        raise ValueError(f"{v!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return v


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Scenario(_Strict):
    id: str
    message: str = Field(min_length=1)
    reference: str | None = None
    """The expected answer, for evaluators that compare (`contains`, `exact_match`, a judge)."""
    metadata: dict[str, Any] = {}

    _id = field_validator("id")(classmethod(lambda cls, v: _name(v)))


class ScenarioFile(_Strict):
    file: str
    """A JSONL file of scenarios, relative to the spec."""


class Team(_Strict):
    id: str
    root: str
    members: tuple[str, ...] = ()
    """Who may take part (the root always does); empty: everyone the root can reach."""

    _id = field_validator("id")(classmethod(lambda cls, v: _name(v)))


class Variant(_Strict):
    name: str
    overrides: dict[str, dict[str, Any]] = {}
    """agent id (or `"*"` for every agent) -> field -> value."""

    _name = field_validator("name")(classmethod(lambda cls, v: _name(v)))


class Grid(_Strict):
    grid: dict[str, list[Any]]
    """`agent.field` (or `*.field`) -> values; the variants are the product of all lists."""

    @field_validator("grid")
    @classmethod
    def _paths(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        if not v:
            raise ValueError("a grid needs at least one `agent.field: [values]` entry")
        for path, values in v.items():
            agent, sep, fld = path.partition(".")
            if not sep or not agent or not fld:
                raise ValueError(
                    f"grid key {path!r} must be agent.field (or *.field), e.g. writer.temperature"
                )
            if not values:
                raise ValueError(f"grid key {path!r} has no values")
        return v

    def variants(self) -> list[Variant]:
        keys = list(self.grid)
        out = []
        for combo in itertools.product(*(self.grid[k] for k in keys)):
            overrides: dict[str, dict[str, Any]] = {}
            parts = []
            for key, value in zip(keys, combo, strict=True):
                agent, _, fld = key.partition(".")
                overrides.setdefault(agent, {})[fld] = value
                parts.append(f"{'' if agent == '*' else agent + '.'}{fld}-{_short(value)}")
            out.append(Variant(name=_safe_name(",".join(parts)), overrides=overrides))
        return out


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text.rsplit("/", 1)[-1]


def _safe_name(text: str) -> str:
    """A grid point's name, made fit for keys and shells (and at most 64 characters)."""
    cleaned = "".join(c if c.isalnum() or c in "._-" else "_" for c in text.replace(",", "__"))
    return cleaned.strip("_.-")[:64] or "variant"


class RunSettings(_Strict):
    in_flight: int = Field(64, ge=1, le=100_000)
    """Episodes running at once."""
    supervisors: int = Field(1, ge=1, le=256)
    evaluators: int = Field(1, ge=1, le=256)
    retries: int = Field(2, ge=0, le=20)
    """Attempts after the first for an episode whose actor or node died."""
    ramp_s: float = Field(1.0, ge=0, le=3600)
    """The first `in_flight` episodes start spread over this many seconds instead of all at
    once, so their model calls (and rate limits) do not come in lockstep bursts."""
    scoring: Literal["supervisor", "evaluators"] = "supervisor"
    """Who scores an episode: the supervisor that ran it, right after (one Ray call less per
    episode), or a pool of `evaluators` Evaluator actors (isolated, scaled on their own)."""


class Adaptive(_Strict):
    """Successive halving across variants: the scenario x repeat pairs are split into rounds;
    after each round the worst variants stop (p2e/rollouts/adaptive.py, docs/rollouts.md)."""

    method: Literal["halving"] = "halving"
    keep: float = Field(0.5, gt=0, lt=1)
    """The fraction of a round's variants that go on (rounded up; at least one stops, and never
    fewer than `finalists` go on)."""
    rounds: int | Literal["auto"] = "auto"
    """How many rounds; `auto`: as many as it takes to get down to `finalists`."""
    finalists: int = Field(1, ge=1)
    """How many variants the last round keeps (the floor of every cut)."""
    seed: int = 0
    """Seeds the order in which scenarios are dealt into rounds."""
    failed_score: float | None = None
    """What an episode without a primary score (failed, or its evaluation failed) counts as when
    variants are ranked; default: it is left out of the mean, as in every summary."""

    @field_validator("rounds")
    @classmethod
    def _rounds(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError("rounds must be at least 1 (or auto)")
        return v


class RolloutSpec(_Strict):
    name: str
    agents: str | dict[str, Any] = "agents.yaml"
    teams: tuple[Team, ...] = Field(min_length=1)
    scenarios: tuple[Scenario | ScenarioFile, ...] = Field(min_length=1)
    variants: tuple[Variant, ...] | Grid = (Variant(name="baseline"),)
    repeats: int | tuple[int, ...] = 1
    """How many times each (team, variant, scenario) runs; or the seeds, one run each."""
    evaluators: tuple[EvaluatorConfig, ...] = ()
    primary: str | None = None
    limits: dict[str, Any] = {}
    """Per-episode limits over the agents file's: max_steps, max_depth, deadline_s,
    max_tokens, max_cost_usd, max_tool_calls_per_turn."""
    run: RunSettings = RunSettings()
    ledger: LedgerConfig | None = None
    """Wallets for the agents: starting balances, spending policies, a bounty paid to the best
    variant's agents (p2e/ledger/rollout.py)."""
    adaptive: Adaptive | None = None
    """Spend fewer episodes on the variants that are losing (successive halving)."""

    _name = field_validator("name")(classmethod(lambda cls, v: _name(v)))

    @field_validator("repeats")
    @classmethod
    def _repeats(cls, v: int | tuple[int, ...]) -> int | tuple[int, ...]:
        if isinstance(v, int) and not 1 <= v <= 100_000:
            raise ValueError("repeats must be between 1 and 100000 (or a list of seeds)")
        if isinstance(v, tuple) and (not v or len(set(v)) != len(v)):
            raise ValueError("seeds must be a non-empty list without duplicates")
        return v

    @model_validator(mode="after")
    def _unique(self) -> RolloutSpec:
        for what, ids in (
            ("team", [t.id for t in self.teams]),
            ("evaluator", [e.id for e in self.evaluators]),
            ("variant", [v.name for v in self.variant_list]),
        ):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            if dup:
                raise ValueError(f"{what} ids must be unique; repeated: {', '.join(dup)}")
        if self.primary is not None and self.primary not in {e.id for e in self.evaluators}:
            raise ValueError(f"primary {self.primary!r} is not one of the evaluators")
        metric = self.ledger.payout.metric if self.ledger else None
        if metric is not None and metric not in {e.id for e in self.evaluators}:
            raise ValueError(f"ledger.payout.metric {metric!r} is not one of the evaluators")
        return self

    @property
    def variant_list(self) -> list[Variant]:
        return self.variants.variants() if isinstance(self.variants, Grid) else list(self.variants)

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(range(self.repeats)) if isinstance(self.repeats, int) else self.repeats

    @property
    def primary_metric(self) -> str | None:
        return self.primary or (self.evaluators[0].id if self.evaluators else None)


class Resolved(BaseModel):
    """A spec with everything it points to loaded and checked: what a rollout runs."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    spec: RolloutSpec
    path: str
    team_config: TeamConfig
    scenarios: tuple[Scenario, ...]
    variants: tuple[Variant, ...]
    limits: Limits


def load_spec(path: str | Path) -> Resolved:
    """Read, validate and resolve a spec file."""
    path = Path(path)
    raw, lines = read_yaml_lines(path, "rollout spec")
    if not isinstance(raw, dict):
        raise InvalidArgument(f"{path}: a rollout spec is a mapping (name, agents, teams, scenarios, ...)")
    try:
        spec = RolloutSpec.model_validate(raw)
    except ValidationError as e:
        raise InvalidArgument(f"{path}: {field_problems(e, lines)}") from None
    return resolve(spec, path.parent, str(path), lines)


def resolve(spec: RolloutSpec, base: Path, where: str = "<spec>", lines: dict | None = None) -> Resolved:
    """Load the agents and scenario files, expand the variants, check every reference."""

    def fail(msg: str, *loc: Any) -> InvalidArgument:
        line = (lines or {}).get(tuple(loc))
        return InvalidArgument(f"{where}: {msg}" + (f" (line {line})" if line else ""))

    if isinstance(spec.agents, str):
        team_config = load_team(base / spec.agents)
    else:
        team_config = team_from_mapping(spec.agents, base, f"{where}: agents")
    for i, team in enumerate(spec.teams):
        for agent in (team.root, *team.members):
            if agent not in team_config.agents:
                raise fail(
                    f"team {team.id!r}: unknown agent {agent!r}; the agents are: "
                    f"{', '.join(sorted(team_config.agents))}",
                    "teams",
                    i,
                )
    scenarios = _scenarios(spec, base, fail)
    variants = tuple(spec.variant_list)
    for i, v in enumerate(variants):
        _check_overrides(v, team_config, fail, i)
    try:
        limits = Limits.model_validate({**team_config.limits.model_dump(), **spec.limits})
    except ValidationError as e:
        raise InvalidArgument(f"{where}: limits: {field_problems(e)}") from None
    spec = spec.model_copy(update={"evaluators": tuple(_with_paths(e, base) for e in spec.evaluators)})
    _check_evaluators(spec, team_config, fail)
    if spec.adaptive is not None:
        from p2e.rollouts.adaptive import check

        check(spec, len(variants), len(scenarios), fail)
    return Resolved(
        spec=spec,
        path=where,
        team_config=team_config,
        scenarios=scenarios,
        variants=variants,
        limits=limits,
    )


def _scenarios(spec: RolloutSpec, base: Path, fail: Any) -> tuple[Scenario, ...]:
    out: list[Scenario] = []
    for i, item in enumerate(spec.scenarios):
        if isinstance(item, Scenario):
            out.append(item)
            continue
        path = base / item.file
        try:
            text = path.read_text()
        except OSError as e:
            raise fail(f"scenarios[{i}]: cannot read {path}: {e.strerror or e}", "scenarios", i) from None
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                out.append(Scenario.model_validate_json(line))
            except ValidationError as e:
                raise InvalidArgument(f"{path}: line {n}: {field_problems(e)}") from None
    ids = [s.id for s in out]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise fail(f"scenario ids must be unique; repeated: {', '.join(dup)}", "scenarios")
    return tuple(out)


def _check_overrides(v: Variant, team: TeamConfig, fail: Any, i: int) -> None:
    """Apply each override to each agent now, so a typo fails before any episode runs."""
    for agent_id, fields in v.overrides.items():
        if agent_id != "*" and agent_id not in team.agents:
            raise fail(
                f"variant {v.name!r}: unknown agent {agent_id!r} in overrides; the agents are: "
                f"{', '.join(sorted(team.agents))} (or '*' for all)",
                "variants",
                i,
            )
        fixed = sorted({"id", "placement", "replicas"} & set(fields))
        if fixed:  # they shape the actor set, which every variant of a rollout shares
            raise fail(
                f"variant {v.name!r}: an override cannot change {', '.join(fixed)} (agents file only)",
                "variants",
                i,
            )
    specs = {}
    for agent_id, spec in team.agents.items():
        try:
            specs[agent_id] = spec.with_overrides(overrides_for(v, agent_id))
        except ValidationError as e:
            raise fail(
                f"variant {v.name!r}: agent {agent_id!r}: {field_problems(e)}", "variants", i
            ) from None
    for spec in specs.values():  # a missing or broken persona template fails now, not per episode
        delegates = [specs[d] for d in spec.can_delegate_to if d in specs]
        try:
            render_persona(spec, delegates, [], team.personas_path)
        except InvalidArgument as e:
            raise fail(f"variant {v.name!r}: {e}", "variants", i) from None
    for agent_id in team.agents:
        for target in overrides_for(v, agent_id).get("can_delegate_to", ()):
            if target not in team.agents:
                raise fail(f"variant {v.name!r}: agent {agent_id!r} cannot delegate to unknown {target!r}")


def overrides_for(v: Variant, agent_id: str) -> dict[str, Any]:
    """What variant `v` changes for one agent: its `"*"` overrides, then its own."""
    return {**v.overrides.get("*", {}), **v.overrides.get(agent_id, {})}


PATH_PARAMS = ("rubric", "template")
"""Evaluator parameters that name files: relative to the spec, like every other path in it."""


def _with_paths(cfg: EvaluatorConfig, base: Path) -> EvaluatorConfig:
    params = dict(cfg.params)
    for key in PATH_PARAMS:
        value = params.get(key)
        if (
            isinstance(value, str)
            and value.endswith((".yaml", ".yml", ".j2"))
            and not Path(value).is_absolute()
        ):
            params[key] = str((base / value).resolve())
    return cfg.model_copy(update={"params": params})


def _check_evaluators(spec: RolloutSpec, team: TeamConfig, fail: Any) -> None:
    from p2e.evals import default_registry

    registry = default_registry(team.evaluator_modules)
    for i, cfg in enumerate(spec.evaluators):
        try:
            registry.create(cfg.id, **cfg.params)
        except InvalidArgument as e:
            raise fail(f"evaluators[{i}]: {e}", "evaluators", i) from None


def agent_specs(resolved: Resolved, variant: Variant) -> dict[str, AgentSpec]:
    """Every agent as this variant has it."""
    return {a: s.with_overrides(overrides_for(variant, a)) for a, s in resolved.team_config.agents.items()}
