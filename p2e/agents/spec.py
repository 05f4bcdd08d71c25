"""Agent declarations: what `experiments/agents.yaml` holds, validated with errors a user can fix.

An agent is data: model, sampling settings, persona, tools, who it may delegate to. A variant is
a set of overrides of those fields, applied per request, so the same Agent actor serves every
variant of a sweep.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from p2e.errors import InvalidArgument
from p2e.events import Limits, Reflection
from p2e.llm.registry import Providers
from p2e.policies.context import ContextPolicy
from p2e.policies.duplicates import DuplicatePolicy
from p2e.policies.guide import GuidePolicy
from p2e.problems import InvalidFile, Problem, Problems
from p2e.store.keys import NAME_RE
from p2e.yamlfile import Lines, field_problems, read_yaml_lines


class AgentSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    description: str = ""
    model: str = "mock/default"
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    seed: int | None = None
    """Sampling seed for providers that take one (a rollout's repeats set it)."""
    persona: str = "default"
    """A template name in the personas directory (`<name>.j2`), or inline Jinja text."""
    tools: tuple[str, ...] = ()
    can_delegate_to: tuple[str, ...] = ()
    replicas: int = Field(1, ge=1, le=64)
    placement: Literal["actor", "supervisor"] = "actor"
    """`actor`: its own Agent actor(s), restartable and replicable (the default). `supervisor`:
    run inside each supervisor process, without a Ray call per step: lower latency for cheap
    agents, at the cost of isolation (a crash in a tool takes the supervisor with it)."""
    context: ContextPolicy = ContextPolicy()
    """What of a frame the model sees: everything (the default), the last N turns, or a token
    budget; tool outputs cut past a size (`p2e.policies.context`)."""
    duplicates: DuplicatePolicy = DuplicatePolicy()
    """What a repeated tool call does: run it (the default), run and mark it, or, for a tool with
    side effects, not run it again (`p2e.policies.duplicates`)."""

    reflection: Reflection | None = None
    """Review this agent's final answers before they pop: `{rounds: N}` for a self-review, or
    `{critic: AGENT}` to have another agent of the team review them."""
    guide: GuidePolicy | None = None
    """Evaluator-guided branching at this agent's turns (best-of-n, beam, best-first)."""

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not NAME_RE.fullmatch(v):
            raise ValueError("use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return v

    @field_validator("guide")
    @classmethod
    def _guide(cls, v: GuidePolicy | None, info: ValidationInfo) -> GuidePolicy | None:
        """Every child must be a valid agent: check the candidates against the other fields."""
        if v is not None:
            for i, (_, overrides) in enumerate(v.children()):
                try:
                    AgentSpec.model_validate({**info.data, **overrides})
                except ValidationError as e:
                    raise ValueError(f"candidates[{i}]: {field_problems(e)}") from None
        return v

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        provider, sep, name = v.partition("/")
        if not sep or not provider or not name:
            raise ValueError("must be provider/model, e.g. openai/gpt-4o-mini or mock/default")
        return v

    @model_validator(mode="after")
    def _placement(self) -> AgentSpec:
        if self.placement == "supervisor" and self.replicas > 1:
            raise ValueError(
                "replicas apply to placement `actor`; a `supervisor` agent runs in every supervisor"
            )
        return self

    def with_overrides(self, overrides: dict[str, Any]) -> AgentSpec:
        """This agent under a variant's overrides (validated like the file itself)."""
        if not overrides:
            return self
        return AgentSpec.model_validate({**self.model_dump(), **overrides})


class EvaluatorConfig(BaseModel):
    """An evaluator the runtime runs by itself: on every step as it is stored, or on the branch
    (the episode) each time the root agent answers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    per: Literal["step", "episode"] = "step"
    """(Not `on`: YAML 1.1 reads an `on:` key as the boolean true.)"""
    params: dict[str, Any] = {}


class TeamConfig(BaseModel):
    """The whole agents file: agents, provider settings, default limits."""

    model_config = ConfigDict(extra="forbid")

    agents: dict[str, AgentSpec]
    providers: dict[str, dict[str, Any]] = {}
    limits: Limits = Limits()
    personas_dir: str = "personas"
    """Relative to the agents file."""
    tool_modules: tuple[str, ...] = ()
    """Python modules imported before the agents start, so their `@tool` functions register."""
    evaluators: tuple[EvaluatorConfig, ...] = ()
    evaluator_modules: tuple[str, ...] = ()
    """Python modules with custom `@evaluator`s (besides the built-ins and installed packages')."""
    frame_cache: int = Field(4096, ge=0)
    """Frames whose messages each Agent actor keeps, so a step sends only the new ones
    (`p2e.runtime.frames`); 0 sends every frame whole. It only saves time: a miss resends."""
    base_dir: str = "."

    def agent(self, agent_id: str) -> AgentSpec:
        try:
            return self.agents[agent_id]
        except KeyError:
            raise InvalidArgument(
                f"unknown agent {agent_id!r}; the agents are: {', '.join(sorted(self.agents))}"
            ) from None

    def team_of(self, root: str) -> dict[str, tuple[str, ...]]:
        """The agents reachable from `root` by delegation, with their delegation edges."""
        self.agent(root)
        team: dict[str, tuple[str, ...]] = {}
        todo = [root]
        while todo:
            a = todo.pop()
            if a in team:
                continue
            spec = self.agents[a]
            team[a] = spec.can_delegate_to
            todo += list(team[a])
            if spec.reflection is not None and spec.reflection.critic is not None:
                todo.append(spec.reflection.critic)  # a critic is in the team, reachable by none
        return team

    def tools(self) -> dict[str, tuple[str, ...]]:
        """Each agent's tool names (whose ledger tools `p2e.ledger.wallet.wallet_agents` reads)."""
        return {a: spec.tools for a, spec in self.agents.items()}

    @property
    def personas_path(self) -> Path:
        return Path(self.base_dir) / self.personas_dir


def load_team(path: str | Path) -> TeamConfig:
    """Read and validate an agents file; every problem names the file, the line, the agent and
    the field, and all of them are raised at once (`InvalidFile`)."""
    return read_team(path)[0]


def read_team(path: str | Path) -> tuple[TeamConfig, Lines]:
    """`load_team`, and the line of each value of the file (for later problems, in a rollout)."""
    path = Path(path)
    raw, lines = read_yaml_lines(path, "agents file")
    return team_from_mapping(raw, path.parent.resolve(), str(path), lines), lines


def team_from_mapping(
    raw: Any, base: Path, where: str, lines: Lines | None = None, at: tuple[Any, ...] = ()
) -> TeamConfig:
    """Validate an agents mapping (a file's content, or a rollout spec's inline `agents:`, `at`
    that key of the spec's `lines`); relative paths in it are relative to `base`; problems name
    `where`."""
    problems = Problems(where, lines).under(*at)
    if not isinstance(raw, dict) or not isinstance(raw.get("agents"), dict):
        problems.add("expected a mapping with an `agents:` section of agent id -> settings")
        problems.check()
    ids = sorted(map(str, raw["agents"]))
    agents = {}
    for agent_id, body in raw["agents"].items():
        at_agent = problems.under("agents", agent_id, subject=f"agent {agent_id!r}")
        if not isinstance(body, dict):
            at_agent.add(f"expected a mapping of settings, got {body!r}")
            continue
        try:
            agents[agent_id] = AgentSpec.model_validate({**body, "id": agent_id})
        except ValidationError as e:
            at_agent.validation(e)
        for field, problem in _references(agent_id, body, ids):
            at_agent.add(problem, field)
    base = Path(base).resolve()
    providers = _resolve_paths(raw.get("providers") or {}, base)
    of_agents = len(problems)
    team: TeamConfig | None = None
    try:
        team = TeamConfig.model_validate(
            {**raw, "agents": agents, "providers": providers, "base_dir": str(base)}
        )
    except ValidationError as e:
        problems.validation(e)
    else:
        built = Providers(team.providers)
        for name in team.providers:  # bad settings fail when the file loads, not per episode
            with problems.collect("providers", name):
                built.provider(name)
    if not problems:
        assert team is not None
        return team
    rest = team if len(problems) == of_agents else None  # only agents fail: the rest stands
    raise InvalidTeam(problems.where, problems.found, rest, ids, lines)


class InvalidTeam(InvalidFile):
    """An agents mapping's problems, and what of it loads: `team` has the agents without
    problems of their own (None when a section of the file fails), `declared` every agent id.
    A rollout spec is checked against them, so its own problems come in the same report."""

    def __init__(
        self,
        where: str,
        problems: list[Problem],
        team: TeamConfig | None,
        declared: list[str],
        lines: Lines | None,
    ):
        super().__init__(where, problems)
        self.team = team
        self.declared = declared
        self.lines = lines


def _references(agent_id: str, body: dict[str, Any], ids: list[str]) -> list[tuple[str, str]]:
    """(field, problem) for each agent an agent names that the file does not declare."""
    out = []
    delegates = body.get("can_delegate_to")
    unknown = [t for t in delegates if t not in ids] if isinstance(delegates, list) else []
    if unknown:
        out.append(("can_delegate_to", f"unknown agents {unknown}; the agents are: {', '.join(ids)}"))
    reflection = body.get("reflection")
    critic = reflection.get("critic") if isinstance(reflection, dict) else None
    if critic is not None and (critic not in ids or critic == agent_id):
        out.append(
            (
                "reflection.critic",
                f"{critic!r} must be another agent of the file (or leave it out for a self-review); "
                f"the agents are: {', '.join(ids)}",
            )
        )
    return out


def _resolve_paths(providers: Any, base: Path) -> Any:
    """Make the mock provider's `rules_dirs` absolute (relative to the agents file), so every
    process (Ray workers run elsewhere) finds the same rules."""
    if not isinstance(providers, dict) or not isinstance(providers.get("mock"), dict):
        return providers
    mock = dict(providers["mock"])
    dirs = mock.get("rules_dirs")
    if isinstance(dirs, str):
        dirs = [dirs]
    if isinstance(dirs, list):
        mock["rules_dirs"] = [str(base / d) if isinstance(d, str) else d for d in dirs]
    return {**providers, "mock": mock}
