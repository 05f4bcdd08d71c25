"""`p2e rollout validate`: it catches what `rollout run` would fail on, reports every problem in
one run (file, line, field), counts huge plans without building them, and names generated
variants apart. No Ray: validate and a refused run stop before any actor starts."""

from __future__ import annotations

import asyncio
import io
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import Cli

from p2e.agents import load_team, render_persona
from p2e.errors import InvalidArgument
from p2e.events import Failed, Limits
from p2e.rollouts import plan as plan_module
from p2e.rollouts.plan import Episodes, expand, summarize_plan
from p2e.rollouts.spec import load_spec
from p2e.runtime.local import local_driver
from p2e.runtime.steps import EpisodeRequest
from p2e.store import EventLog
from p2e.store.keys import NAME_RE
from p2e.tools import REGISTRY

RULES = {"hello": {"rules": [{"text": "Hello."}]}, "sub/hello": {"rules": [{"text": "Hi."}]}}


def agents_file(tmp_path: Path, agents: dict[str, Any], **sections: Any) -> Path:
    """An agents file whose mock models answer from inline rules (wherever the test runs)."""
    path = tmp_path / "agents.yaml"
    body = {"agents": agents, "providers": {"mock": {"rules": RULES}}, **sections}
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def spec_file(tmp_path: Path, **changes: Any) -> Path:
    spec = {
        "name": "v",
        "agents": "agents.yaml",
        "teams": [{"id": "t", "root": "solo"}],
        "scenarios": [{"id": "a", "message": "hi"}],
        **changes,
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


SOLO = {"model": "mock/hello", "persona": "You answer."}


@pytest.fixture
def clean_registry() -> Iterator[None]:
    """Tool modules imported by a test register in the global registry: taken out after it."""
    before = set(REGISTRY.names())
    yield
    for name in set(REGISTRY.names()) - before:
        REGISTRY._tools.pop(name, None)


# --- what `run` would fail on ----------------------------------------------------------------------


AGENT = r"agents\.yaml: line \d+, agent 'solo', field "
VARIANT = r"spec\.yaml: line \d+, variant 'v2', field 'overrides\.solo\."
MODULES = r"agents\.yaml: line \d+, field "


@pytest.mark.parametrize(
    ("agent", "sections", "variant", "expected"),
    [
        ({"model": "nosuch/x"}, {}, None, AGENT + "'model': unknown model provider 'nosuch'"),
        ({}, {}, {"model": "nosuch/x"}, VARIANT + "model': unknown model provider 'nosuch'"),
        ({"model": "mock/nosuch"}, {}, None, AGENT + "'model': no mock rules set 'nosuch'"),
        ({}, {}, {"model": "mock/nosuch"}, VARIANT + "model': no mock rules set 'nosuch'"),
        ({"persona": "ghost"}, {}, None, AGENT + r"'persona': no persona template ghost\.j2"),
        ({}, {}, {"persona": "ghost"}, VARIANT + r"persona': no persona template ghost\.j2"),
        ({"tools": ["nosuchtool"]}, {}, None, AGENT + "'tools': unknown tools 'nosuchtool'"),
        (
            {},
            {"tool_modules": ["p2e_no_such_tools"]},
            None,
            MODULES + r"'tool_modules\[0\]': cannot import tool module 'p2e_no_such_tools'",
        ),
        (
            {},
            {"evaluator_modules": ["p2e_no_such_evals"]},
            None,
            MODULES + r"'evaluator_modules\[0\]': cannot import evaluator module 'p2e_no_such_evals'",
        ),
    ],
)
def test_validate_and_run_fail_on_one_clean_line_for_what_would_crash_the_run(
    tmp_path: Path, cli: Cli, agent: dict, sections: dict, variant: dict | None, expected: str
) -> None:
    agents_file(tmp_path, {"solo": {**SOLO, **agent}}, **sections)
    variants = [{"name": "v1"}] if variant is None else [{"name": "v2", "overrides": {"solo": variant}}]
    spec = spec_file(tmp_path, variants=variants)
    for command in ("validate", "run"):
        code, _, err = cli("rollout", command, str(spec))
        assert code == 2 and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1 and re.search(expected, err), err


def test_every_problem_is_listed_at_once_with_its_file_line_and_field(tmp_path: Path, cli: Cli) -> None:
    agents = agents_file(tmp_path, {"solo": {**SOLO, "persona": "ghost"}, "bad": {"temperature": 9}})
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        """name: many
agents: agents.yaml
teams:
  - {id: t, root: boss}
scenarios:
  - {id: a, message: hi}
  - {id: a, message: again}
variants:
  - name: base
  - name: hot
    overrides:
      solo: {temprature: 1}
repeats: 0
evaluators: [{id: nope}]
"""
    )
    with pytest.raises(InvalidArgument) as e:
        load_spec(spec)
    expected = [
        "line 4, team 't', field 'root': unknown agent 'boss'; the agents are: bad, solo",
        "line 5, field 'scenarios': scenario ids must be unique; repeated: a",
        "line 12, variant 'hot', field 'overrides.solo.temprature': unknown field (check its spelling)",
        "line 13, field 'repeats': Value error, repeats must be between 1 and 100000",
        "line 14, field 'evaluators[0]': unknown evaluator 'nope'",
        f"{agents}: line {line_of(agents, 'persona: ghost')}, agent 'solo', field 'persona': "
        "no persona template ghost.j2",
        f"{agents}: line {line_of(agents, 'temperature: 9')}, agent 'bad', field 'temperature': "
        "Input should be less than or equal to 2",
    ]
    lines = str(e.value).splitlines()
    assert lines[0] == f"7 problems in {spec}:"
    assert len(lines) == 8 and all(line.startswith("  ") for line in lines[1:])
    for line, want in zip(lines[1:], expected, strict=True):
        assert line.strip().startswith(want), (line, want)
    code, _, err = cli("rollout", "run", str(spec))
    assert code == 2 and "Traceback" not in err and f"7 problems in {spec}:" in err
    assert "line 12, variant 'hot', field 'overrides.solo.temprature'" in err


def test_validate_names_the_modules_it_imported(
    tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch, clean_registry: None
) -> None:
    (tmp_path / "validate_tools_for_tests.py").write_text(
        "from p2e.tools import REGISTRY, tool\n\n\n@REGISTRY.register\n@tool\n"
        'def shout(text: str) -> str:\n    """Shout."""\n    return text.upper()\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "validate_tools_for_tests", raising=False)
    agents_file(
        tmp_path,
        {"solo": {**SOLO, "tools": ["shout"]}},
        tool_modules=["validate_tools_for_tests"],
        evaluator_modules=["evaluators_for_tests"],
    )
    spec = spec_file(tmp_path, evaluators=[{"id": "shouty", "per": "episode"}])
    code, out, err = cli("rollout", "validate", str(spec))
    assert code == 0, err
    assert "imported tool modules: validate_tools_for_tests" in out
    assert "imported evaluator modules: evaluators_for_tests" in out
    assert "1 episodes (1 variants)" in out
    # imported before, its tools taken out of the registry again (as tests do): still known
    REGISTRY._tools.pop("shout")
    code, out, err = cli("rollout", "validate", str(spec))
    assert code == 0 and "imported tool modules: validate_tools_for_tests" in out, err
    monkeypatch.delitem(sys.modules, "validate_tools_for_tests")


# --- huge plans --------------------------------------------------------------------------------------


def test_a_plan_of_two_million_episodes_is_counted_without_building_one(
    tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    agents_file(tmp_path, {"solo": SOLO})
    scenarios = [{"id": f"s{i}", "message": f"question {i}"} for i in range(10)]
    variants = [{"name": "base"}, {"name": "other", "overrides": {"solo": {"model": "mock/sub/hello"}}}]
    spec = spec_file(tmp_path, scenarios=scenarios, variants=variants, repeats=100_000)

    def built(*args: Any) -> None:
        raise AssertionError("an episode was built")

    monkeypatch.setattr(plan_module._Cell, "episode", built)
    code, out, err = cli("rollout", "validate", str(spec))
    assert code == 0 and "2000000 episodes (2 variants)" in out, err
    code, out, err = cli("rollout", "plan", str(spec))
    assert code == 0 and "= 2000000 episodes" in out and out.count("1000000") == 2, err
    assert "model calls between 2000000" in out
    # a run that big asks first; without a terminal, it needs --yes
    code, _, err = cli("rollout", "run", str(spec))
    assert code == 2 and "runs 2,000,000 episodes, more than 10,000" in err and "pass --yes" in err


def test_the_size_that_asks_is_a_setting_and_a_terminal_is_asked(
    tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    agents_file(tmp_path, {"solo": SOLO})
    spec = spec_file(tmp_path, repeats=3)
    monkeypatch.setenv("P2E_CONFIRM_EPISODES", "2")
    code, _, err = cli("rollout", "run", str(spec))
    assert code == 2 and "runs 3 episodes, more than 2 (P2E_CONFIRM_EPISODES); pass --yes" in err

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal("n\n"))
    code, out, err = cli("rollout", "run", str(spec))
    assert code == 1 and "Run them?" in out and "aborted" in err
    monkeypatch.setenv("P2E_CONFIRM_EPISODES", "lots")
    code, _, err = cli("rollout", "run", str(spec))
    assert code == 2 and "P2E_CONFIRM_EPISODES='lots': give a number of episodes" in err


def test_episodes_stream_and_index_as_the_expansion_orders_them(tmp_path: Path) -> None:
    agents_file(tmp_path, {"solo": {**SOLO, "can_delegate_to": ["helper"]}, "helper": SOLO})
    spec = spec_file(
        tmp_path,
        teams=[{"id": "t", "root": "solo"}, {"id": "u", "root": "helper"}],
        scenarios=[{"id": f"s{i}", "message": f"q{i}"} for i in range(3)],
        variants={"grid": {"solo.temperature": [0.1, 0.9], "*.model": ["mock/hello", "mock/sub/hello"]}},
        repeats=[7, 11],
    )
    resolved = load_spec(spec)
    episodes, built = Episodes(resolved), expand(resolved)
    assert len(episodes) == len(built) == 2 * 4 * 3 * 2
    assert list(episodes) == built == [episodes[i] for i in range(len(built))]
    assert episodes[-1] == built[-1] and episodes[3:6] == built[3:6]
    with pytest.raises(IndexError):
        episodes[len(built)]
    s = summarize_plan(resolved)
    assert (s.episodes, s.min_model_calls) == (48, 48)
    assert s.max_model_calls == 48 * resolved.limits.max_steps


# --- generated variant names ---------------------------------------------------------------------------


def test_grid_points_with_a_long_shared_prefix_get_distinct_readable_names(tmp_path: Path, cli: Cli) -> None:
    prefix = "You are the writer of this team and you always answer very briefly, in "
    personas = [prefix + "one line.", prefix + "two lines."]
    agents_file(tmp_path, {"solo": SOLO})
    grid = {"solo.persona": personas, "*.model": ["mock/hello", "mock/sub/hello"]}  # `_short`: both "hello"
    spec = spec_file(tmp_path, variants={"grid": grid})
    code, out, err = cli("rollout", "validate", str(spec))
    assert code == 0 and "4 episodes (4 variants)" in out, err
    variants = load_spec(spec).variants
    names = [v.name for v in variants]
    assert len(set(names)) == 4 and all(NAME_RE.fullmatch(n) for n in names)
    assert all(n.startswith("solo.persona-You_are_the_writer") and "__model-hello" in n for n in names)
    assert names == [v.name for v in load_spec(spec).variants]  # stable
    # the full overrides stay with the variant and each of its episodes
    assert {(v.overrides["solo"]["persona"], v.overrides["*"]["model"]) for v in variants} == {
        (p, m) for p in personas for m in grid["*.model"]
    }
    assert {e.overrides["solo"]["persona"] for e in expand(load_spec(spec))} == set(personas)


def test_short_grid_names_stay_as_they_were(tmp_path: Path) -> None:
    agents_file(tmp_path, {"solo": SOLO})
    spec = spec_file(tmp_path, variants={"grid": {"solo.temperature": [0.2, 1.0], "*.model": ["mock/hello"]}})
    names = [v.name for v in load_spec(spec).variants]
    assert names == ["solo.temperature-0.2__model-hello", "solo.temperature-1.0__model-hello"]


# --- the built-in default persona ----------------------------------------------------------------------


def test_an_agent_without_a_persona_gets_the_built_in_default(tmp_path: Path, cli: Cli) -> None:
    agents = agents_file(tmp_path, {"solo": {"model": "mock/hello", "description": "answers"}})
    team = load_team(agents)
    assert render_persona(team.agent("solo"), [], [], team.personas_path) == (
        "You are solo: answers. Be accurate and brief."
    )
    code, out, err = cli("rollout", "validate", str(spec_file(tmp_path)))
    assert code == 0 and "1 episodes" in out, err
    (tmp_path / "personas").mkdir()
    (tmp_path / "personas" / "default.j2").write_text("Local {{ agent.id }}.")
    assert render_persona(team.agent("solo"), [], [], team.personas_path) == "Local solo."


def test_a_missing_persona_fails_the_episode_naming_the_agent_once(tmp_path: Path, log: EventLog) -> None:
    team = load_team(agents_file(tmp_path, {"solo": {**SOLO, "persona": "ghost"}}))

    async def go() -> Any:
        driver = local_driver(log, team)
        try:
            req = EpisodeRequest(
                cid="missing-persona",
                name="missing-persona",
                root="solo",
                graph=team.team_of("solo"),
                limits=Limits(),
                message="hi",
            )
            return await driver.episode(req)
        finally:
            await driver.writer.close()

    out = asyncio.run(go())
    last = log.history(out.conversation, out.branch)[-1]
    assert out.status == "failed" and isinstance(last, Failed)
    assert last.message.startswith("agent 'solo': no persona template ghost.j2 in ")
    assert last.message.count("agent 'solo'") == 1
