"""Agents files and personas: what loads, and the errors a user sees for what does not."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2e.agents import load_team, render_persona
from p2e.errors import InvalidArgument
from p2e.llm import ToolSpec

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "agents.yaml"
    p.write_text(text)
    return p


def test_the_shipped_agents_file_loads_and_every_persona_renders() -> None:
    team = load_team(ROOT / "experiments" / "agents.yaml")
    assert set(team.agents) == {"planner", "researcher", "writer"}
    assert team.team_of("planner") == {"planner": ("researcher", "writer"), "researcher": (), "writer": ()}
    for spec in team.agents.values():
        delegates = [team.agent(d) for d in spec.can_delegate_to]
        text = render_persona(spec, delegates, [ToolSpec(name=t) for t in spec.tools], team.personas_path)
        assert text.startswith(f"You are {spec.id}")
    planner = render_persona(team.agent("planner"), [team.agent("researcher")], [], team.personas_path)
    assert "- researcher: looks facts up with tools" in planner
    # relative rules dirs are made absolute, so Ray workers started elsewhere find them
    assert Path(team.providers["mock"]["rules_dirs"][0]).is_absolute()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("agents: [1, 2", "not valid YAML"),
        ("- a\n- b\n", "expected a mapping with an `agents:` section"),
        ("agents:\n  a: 3\n", "line 2, agent 'a': expected a mapping of settings"),
        (
            "agents:\n  a:\n    modle: mock/x\n",
            "line 3, agent 'a', field 'modle': unknown field (check its spelling)",
        ),
        (
            "agents:\n  a:\n    model: gpt-4o\n",
            "line 3, agent 'a', field 'model': Value error, must be provider/model",
        ),
        (
            "agents:\n  a:\n    temperature: hot\n",
            "line 3, agent 'a', field 'temperature': Input should be a valid number",
        ),
        (
            "agents:\n  a:\n    temperature: 7\n",
            "line 3, agent 'a', field 'temperature': Input should be less than or equal to 2",
        ),
        ("agents:\n  a:\n    replicas: 0\n", "line 3, agent 'a', field 'replicas'"),
        (
            "agents:\n  a:\n    can_delegate_to: [ghost]\n",
            "line 3, agent 'a', field 'can_delegate_to': unknown agents ['ghost']",
        ),
        ("agents:\n  'bad name':\n    model: mock/x\n", "line 2, agent 'bad name', field 'id'"),
        ("agents:\n  a: {}\nlimits:\n  max_depth: 0\n", "line 4, field 'limits.max_depth'"),
        ("agents:\n  a: {}\nextra_section: 1\n", "line 3, field 'extra_section': unknown field"),
    ],
)
def test_bad_agents_files_name_the_file_the_agent_and_the_field(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(InvalidArgument) as e:
        load_team(path)
    assert str(path) in str(e.value)
    assert message in str(e.value)


def test_a_missing_agents_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="no such agents file"):
        load_team(tmp_path / "nope.yaml")


def test_personas_missing_or_broken_say_what_is_wrong(tmp_path: Path) -> None:
    """Without the agent: the caller names it (a doubled `agent 'a': agent 'a':` before)."""
    (tmp_path / "personas").mkdir()
    (tmp_path / "personas" / "typo.j2").write_text("You are {{ agent.idd }}")
    team = load_team(
        write(
            tmp_path,
            "agents:\n  a:\n    persona: nothere\n  b:\n    persona: typo\n"
            "  c:\n    persona: 'Hi {{ agent.id }}!'\n",
        )
    )
    with pytest.raises(InvalidArgument, match=r"^no persona template nothere.j2 in "):
        render_persona(team.agent("a"), [], [], team.personas_path)
    with pytest.raises(InvalidArgument, match=r"^the persona template .*typo.j2: .*idd"):
        render_persona(team.agent("b"), [], [], team.personas_path)
    assert render_persona(team.agent("c"), [], [], team.personas_path) == "Hi c!"


def test_variant_overrides_are_validated_like_the_file(tmp_path: Path) -> None:
    team = load_team(write(tmp_path, "agents:\n  a:\n    model: mock/x\n"))
    assert team.agent("a").with_overrides({"temperature": 0.5}).temperature == 0.5
    with pytest.raises(ValueError, match="temperature"):
        team.agent("a").with_overrides({"temperature": -1})
    with pytest.raises(InvalidArgument, match="unknown agent 'zed'; the agents are: a"):
        team.agent("zed")


@pytest.mark.parametrize(
    ("providers", "problem"),
    [
        ({"mock": {"rules": {"x": {"rulez": []}}}}, "rules['x']: field 'rulez': unknown key"),
        ({"mock": {"rule_dirs": "x"}}, "unknown mock provider settings: rule_dirs"),
        ({"nope": {}}, "unknown model provider 'nope'"),
        ({"openai": {"base_urll": "x"}}, "base_urll: Extra inputs are not permitted"),
    ],
)
def test_bad_provider_settings_fail_when_the_file_loads(
    tmp_path: Path, providers: dict, problem: str
) -> None:
    """Not on the first model call of every episode: a typo in a mock rules set used to load
    fine and fail each episode."""
    import yaml

    path = tmp_path / "agents.yaml"
    path.write_text(yaml.safe_dump({"agents": {"a": {"persona": "You are a."}}, "providers": providers}))
    with pytest.raises(InvalidArgument, match=r"line \d+, field 'providers\.\w+'") as e:
        load_team(path)
    assert str(path) in str(e.value) and problem in str(e.value)
