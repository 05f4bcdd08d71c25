"""Scenarios from CSV and Parquet files and from a Python callable give the very episodes the
equivalent JSONL gives (ids hash the scenario's text, not where it came from), through
`rollout validate`, `load_spec` and a run on Ray; a callable that fails is one line naming it."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import Cli
from scenarios_for_tests import WEATHER

from p2e.api import run_rollout
from p2e.errors import InvalidArgument
from p2e.rollouts.plan import expand
from p2e.rollouts.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
SPEC: dict[str, Any] = {
    "name": "t",
    "agents": str(ROOT / "experiments" / "agents.yaml"),
    "teams": [{"id": "desk", "root": "planner"}],
    "variants": [{"name": "baseline"}, {"name": "terse", "overrides": {"writer": {"model": "mock/terse"}}}],
    "repeats": 2,
    "evaluators": [{"id": "contains", "per": "episode", "params": {"ignore_case": True}}],
}
FIELDS = {"message": "question", "reference": "answer"}
"""The CSV's columns are named as in many datasets; the spec maps them."""


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"file": path.name}


def write_csv(path: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    with path.open("w", newline="", encoding="utf-8-sig") as f:  # with a BOM, as Excel writes it
        w = csv.writer(f)
        w.writerow(["id", "question", "answer", "c"])
        w.writerows([r["id"], r["message"], r["reference"], r["metadata"]["c"]] for r in rows)
    return {"file": path.name, "fields": FIELDS}


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    columns = {k: [r[k] for r in rows] for k in ("id", "message", "reference")}
    pq.write_table(pa.table({**columns, "c": [r["metadata"]["c"] for r in rows]}), path)
    return {"file": path.name}


def callable_source(_: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"callable": "scenarios_for_tests:weather", "args": {"only": [r["id"] for r in rows]}}


SOURCES = {"csv": write_csv, "parquet": write_parquet, "callable": callable_source}


def spec_file(tmp_path: Path, scenarios: list[dict[str, Any]], name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**SPEC, "scenarios": scenarios}, sort_keys=False))
    return path


def episodes(spec: Path) -> list[tuple[str, str, str, str | None]]:
    return [(e.id, e.scenario, e.message, e.reference) for e in expand(load_spec(spec))]


@pytest.mark.parametrize("source", SOURCES)
def test_a_source_gives_the_episodes_of_the_equivalent_jsonl(source: str, tmp_path: Path, cli: Cli) -> None:
    jsonl = spec_file(tmp_path, [write_jsonl(tmp_path / "s.jsonl", WEATHER)], "jsonl")
    other = spec_file(tmp_path, [SOURCES[source](tmp_path / f"s.{source}", WEATHER)], source)

    assert episodes(other) == episodes(jsonl)
    assert len(episodes(other)) == 12 and {e[1] for e in episodes(other)} == {"paris", "lima", "tokyo"}
    assert [s.model_dump() for s in load_spec(other).scenarios] == WEATHER  # metadata kept
    code, out, err = cli("rollout", "validate", str(other))
    assert code == 0, err
    assert f"ok {other}: 12 episodes (2 variants)" in out
    called = "imported scenario callables: scenarios_for_tests:weather" in out
    assert called == (source == "callable")  # its code ran: validate says so


def test_sources_mix_and_a_repeated_id_is_named_where_it_is_repeated(tmp_path: Path) -> None:
    scenarios = [
        write_csv(tmp_path / "a.csv", WEATHER[:1]),
        write_parquet(tmp_path / "b.parquet", WEATHER[1:2]),
        callable_source(tmp_path, WEATHER[2:]),
    ]
    jsonl = spec_file(tmp_path, [write_jsonl(tmp_path / "s.jsonl", WEATHER)], "jsonl")
    assert episodes(spec_file(tmp_path, scenarios, "mixed")) == episodes(jsonl)

    scenarios[1] = write_parquet(tmp_path / "b.parquet", [WEATHER[1], WEATHER[0]])
    with pytest.raises(InvalidArgument) as e:
        load_spec(spec_file(tmp_path, scenarios, "mixed"))
    assert str(e.value) == (
        f"{tmp_path / 'b.parquet'}: row 2: scenario id 'paris' is repeated (first at line 2 of "
        f"{tmp_path / 'a.csv'}); scenario ids must be unique"
    )


def test_jsonl_keys_are_mapped_too(tmp_path: Path) -> None:
    rows = [{"id": r["id"], "question": r["message"], "answer": r["reference"]} for r in WEATHER]
    mapped = spec_file(tmp_path, [{**write_jsonl(tmp_path / "q.jsonl", rows), "fields": FIELDS}], "mapped")
    plain = [{k: v for k, v in r.items() if k != "metadata"} for r in WEATHER]
    assert episodes(mapped) == episodes(spec_file(tmp_path, [write_jsonl(tmp_path / "s.jsonl", plain)], "j"))


CALLABLE_FAILURES = {
    "nowhere_to_be_found:weather": "cannot import module 'nowhere_to_be_found'; check the module path",
    "scenarios_for_tests:missing": "module 'scenarios_for_tests' has no 'missing'",
    "scenarios_for_tests:NOT_CALLABLE": "'NOT_CALLABLE' is a value of type list, not a function",
    "scenarios_for_tests:broken": "raised RuntimeError: the dataset server is down",
    "scenarios_for_tests:fails_midway": "raised ConnectionError: lost the connection after 1 scenarios",
    "scenarios_for_tests:a_number": "returned a value of type int, not an iterable",
    "scenarios_for_tests:odd_items": "item 2: a scenario is a dict or a p2e Scenario",
}


@pytest.mark.parametrize("target", CALLABLE_FAILURES)
def test_a_callable_that_fails_is_one_line_naming_it(target: str, tmp_path: Path, cli: Cli) -> None:
    spec = spec_file(tmp_path, [{"callable": target}], "spec")
    code, out, err = cli("rollout", "validate", str(spec))
    assert code == 2 and "Traceback" not in out + err
    (line,) = err.strip().splitlines()
    at = spec.read_text().splitlines().index("- callable: " + target) + 1
    assert f"{spec}: line {at}, field 'scenarios[0]': scenario callable {target!r}: " in line, line
    assert CALLABLE_FAILURES[target] in line, line


def test_a_rollout_runs_from_csv_parquet_and_a_callable_as_from_jsonl(
    ray_session: None, store_url: str, namespace: str, tmp_path: Path
) -> None:
    spec = spec_file(
        tmp_path,
        [
            write_csv(tmp_path / "a.csv", WEATHER[:1]),
            write_parquet(tmp_path / "b.parquet", WEATHER[1:2]),
            callable_source(tmp_path, WEATHER[2:]),
        ],
        "mixed",
    )
    jsonl = spec_file(tmp_path, [write_jsonl(tmp_path / "s.jsonl", WEATHER)], "jsonl")
    result = run_rollout(spec, store_url=store_url, namespace=namespace)
    assert sorted((r.episode, r.scenario) for r in result.rows) == sorted(
        (e[0], e[1]) for e in episodes(jsonl)
    )
    assert all(r.status == "done" for r in result.rows)
    by_variant = {s.variant: s.mean for s in result.summary()}
    assert by_variant == {"baseline": 1.0, "terse": pytest.approx(1 / 3)}  # as from JSONL (test_rollouts)
