"""Rollouts: spec validation, expansion, statistics, storage, export, and whole runs on Ray."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

import pyarrow.parquet as pq
import pytest
import ray
import yaml
from conftest import Cli
from test_obs_rerun import read_rrd, verify

from p2e.api import run_rollout
from p2e.errors import CorruptData, InvalidArgument, NotFound
from p2e.rollouts.export import write_jsonl, write_parquet, write_trajectories
from p2e.rollouts.plan import expand
from p2e.rollouts.run import RolloutResult, plan
from p2e.rollouts.spec import load_spec
from p2e.rollouts.stats import bootstrap_ci, compare, summarize
from p2e.rollouts.store import RolloutInfo, RolloutStore, Row
from p2e.store import EventLog

ROOT = Path(__file__).resolve().parent.parent

SPEC = {
    "name": "t",
    "agents": str(ROOT / "experiments" / "agents.yaml"),
    "teams": [{"id": "desk", "root": "planner"}],
    "scenarios": [
        {"id": "paris", "message": "What is the weather in Paris?", "reference": "snow"},
        {"id": "lima", "message": "What is the weather in Lima?", "reference": "sunny"},
        {"id": "tokyo", "message": "What is the weather in Tokyo?", "reference": "fog"},
    ],
    "variants": [{"name": "baseline"}, {"name": "terse", "overrides": {"writer": {"model": "mock/terse"}}}],
    "repeats": 2,
    "evaluators": [{"id": "contains", "per": "episode", "params": {"ignore_case": True}}],
    "run": {"in_flight": 8},
}


def write_spec(tmp_path: Path, spec: dict | str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec, sort_keys=False))
    return path


def spec_error(tmp_path: Path, spec: dict | str) -> str:
    with pytest.raises(InvalidArgument) as e:
        load_spec(write_spec(tmp_path, spec))
    return str(e.value)


# --- the spec ------------------------------------------------------------------------------------


def test_unknown_key_names_the_file_field_and_line(tmp_path: Path) -> None:
    text = yaml.safe_dump(SPEC, sort_keys=False) + "run_settings: {in_flight: 4}\n"
    msg = spec_error(tmp_path, text)
    # the last line, where the stray key is
    assert f"spec.yaml: line {len(text.splitlines())}, field 'run_settings': unknown field" in msg


def test_nested_unknown_key_points_at_its_line(tmp_path: Path) -> None:
    text = """name: t
agents: {agents}
teams:
  - id: desk
    root: planner
    memebrs: [writer]
scenarios: [{{id: a, message: hi}}]
""".format(agents=SPEC["agents"])
    msg = spec_error(tmp_path, text)
    assert "line 6, field 'teams[0].memebrs'" in msg


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"teams": [{"id": "desk", "root": "boss"}]}, "unknown agent 'boss'"),
        (
            {"variants": [{"name": "v", "overrides": {"writer": {"temprature": 1}}}]},
            "variant 'v', field 'overrides.writer.temprature': unknown field",
        ),
        ({"variants": [{"name": "v", "overrides": {"writer": {"temperature": 9}}}]}, "temperature"),
        ({"variants": [{"name": "v", "overrides": {"ghost": {"temperature": 1}}}]}, "unknown agent 'ghost'"),
        ({"variants": [{"name": "a"}, {"name": "a"}]}, "repeated: a"),
        ({"variants": {"grid": {"temperature": [1]}}}, "must be agent.field"),
        ({"repeats": 0}, "repeats must be"),
        ({"repeats": [1, 1]}, "without duplicates"),
        ({"primary": "judge"}, "primary 'judge' is not one of the evaluators"),
        ({"evaluators": [{"id": "nope"}]}, "nope"),
        ({"evaluators": [{"id": "max_steps", "params": {}}]}, "limit"),
        ({"scenarios": [{"id": "a", "message": "x"}, {"id": "a", "message": "y"}]}, "repeated: a"),
        ({"scenarios": [{"id": "a", "message": ""}]}, "message"),
        ({"limits": {"max_steps": -1}}, "max_steps"),
        ({"limits": {"max_cost_usd": "lots"}}, "max_cost_usd"),
        ({"agents": "missing.yaml"}, "missing.yaml"),
        ({"run": {"in_flight": 0}}, "in_flight"),
        ({"name": "has space"}, "name"),
        ({"variants": [{"name": "v", "overrides": {"*": {"replicas": 2}}}]}, "cannot change replicas"),
        (
            {"variants": [{"name": "v", "overrides": {"writer": {"persona": "nosuch"}}}]},
            "field 'overrides.writer.persona': no persona template nosuch.j2",
        ),
    ],
)
def test_bad_specs_are_named(tmp_path: Path, change: dict, expected: str) -> None:
    assert expected in spec_error(tmp_path, {**SPEC, **change})


def test_not_yaml_and_not_a_mapping(tmp_path: Path) -> None:
    assert "not valid YAML" in spec_error(tmp_path, "name: [unclosed")
    assert "a mapping" in spec_error(tmp_path, "- just a list")


def test_scenarios_from_jsonl_with_a_bad_line_named(tmp_path: Path) -> None:
    good = tmp_path / "s.jsonl"
    good.write_text(
        '{"id": "a", "message": "hi in Oslo"}\n\n{"id": "b", "message": "hello", "reference": "x"}\n'
    )
    resolved = load_spec(write_spec(tmp_path, {**SPEC, "scenarios": [{"file": "s.jsonl"}]}))
    assert [s.id for s in resolved.scenarios] == ["a", "b"]
    good.write_text('{"id": "a", "message": "hi"}\n{"id": "b", "mesage": "typo"}\n')
    msg = spec_error(tmp_path, {**SPEC, "scenarios": [{"file": "s.jsonl"}]})
    assert "s.jsonl: line 2" in msg and "mesage" in msg


def test_expansion_is_deterministic_and_ids_follow_the_content(tmp_path: Path) -> None:
    r = load_spec(write_spec(tmp_path, SPEC))
    a, b = expand(r), expand(load_spec(write_spec(tmp_path, SPEC)))
    assert len(a) == 1 * 2 * 3 * 2
    assert [e.id for e in a] == [e.id for e in b] and len({e.id for e in a}) == len(a)
    changed = {
        **SPEC,
        "variants": [
            {"name": "baseline"},
            {"name": "terse", "overrides": {"writer": {"model": "mock/default"}}},
        ],
    }
    c = expand(load_spec(write_spec(tmp_path, changed)))
    same = {e.id for e in a if e.variant == "baseline"}
    assert same == {e.id for e in c if e.variant == "baseline"}
    assert not ({e.id for e in a if e.variant == "terse"} & {e.id for e in c if e.variant == "terse"})
    terse = next(e for e in a if e.variant == "terse")
    assert terse.overrides["writer"]["model"] == "mock/terse" and terse.graph["planner"] == (
        "researcher",
        "writer",
    )


def test_grid_and_members_and_seeds(tmp_path: Path) -> None:
    spec = {
        **SPEC,
        "teams": [{"id": "solo", "root": "planner", "members": ["writer"]}],
        "variants": {"grid": {"writer.temperature": [0.1, 0.9], "*.model": ["mock/default", "mock/terse"]}},
        "repeats": [7, 11],
    }
    r = load_spec(write_spec(tmp_path, spec))
    assert len(r.variants) == 4
    assert len({v.name for v in r.variants}) == 4
    eps = expand(r)
    assert len(eps) == 4 * 3 * 2 and {e.seed for e in eps} == {7, 11}
    assert eps[0].graph == {"planner": ("writer",), "writer": ()}  # researcher is not a member
    assert eps[0].overrides["planner"]["seed"] in (7, 11)


# --- statistics ----------------------------------------------------------------------------------


def _row(variant: str, scenario: str, primary: float | None, status: str = "done", repeat: int = 0) -> Row:
    return Row(
        rollout="r",
        episode=f"{variant}-{scenario}-{repeat}",
        team="t",
        variant=variant,
        scenario=scenario,
        repeat=repeat,
        seed=repeat,
        status=status,  # type: ignore[arg-type]
        primary=primary,
        tokens=10,
    )


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_n() -> None:
    small = [0.0, 1.0] * 5
    large = small * 40
    lo_s, hi_s = bootstrap_ci(small)  # type: ignore[misc]
    lo_l, hi_l = bootstrap_ci(large)  # type: ignore[misc]
    assert lo_s < 0.5 < hi_s and lo_l < 0.5 < hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 3
    assert bootstrap_ci([1.0]) is None
    assert bootstrap_ci([0.7] * 10) == (pytest.approx(0.7), pytest.approx(0.7))


def test_summary_counts_failures_without_averaging_them_in() -> None:
    rows = [_row("a", "s1", 1.0), _row("a", "s2", 0.5), _row("a", "s3", None, "failed")]
    (s,) = summarize(rows)
    assert (s.n, s.failures, s.mean, s.tokens) == (2, 1, 0.75, 30)


def test_paired_comparison_uses_shared_scenarios_only() -> None:
    rows = [
        *(_row("base", f"s{i}", 0.2, repeat=r) for i in range(6) for r in range(2)),
        *(_row("better", f"s{i}", 0.9) for i in range(6)),
        _row("better", "only-here", 0.0),
    ]
    (c,) = compare(rows, "base")
    assert c.pairs == 6 and c.difference == pytest.approx(0.7)
    assert c.ci_low == pytest.approx(0.7) and c.ci_high == pytest.approx(0.7)


# --- storage, resume, export (no Ray) ------------------------------------------------------------


def test_resume_plans_only_what_is_not_done(tmp_path: Path, log: EventLog) -> None:
    r = load_spec(write_spec(tmp_path, SPEC))
    store = RolloutStore(log)
    info, todo = plan(r, store, None)
    assert len(todo) == 12 and store.get(info.id).status == "interrupted"  # planned; no driver holds it
    store.hold(info.id)
    assert store.get(info.id).status == "running"
    store.release(info.id)
    store.put_row(
        _row("baseline", "paris", 1.0).model_copy(update={"rollout": info.id, "episode": todo[0].id})
    )
    failed = _row("baseline", "lima", None, "failed")
    store.put_row(failed.model_copy(update={"rollout": info.id, "episode": todo[1].id}))
    _, left = plan(r, store, info.id)
    assert len(left) == 11 and todo[0].id not in {e.id for e in left} and todo[1].id in {e.id for e in left}
    other = load_spec(write_spec(tmp_path, {**SPEC, "repeats": 3}, "other.yaml"))
    with pytest.raises(InvalidArgument, match="different spec"):
        plan(other, store, info.id)
    with pytest.raises(NotFound, match="p2e rollout list"):
        store.get("nope")


def test_exports_write_whole_files(tmp_path: Path) -> None:
    rows = [
        _row("a", "s1", 1.0).model_copy(update={"scores": {"contains": 1.0, "judge": None}}),
        _row("b", "s1", 0.0),
    ]
    assert write_jsonl(rows, tmp_path / "r.jsonl") == 2
    back = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert write_parquet(rows, tmp_path / "r.parquet") == 2
    table = pq.read_table(tmp_path / "r.parquet").to_pylist()
    assert back == table  # one flat layout in both
    assert (
        table[0]["score_contains"] == 1.0 and table[0]["variant"] == "a" and table[1]["score_judge"] is None
    )
    assert table[0]["primary_score"] == 1.0 and table[1]["primary_score"] == 0.0
    assert not list(tmp_path.glob("*.tmp"))


# --- whole rollouts on Ray -------------------------------------------------------------------------


@pytest.fixture
def slow_agents(tmp_path: Path) -> Path:
    """The demo team with a model that takes 100 ms per call (so work is in flight to kill)."""
    mock = tmp_path / "mock"
    mock.mkdir()
    rules = yaml.safe_load((ROOT / "experiments/mock/default.yaml").read_text())
    (mock / "slow.yaml").write_text(yaml.safe_dump({**rules, "latency_ms": 100}))
    shutil.copy(ROOT / "experiments/mock/terse.yaml", mock / "terse.yaml")
    team = yaml.safe_load((ROOT / "experiments/agents.yaml").read_text())
    for a in team["agents"].values():
        a["model"] = "mock/slow"
    team["personas_dir"] = str(ROOT / "experiments/personas")
    team["providers"]["mock"]["rules_dirs"] = [str(mock)]
    (tmp_path / "agents.yaml").write_text(yaml.safe_dump(team))
    return tmp_path / "agents.yaml"


def test_rollout_runs_scores_and_resumes(
    ray_session: None, store_url: str, namespace: str, tmp_path: Path, log: EventLog
) -> None:
    seen: list[Row] = []
    result = run_rollout(
        write_spec(tmp_path, SPEC), store_url=store_url, namespace=namespace, on_row=seen.append
    )
    assert isinstance(result, RolloutResult) and len(result.rows) == 12 and len(seen) == 12
    assert all(r.status == "done" and r.steps == 6 and r.tokens > 0 for r in result.rows)
    by_variant = {s.variant: s for s in result.summary()}
    assert by_variant["baseline"].mean == 1.0 and by_variant["baseline"].n == 6
    assert by_variant["terse"].mean == pytest.approx(1 / 3)  # right only for snowy Paris
    (cmp,) = result.compare("baseline")
    assert cmp.pairs == 3 and cmp.difference == pytest.approx(-2 / 3)
    row = next(r for r in result.rows if r.variant == "terse" and r.scenario == "lima")
    assert row.answer == "In short: fine weather." and row.scores == {"contains": 0.0} and row.primary == 0.0
    info = log.conversation(row.conversation)
    assert info.name.startswith(f"{result.id}.{row.episode[:10]}.")
    assert log.history(row.conversation)[-1].text == row.answer  # type: ignore[union-attr]
    # the actor set was the rollout's own and is gone
    assert not [a for a in ray.util.list_named_actors(all_namespaces=True) if result.id in a["name"]]
    # resume: nothing left to do, nothing runs again
    again = run_rollout(
        write_spec(tmp_path, SPEC), store_url=store_url, namespace=namespace, resume=result.id
    )
    assert {(r.episode, r.conversation) for r in again.rows} == {
        (r.episode, r.conversation) for r in result.rows
    }
    # trajectories: the root's side of each done episode, filtered by score
    n = write_trajectories(log, again.rows, tmp_path / "chat.jsonl", min_score=1.0, metadata=True)
    lines = [json.loads(x) for x in (tmp_path / "chat.jsonl").read_text().splitlines()]
    assert n == len(lines) == 6 + 2  # the baseline's six and terse's two Paris episodes
    msgs = lines[0]["messages"]
    assert [m["role"] for m in msgs[:2]] == ["system", "user"]
    assert msgs[2]["tool_calls"][0]["function"]["name"] == "delegate"
    answers = {r.episode: r.answer for r in again.rows}
    assert msgs[-1] == {"role": "assistant", "content": answers[lines[0]["metadata"]["episode"]]}
    assert all(x["metadata"]["score"] == 1.0 for x in lines)


def test_a_supervisor_killed_mid_rollout_loses_no_episode(
    ray_session: None, store_url: str, namespace: str, tmp_path: Path, slow_agents: Path, log: EventLog
) -> None:
    spec = {
        **SPEC,
        "agents": str(slow_agents),
        "variants": [{"name": "baseline"}],
        "repeats": 4,
        "run": {"in_flight": 6, "supervisors": 2, "retries": 3},
    }
    rid: list[str] = []
    killed: list[str] = []
    first_row = threading.Event()

    def killer() -> None:
        first_row.wait(60)  # the first of 12 episodes is done; with 6 in flight, others are mid-way
        name = f"{namespace}:{rid[0]}:supervisor:0"
        ray.kill(ray.get_actor(name, namespace="p2e"), no_restart=False)
        killed.append(name)

    t = threading.Thread(target=killer)
    t.start()
    result = run_rollout(
        write_spec(tmp_path, spec),
        store_url=store_url,
        namespace=namespace,
        on_start=lambda info, todo, total: rid.append(info.id),
        on_row=lambda row: first_row.set(),
    )
    t.join()
    assert killed
    bad = [
        (r.status, r.error, r.primary, r.scores)
        for r in result.rows
        if r.status != "done" or r.primary != 1.0
    ]
    assert len(result.rows) == 12 and not bad
    retried = [r for r in result.rows if r.abandoned]
    assert retried, "the kill hit no episode in flight"
    for r in retried:
        assert r.attempts == len(r.abandoned) + 1
        for name in r.abandoned:
            with contextlib.suppress(NotFound):  # killed before its conversation was created
                assert log.conversation(name).note.startswith("abandoned: attempt")
    # every episode is stored once as done, and each done conversation has exactly one answer
    for r in result.rows:
        events = log.history(r.conversation)
        assert [e.kind for e in events].count("user_message") == 1


# --- the CLI -------------------------------------------------------------------------------------


def test_cli_validate_and_plan(tmp_path: Path, cli: Cli) -> None:
    path = write_spec(tmp_path, SPEC)
    code, out, _ = cli("rollout", "validate", str(path))
    assert code == 0 and "12 episodes (2 variants)" in out
    code, out, _ = cli("rollout", "plan", str(path))
    assert code == 0 and "= 12 episodes" in out and "between 12" in out and "terse" in out
    bad = write_spec(
        tmp_path, {**SPEC, "variants": [{"name": "v", "overrides": {"writer": {"temprature": 1}}}]}
    )
    code, _, err = cli("rollout", "validate", str(bad))
    assert code != 0 and "temprature" in err and "Traceback" not in err
    code, _, err = cli("rollout", "plan", str(tmp_path / "nope.yaml"))
    assert code != 0 and "no such rollout spec" in err


def test_cli_run_show_compare_export(
    ray_session: None,
    store_env: dict[str, str],
    tmp_path: Path,
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
    log: EventLog,
) -> None:
    monkeypatch.chdir(tmp_path)
    # scored by an Evaluator actor here (the other tests score in the supervisors, the default)
    run = {"in_flight": 4, "scoring": "evaluators"}
    path = write_spec(tmp_path, {**SPEC, "scenarios": SPEC["scenarios"][:2], "repeats": 1, "run": run})
    code, out, err = cli("rollout", "run", str(path), "--follow", "--rerun-save", "run.rrd")
    assert code == 0, err
    assert "baseline" in out and "terse" in out and "4 episodes, 0 failed" in out
    rid = out.split("p2e rollout show ")[1].split()[0]
    assert f"recording: p2e view {rid}" in out
    verify(tmp_path / "run.rrd")  # `rerun rrd verify`
    entities = read_rrd(tmp_path / "run.rrd")
    names = {log.conversation(r.conversation).name for r in RolloutStore(log).rows(rid)}
    assert f"rollouts/{rid}/leaderboard" in entities  # the rows: leaderboard and per-variant scalars
    assert all(f"conversations/{n}/main/log" in entities for n in names)  # and every conversation
    code, out, _ = cli("rollout", "list")
    assert code == 0 and rid in out and "done" in out
    code, out, _ = cli("rollout", "show", rid, "--rows")
    assert code == 0 and "4/4 episodes" in out and "paris" in out and "lima" in out
    code, out, _ = cli("rollout", "compare", rid)
    assert code == 0 and "against baseline" in out and "terse" in out
    code, _, err = cli("rollout", "compare", rid, "--baseline", "nope")
    assert code != 0 and "no variant 'nope'" in err
    code, out, _ = cli("rollout", "export", rid, "--format", "parquet")
    assert code == 0 and len(pq.read_table(tmp_path / f"{rid}.parquet")) == 4
    code, out, _ = cli("rollout", "export", rid, "--format", "chat", "--min-score", "1", "-o", "good.jsonl")
    assert code == 0 and "wrote 3 trajectories" in out  # baseline twice, terse on snowy Paris
    code, _, err = cli("rollout", "export", rid, "--format", "csv")
    assert code != 0 and "use jsonl, parquet or chat" in err
    code, _, err = cli("rollout", "show", "missing-id")
    assert code != 0 and "no rollout 'missing-id'" in err


# --- a simulated three-node cluster ----------------------------------------------------------------


@pytest.mark.slow
def test_three_node_cluster_spreads_episodes_and_survives_losing_a_node(
    store_url: str, namespace: str, tmp_path: Path, slow_agents: Path, log: EventLog
) -> None:
    spec = {
        **SPEC,
        "agents": str(slow_agents),
        "variants": [{"name": "baseline"}],
        "repeats": 6,
        "run": {"in_flight": 9, "supervisors": 3, "retries": 4},
    }
    path = write_spec(tmp_path, spec)
    script = Path(__file__).parent / "cluster_rollout.py"
    proc = subprocess.run(
        [sys.executable, str(script), str(path), store_url, namespace, "--remove-node"],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = [Row.model_validate(r) for r in report["rows"]]
    assert report["removed"] and report["nodes_alive"] == 2
    assert len(rows) == 18 and len({r.episode for r in rows}) == 18  # none lost, none doubled
    assert all(r.status == "done" and r.primary == 1.0 for r in rows), [r.error for r in rows]
    # the supervisors were spread over the nodes
    assert len({r.node for r in rows}) > 1, (report["nodes"], [(r.node[:8], r.attempts) for r in rows])
    for r in rows:  # each episode's conversation got its message once and answered once
        kinds = [e.kind for e in log.history(r.conversation)]
        assert kinds.count("user_message") == 1 and kinds[-1] == "agent_reply"


@pytest.mark.parametrize(
    "name", ["quickstart.yaml", "delegation.yaml", "judge_sweep.yaml", "payment_sweep.yaml"]
)
def test_the_example_specs_are_valid(name: str, ledger_tools: ModuleType) -> None:
    """(Checking payment_sweep imports its tool module: `ledger_tools` leaves the registry as it
    was, for the tests that expect the built-ins only.)"""
    resolved = load_spec(ROOT / "experiments" / name)
    assert expand(resolved)


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_resume_finishes(
    ray_session: None, store_env: dict[str, str], tmp_path: Path, slow_agents: Path, log: EventLog
) -> None:
    spec = {**SPEC, "agents": str(slow_agents), "variants": [{"name": "baseline"}], "repeats": 8}
    path = write_spec(tmp_path, {**spec, "run": {"in_flight": 4}})
    env = {**os.environ, **store_env}
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2e.cli", "rollout", "run", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    store = RolloutStore(log)
    deadline = time.monotonic() + 120
    rid = None
    while time.monotonic() < deadline:  # wait until some episodes are done, then press Ctrl-C
        ids = store.ids()
        if ids and store.count(ids[0]) >= 3:
            rid = ids[0]
            break
        time.sleep(0.1)
    assert rid is not None, proc.communicate(timeout=10)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert f"--resume {rid}" in out
    info = store.get(rid)
    done_before = {r.episode for r in store.iter_rows(rid) if r.status == "done"}
    assert info.status == "interrupted" and 3 <= len(done_before) < 24
    result = run_rollout(
        path, store_url=store_env["P2E_REDIS_URL"], namespace=store_env["P2E_NAMESPACE"], resume=rid
    )
    assert len(result.rows) == 24 and all(r.status == "done" for r in result.rows)
    assert done_before <= {r.episode for r in result.rows} and result.info.status == "done"


def test_payment_sweep_moves_money_per_episode_and_pays_the_bounty_once(
    ray_session: None, store_url: str, namespace: str, log: EventLog, ledger_tools: ModuleType
) -> None:
    from p2e.ledger import open_ledger_on, units

    spec = ROOT / "experiments" / "payment_sweep.yaml"
    result = run_rollout(spec, store_url=store_url, namespace=namespace)
    rows = result.rows
    assert len(rows) == 12 and all(r.status == "done" for r in rows)
    for r in rows:  # each row holds its own episode's advance, not the others' (they ran at once)
        fee = "2" if r.variant == "baseline" else "5"
        assert r.ledger_deltas == {"planner": f"-{fee}", "writer": f"+{fee}"}
    money = result.info.ledger
    assert money["payout"]["winners"] == ["baseline"] and money["payout"]["paid"] == {
        "planner": "15",
        "writer": "15",
    }
    ledger = open_ledger_on(log)
    try:
        expected = {"planner": 100 - 6 * 2 - 6 * 5 + 15, "writer": 100 + 6 * 2 + 6 * 5 + 15, "sponsor": 0}
        assert {w: ledger.balance(w) for w in expected} == {
            w: units(str(v)) if v else 0 for w, v in expected.items()
        }
        assert ledger.verify().ok
        # resuming the finished rollout funds nothing and pays nothing again
        again = run_rollout(spec, store_url=store_url, namespace=namespace, resume=result.id)
        assert {w: ledger.balance(w) for w in expected} == {
            w: units(str(v)) if v else 0 for w, v in expected.items()
        }
        assert again.info.ledger["balances_after"] == money["balances_after"]
        assert ledger.verify().ok
    finally:
        ledger.close()


def test_a_payment_made_by_an_attempt_whose_result_was_lost_is_in_its_episode_row(
    ray_session: None, store_url: str, namespace: str, log: EventLog, ledger_tools: ModuleType
) -> None:
    """An attempt paid 7 and died before its result was stored; the retry took another path
    (paid its fee elsewhere). No event holds the 7, but the row must, or rows + payout would not
    add up to the journal: rows count an episode's payments from the ledger's index of them."""
    from p2e.ledger import Budget, open_ledger_on, units
    from p2e.runtime.steps import episode_key

    spec = ROOT / "experiments" / "payment_sweep.yaml"
    lost = expand(load_spec(spec))[0]
    ledger = open_ledger_on(log)

    def lost_attempt(info: object, to_run: int, total: int) -> None:  # wallets are funded by now
        scope = episode_key(info.id, lost.id)  # type: ignore[attr-defined]
        cid = f"tool:{scope}:main:9.0:lost"
        ledger.transfer(
            "planner", "writer", units(7), reason="advance", command_id=cid, budget=Budget(scope=scope)
        )

    try:
        result = run_rollout(spec, store_url=store_url, namespace=namespace, on_start=lost_attempt)
        rows = {r.episode: r for r in result.rows}
        fee = 2 if lost.variant == "baseline" else 5
        assert rows[lost.id].ledger_deltas == {"planner": f"-{fee + 7}", "writer": f"+{fee + 7}"}
        paid = result.info.ledger["payout"]["paid"]
        for wallet in ("planner", "writer"):
            moved = sum(
                units(d.lstrip("+")) if d[0] != "-" else -units(d[1:])
                for r in rows.values()
                for w, d in r.ledger_deltas.items()
                if w == wallet
            )
            assert ledger.balance(wallet) == units(100) + moved + units(paid.get(wallet, "0")), wallet
    finally:
        ledger.close()


def test_a_recorded_payment_sweep_has_balances_over_time(
    ray_session: None,
    store_env: dict[str, str],
    tmp_path: Path,
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
    ledger_tools: ModuleType,
) -> None:
    monkeypatch.chdir(tmp_path)
    spec = ROOT / "experiments" / "payment_sweep.yaml"
    code, out, err = cli("rollout", "run", str(spec), "--rerun-save", "pay.rrd")
    assert code == 0, err
    code, out, _ = cli("rollout", "show", out.split("p2e rollout show ")[1].split()[0])
    assert "planner: 100 -> 73" in out and "paid planner 15, writer 15" in out
    verify(tmp_path / "pay.rrd")
    entities = read_rrd(tmp_path / "pay.rrd")
    writer = [r for r in entities["ledger/writer"] if not r["static"]]
    # the starting balance, one point per paid episode, and the balance after the payout
    assert len(writer) == 1 + 12 + 1
    assert writer[0]["Scalars:scalars"] == 100 and writer[-1]["Scalars:scalars"] == 157


def test_a_corrupt_rollout_record_or_row_is_one_line_naming_the_key(log: EventLog) -> None:
    store = RolloutStore(log)
    log.r.set(store._info_key("bogus-1"), b"{not json")
    with pytest.raises(CorruptData, match=r"bogus-1.*does not hold a rollout"):
        store.get("bogus-1")
    store.create(RolloutInfo(id="bogus-2", name="b", spec_path="s.yaml", spec={}, created=0, updated=0))
    log.r.hset(store.rows_key("bogus-2"), "e1", b"[1, 2]")
    with pytest.raises(CorruptData, match=r"bogus-2.*entry 'e1' is not a row"):
        store.rows("bogus-2")
