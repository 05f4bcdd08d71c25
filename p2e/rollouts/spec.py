"""A rollout spec: the YAML a user writes to sweep teams x variants x scenarios x repeats.

```yaml
name: quickstart
agents: agents.yaml                  # an agents file (relative to this spec) or an inline mapping
teams:
  - {id: research, root: planner}    # members: [planner, researcher] limits who may be delegated to
scenarios:                           # inline, and/or from files (.jsonl, .csv, .parquet) or code
  - {id: paris, message: "What is the weather in Paris?", reference: Paris}
  - {file: more.csv, fields: {message: question, reference: answer}}   # columns -> fields
  - {callable: "my_pkg.data:scenarios", args: {n: 100}}                # dicts or Scenarios
variants:                            # a list of named overrides ...
  - name: baseline
  - name: hot-writer
    overrides: {writer: {temperature: 1.2}}     # `"*"` overrides every agent
# variants: {grid: {writer.temperature: [0.2, 1.0], "*.model": [mock/default, mock/terse]}}
repeats: 2                           # or a list of seeds: [7, 11, 13]
evaluators: [{id: contains}]
primary: contains                    # the metric variants are ranked by (default: the first)
limits: {max_steps: 40, deadline_s: 120, max_cost_usd: 0.5, max_turns: 10}   # max_turns: user turns
run: {in_flight: 64, supervisors: 1, retries: 2, max_failures: 10%}   # stop a failing rollout
adaptive: {method: halving, keep: 0.5, rounds: auto}   # optional: successive halving (adaptive.py)
```

Loading checks the spec and everything it points to as a run would use it (`resolve`), and
raises every problem found at once (`p2e.problems.InvalidFile`, an `InvalidArgument`), each
naming the file, the line where it can, and the field.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from p2e.agents import AgentSpec, EvaluatorConfig, TeamConfig
from p2e.agents.check import AgentCheck, import_tool_modules
from p2e.agents.spec import InvalidTeam, read_team, team_from_mapping
from p2e.errors import InvalidArgument
from p2e.events import Limits
from p2e.ledger.bounty import LedgerConfig
from p2e.problems import Problems, error_message
from p2e.rollouts.failures import parse_limit
from p2e.rollouts.halving import Adaptive
from p2e.rollouts.halving import check as check_adaptive
from p2e.rollouts.scenarios import Scenario, ScenarioCall, ScenarioFile, load_scenarios
from p2e.store.keys import check_name
from p2e.yamlfile import Lines, read_yaml_lines

MAX_TURNS = 10
"""The most user turns (the first message and the scripted ones) in one episode's dialogue,
unless the spec's `limits.max_turns` says otherwise."""

DIALOGUE_METRICS = ("goal_met", "turns")
"""The scores a row has when its scenario has a simulated user (its verdict, 1 or 0, and the
user turns sent); `primary` may name them."""


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Team(_Strict):
    id: str
    root: str
    members: tuple[str, ...] = ()
    """Who may take part (the root always does); empty: everyone the root can reach."""

    _id = field_validator("id")(classmethod(lambda cls, v: check_name(v)))


class Variant(_Strict):
    name: str
    overrides: dict[str, dict[str, Any]] = {}
    """agent id (or `"*"` for every agent) -> field -> value."""

    _name = field_validator("name")(classmethod(lambda cls, v: check_name(v)))


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
        """One variant per point of the grid, named after its values (`_names`)."""
        keys = list(self.grid)
        labels = [key.removeprefix("*.") for key in keys]
        points = []
        for combo in itertools.product(*(self.grid[k] for k in keys)):
            overrides: dict[str, dict[str, Any]] = {}
            for key, value in zip(keys, combo, strict=True):
                agent, _, fld = key.partition(".")
                overrides.setdefault(agent, {})[fld] = value
            points.append(([_safe(_short(value)) for value in combo], overrides))
        names = _names(labels, points)
        return [Variant(name=n, overrides=o) for n, (_, o) in zip(names, points, strict=True)]


NAME_MAX = 64
"""The longest variant name (`NAME_RE`: names become store keys)."""
DIGEST = 10
"""Hex digits of the overrides' hash in a name that needs one."""


def _names(labels: list[str], points: list[tuple[list[str], dict[str, Any]]]) -> list[str]:
    """Readable names for the grid's points, `writer.temperature-0.2__model-terse`. A name that
    is too long is cut (each value getting a fair share of the room), and one that is cut or
    that two points would share (`_short` keeps the last part of `a/b`, `_safe` replaces
    characters) ends with a hash of the point's whole overrides, stable across runs; the
    overrides themselves are the variant's, and every episode's."""
    full = [_joined(labels, values) for values, _ in points]
    count = Counter(full)
    out = []
    for name, (values, overrides) in zip(full, points, strict=True):
        if len(name) > NAME_MAX or count[name] > 1:
            digest = hashlib.sha256(json.dumps(overrides, sort_keys=True, default=str).encode()).hexdigest()
            room = NAME_MAX - DIGEST - 1
            name = f"{_joined(labels, _fit(labels, values, room))[:room].rstrip('_.-')}-{digest[:DIGEST]}"
        out.append(name)
    return out


def _joined(labels: list[str], values: list[str]) -> str:
    name = "__".join(f"{label}-{value}" for label, value in zip(labels, values, strict=True))
    return name.strip("_.-") or "variant"


def _fit(labels: list[str], values: list[str], room: int) -> list[str]:
    """The values cut so that the joined name fits `room`: short values whole, the long ones
    sharing what is left equally (if the labels alone are too long, the name is cut after)."""
    left = room - sum(len(label) + 1 for label in labels) - 2 * (len(labels) - 1)  # `label-`, `__`
    out = list(values)
    for n, i in enumerate(sorted(range(len(values)), key=lambda i: len(values[i]))):
        share = max(left // (len(values) - n), 0)
        out[i] = values[i][:share].rstrip("_.-")
        left -= len(out[i])
    return out


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text.rsplit("/", 1)[-1]


def _safe(text: str) -> str:
    """A value as it may appear in a name (keys, shells): ASCII letters, digits, `._-`."""
    return "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in text)


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
    max_failures: int | float | None = None
    """Stop the rollout once more than this many of its episodes failed (a count), or more than
    this share of the finished ones (0.1 or "10%", checked from 20 finished on); None: never.
    Not part of the spec's hash: a resume may change it (p2e/rollouts/failures.py)."""

    @field_validator("max_failures", mode="before")
    @classmethod
    def _max_failures(cls, v: object) -> int | float | None:
        return parse_limit(v)


def _scenario_kind(v: Any) -> str:
    """Which kind of `scenarios` item `v` is, by its keys: so a bad inline scenario's problems
    are its own, not those of every kind it might have been."""
    if isinstance(v, dict):
        return "ScenarioFile" if "file" in v else "ScenarioCall" if "callable" in v else "Scenario"
    return type(v).__name__ if isinstance(v, ScenarioFile | ScenarioCall) else "Scenario"


ScenarioItem = Annotated[
    Annotated[Scenario, Tag("Scenario")]
    | Annotated[ScenarioFile, Tag("ScenarioFile")]
    | Annotated[ScenarioCall, Tag("ScenarioCall")],
    Discriminator(_scenario_kind),
]


class RolloutSpec(_Strict):
    name: str
    agents: str | dict[str, Any] = "agents.yaml"
    teams: tuple[Team, ...] = Field(min_length=1)
    scenarios: tuple[ScenarioItem, ...] = Field(min_length=1)
    variants: tuple[Variant, ...] | Grid = (Variant(name="baseline"),)
    repeats: int | tuple[int, ...] = 1
    """How many times each (team, variant, scenario) runs; or the seeds, one run each."""
    evaluators: tuple[EvaluatorConfig, ...] = ()
    primary: str | None = None
    limits: dict[str, Any] = {}
    """Per-episode limits over the agents file's: max_steps, max_depth, deadline_s,
    max_tokens, max_cost_usd, max_tool_calls_per_turn; and the rollout's own `max_turns`, the
    most user turns a scenario's dialogue may hold (`MAX_TURNS`)."""
    run: RunSettings = RunSettings()
    ledger: LedgerConfig | None = None
    """Wallets for the agents: starting balances, spending policies, a bounty paid to the best
    variant's agents (p2e/ledger/bounty.py)."""
    adaptive: Adaptive | None = None
    """Spend fewer episodes on the variants that are losing (successive halving)."""

    _name = field_validator("name")(classmethod(lambda cls, v: check_name(v)))

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
        known = {e.id for e in self.evaluators} | set(DIALOGUE_METRICS)
        if self.primary is not None and self.primary not in known:
            raise ValueError(f"primary {self.primary!r} is not one of the evaluators (or goal_met, turns)")
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
    max_turns: int = MAX_TURNS
    """The most user turns in an episode's dialogue (`limits.max_turns`)."""
    imported: dict[str, tuple[str, ...]] = {}
    """What checking it imported, so ran the code of: `scenario callables`, `tool modules`,
    `evaluator modules`, `evaluator entry points` (installed packages')."""


def load_spec(path: str | Path) -> Resolved:
    """Read, validate and resolve a spec file; every problem found is raised at once
    (`InvalidFile`), each with its field and line."""
    path = Path(path)
    raw, lines = read_yaml_lines(path, "rollout spec")
    problems = Problems(str(path), lines)
    if not isinstance(raw, dict):
        problems.add("a rollout spec is a mapping (name, agents, teams, scenarios, ...)")
        problems.check()
    try:
        spec = RolloutSpec.model_validate(raw)
    except ValidationError as e:
        problems.validation(e)
        without = _without_bad_fields(raw, e)
        if without is None:
            problems.check()
        assert without is not None  # check() raised: it holds the validation's problems
        spec = without
    return resolve(spec, path.parent, str(path), lines, problems)


def _check_turns(scenarios: tuple[Scenario, ...], max_turns: Any, problems: Problems) -> None:
    """`limits.max_turns` is a whole number, and no scenario's dialogue is longer."""
    if isinstance(max_turns, bool) or not isinstance(max_turns, int) or max_turns < 1:
        problems.add(
            f"max_turns is a whole number of user turns, at least 1; not {max_turns!r}", "limits", "max_turns"
        )
        return
    for s in scenarios:
        if 1 + len(s.turns) > max_turns:
            problems.add(
                f"scenario {s.id!r} has {1 + len(s.turns)} user turns (its message and {len(s.turns)} "
                f"scripted), over limits.max_turns {max_turns}; shorten its turns or raise max_turns",
                "scenarios",
            )


def _without_bad_fields(raw: dict[str, Any], e: ValidationError) -> RolloutSpec | None:
    """The spec without the top-level fields that fail, if it stands without them, so the rest
    can be checked in the same run; None when what is left would mislead (an agents file or
    variants of its default) or does not validate."""
    bad = {err["loc"][0] if err["loc"] else None for err in e.errors()}
    if bad & {None, "agents", "variants"}:
        return None
    try:
        return RolloutSpec.model_validate({k: v for k, v in raw.items() if k not in bad})
    except ValidationError:
        return None


def resolve(
    spec: RolloutSpec,
    base: Path,
    where: str = "<spec>",
    lines: Lines | None = None,
    problems: Problems | None = None,
) -> Resolved:
    """Load the agents and scenario files, expand the variants, check every reference and what
    each agent needs to run (see `p2e.agents.check`: this imports the tool and evaluator
    modules); raise every problem at once (with `problems`, those found before)."""
    problems = problems or Problems(where, lines)
    agents = _agents(spec, base, problems)
    team_config = agents.team
    scenarios, called = load_scenarios(spec.scenarios, base, problems)
    variants = tuple(spec.variant_list)
    defaults = team_config.limits if team_config is not None else Limits()
    given = dict(spec.limits)
    max_turns = given.pop("max_turns", MAX_TURNS)
    _check_turns(scenarios, max_turns, problems)
    try:
        limits = Limits.model_validate({**defaults.model_dump(), **given})
    except ValidationError as e:
        problems.validation(e, "limits")
        limits = defaults
    spec = spec.model_copy(update={"evaluators": tuple(_with_paths(e, base) for e in spec.evaluators)})
    imported: dict[str, tuple[str, ...]] = {"scenario callables": called}
    if team_config is not None:
        _check_teams(spec, agents.ids, problems)
        _check_users(scenarios, agents.ids, problems)
        modules, failed = import_tool_modules(team_config.tool_modules)
        for loc, problem in failed:
            agents.declared.add(problem, "tool_modules", *loc)
        imported["tool modules"] = tuple(m.__name__ for m in modules)
        check = AgentCheck(team_config, modules)
        for i, v in enumerate(variants):
            _check_variant(v, i, spec.variants, agents, check, problems)
        imported |= _check_evaluators(spec, team_config, problems, agents.declared)
    if spec.adaptive is not None:
        with problems.collect():
            check_adaptive(
                spec.adaptive,
                spec.primary_metric,
                len(spec.seeds),
                len(variants),
                len(scenarios),
                problems.fail,
            )
    problems.check()
    assert team_config is not None  # (an agents file that does not load has problems)
    return Resolved(
        spec=spec,
        path=where,
        team_config=team_config,
        scenarios=scenarios,
        variants=variants,
        limits=limits,
        max_turns=max_turns,
        imported=imported,
    )


class _Agents(NamedTuple):
    """The agents a spec points to: those that load (None: the file does not), every id the
    file declares, and where the file's problems point."""

    team: TeamConfig | None
    ids: list[str]
    declared: Problems


def _agents(spec: RolloutSpec, base: Path, problems: Problems) -> _Agents:
    if isinstance(spec.agents, str):
        path = base / spec.agents
        declared = problems.other_file(str(path))
    else:
        declared = problems.under("agents")
    try:
        if isinstance(spec.agents, str):
            team, declared.lines = read_team(path)
        else:
            team = team_from_mapping(spec.agents, base, problems.where, problems.lines, ("agents",))
        return _Agents(team, sorted(team.agents), declared)
    except InvalidTeam as e:  # checked against the agents that load, so its problems come too
        problems.absorb(e)
        declared.lines = e.lines
        return _Agents(e.team, e.declared, declared)
    except InvalidArgument as e:  # the file cannot be read
        problems.absorb(e, "agents")
        return _Agents(None, [], declared)


def _check_users(scenarios: tuple[Scenario, ...], ids: list[str], problems: Problems) -> None:
    """A simulated user is an agent of the agents file."""
    for s in scenarios:
        if s.user is not None and s.user.agent not in ids:
            problems.add(
                f"scenario {s.id!r}: its user is an unknown agent {s.user.agent!r}; the agents are: "
                f"{', '.join(ids)}",
                "scenarios",
            )


def _check_teams(spec: RolloutSpec, ids: list[str], problems: Problems) -> None:
    for i, team in enumerate(spec.teams):
        at = problems.under("teams", i, subject=f"team {team.id!r}")
        named = [(("root",), team.root), *((("members", j), m) for j, m in enumerate(team.members))]
        for loc, agent in named:
            if agent not in ids:
                at.add(f"unknown agent {agent!r}; the agents are: {', '.join(ids)}", *loc)


FIXED = ("id", "placement", "replicas")
"""Agent fields a variant cannot override: they shape the actor set, which every variant of a
rollout shares."""


def _check_variant(
    v: Variant,
    i: int,
    listed: tuple[Variant, ...] | Grid,
    agents: _Agents,
    check: AgentCheck,
    problems: Problems,
) -> None:
    """Apply the variant's overrides to each agent now and check each agent as it would run, so
    a typo fails before any episode runs. A problem points at the override that causes it, or
    at the agents file when the agent's own setting does (`_blame`)."""
    assert agents.team is not None
    grid = listed if isinstance(listed, Grid) else None
    known = f"{', '.join(agents.ids)} (or '*' for all)"

    def add(problem: str, agent_id: str, loc: tuple[Any, ...], source: str | None = None) -> None:
        at, loc = _blame(v, i, grid, agent_id, loc, problems, agents.declared, source)
        at.add(problem, *loc)

    for agent_id, fields in v.overrides.items():
        if agent_id != "*" and agent_id not in agents.ids:
            add(f"unknown agent {agent_id!r} in overrides; the agents are: {known}", agent_id, (), agent_id)
        for fld in sorted(set(FIXED) & set(fields)):
            add(f"an override cannot change {fld} (agents file only)", agent_id, (fld,), agent_id)
    for agent_id, base in agents.team.agents.items():
        try:
            spec = base.with_overrides(overrides_for(v, agent_id))
        except ValidationError as e:
            for err in e.errors():
                add(error_message(err), agent_id, tuple(err["loc"]))
            continue
        unknown = [d for d in spec.can_delegate_to if d not in agents.ids]
        if unknown:
            problem = f"cannot delegate to unknown agents {unknown}; the agents are: {', '.join(agents.ids)}"
            add(problem, agent_id, ("can_delegate_to",))
        for loc, problem in check(spec):
            add(problem, agent_id, loc)


def _blame(
    v: Variant,
    i: int,
    grid: Grid | None,
    agent_id: str,
    loc: tuple[Any, ...],
    problems: Problems,
    declared: Problems,
    source: str | None = None,
) -> tuple[Problems, tuple[Any, ...]]:
    """Where a problem with field `loc` of agent `agent_id` under variant `v` points: the
    override that sets the field (the agent's own, else `"*"`; `source` names it), as listed or
    as a grid key and value; else the agent in the agents file."""
    if source is None and loc:
        source = next((a for a in (agent_id, "*") if loc[0] in v.overrides.get(a, {})), None)
    if source is None:
        return declared.under("agents", agent_id, subject=f"agent {agent_id!r}"), loc
    if grid is None:
        return problems.under("variants", i, subject=f"variant {v.name!r}"), ("overrides", source, *loc)
    if not loc:
        return problems.under("variants", "grid"), (next(k for k in grid.grid if k.startswith(f"{source}.")),)
    key = f"{source}.{loc[0]}"
    j = next(j for j, value in enumerate(grid.grid[key]) if value == v.overrides[source][loc[0]])
    return problems.under("variants", "grid"), (key, j, *loc[1:])


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


def _check_evaluators(
    spec: RolloutSpec, team: TeamConfig, problems: Problems, declared: Problems
) -> dict[str, tuple[str, ...]]:
    """Each evaluator with its parameters, after loading the evaluator modules (and installed
    packages' entry points) as the evaluators will; what was imported."""
    from importlib import metadata

    from p2e.evals import ENTRY_POINT_GROUP, builtin_registry

    registry = builtin_registry()
    with problems.collect():
        registry.load_entry_points()
    loaded = []
    for j, name in enumerate(team.evaluator_modules):
        with declared.collect("evaluator_modules", j):
            registry.load_module(name)
            loaded.append(name)
    for i, cfg in enumerate(spec.evaluators):
        with problems.collect("evaluators", i):
            registry.create(cfg.id, **cfg.params)
    return {
        "evaluator modules": tuple(loaded),
        "evaluator entry points": tuple(ep.value for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)),
    }


def agent_specs(resolved: Resolved, variant: Variant) -> dict[str, AgentSpec]:
    """Every agent as this variant has it."""
    return {a: s.with_overrides(overrides_for(variant, a)) for a, s in resolved.team_config.agents.items()}
