"""`run.max_failures`: a rollout whose episodes keep failing stops early with one clear line, is
recorded as stopped with its reason, and `--resume` runs the failed episodes again."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml
from conftest import Cli
from test_rollouts import ROOT, SPEC, spec_error, write_spec

from p2e.rollouts.failures import FailureLimit, TooManyFailures
from p2e.rollouts.run import spec_hash
from p2e.rollouts.spec import load_spec
from p2e.rollouts.stats import summarize
from p2e.rollouts.store import RolloutStore, Row
from p2e.store import EventLog

# --- the setting ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("given", "limit"), [(3, 3), (0, 0), ("10%", 0.1), ("2.5 %", 0.025), (0.25, 0.25)])
def test_a_count_a_rate_or_a_percent(tmp_path: Path, given: object, limit: float) -> None:
    spec = load_spec(write_spec(tmp_path, {**SPEC, "run": {"max_failures": given}})).spec
    assert spec.run.max_failures == limit and type(spec.run.max_failures) is type(limit)
    assert load_spec(write_spec(tmp_path, SPEC)).spec.run.max_failures is None  # default: no limit


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("-1", "-1: a count cannot be negative"),
        ("true", "True: give a count of failed episodes (3), a rate below 1 (0.1) or a percent ('10%')"),
        ("'10'", "'10' is not a percent"),
        ("lots", "'lots' is not a percent"),
        ("110%", "'110%': a percent must be above 0% and below 100%"),
        ("0%", "'0%': a percent must be above 0% and below 100%"),
        (".nan", "nan: a rate must be above 0 and below 1"),
        (".inf", "inf: a rate must be above 0 and below 1"),
        ("1.5", "1.5: a rate must be above 0 and below 1 (0.1); a count is a whole number (3)"),
        ("0.0", "0.0: a rate must be above 0 and below 1"),
        ("[3]", "[3]: give a count"),
    ],
)
def test_bad_values_are_one_line_naming_the_field_and_line(tmp_path: Path, text: str, expected: str) -> None:
    body = yaml.safe_dump({k: v for k, v in SPEC.items() if k != "run"}, sort_keys=False)
    body += f"run: {{in_flight: 2, max_failures: {text}}}\n"
    msg = spec_error(tmp_path, body)
    line = len(body.splitlines())
    assert f"spec.yaml: line {line}, field 'run.max_failures'" in msg and expected in msg, msg
    assert len(msg.splitlines()) == 1 and "Traceback" not in msg and "input_value" not in msg


def test_the_limit_is_not_part_of_the_spec_hash(tmp_path: Path) -> None:
    """A resume may loosen (or set) the limit; any other change to the spec is refused."""
    plain = spec_hash(load_spec(write_spec(tmp_path, SPEC)))
    assert (
        spec_hash(load_spec(write_spec(tmp_path, {**SPEC, "run": {**SPEC["run"], "max_failures": 3}})))
        == plain
    )
    assert spec_hash(load_spec(write_spec(tmp_path, {**SPEC, "run": {"in_flight": 3}}))) != plain


def _row(i: int, error: str | None) -> Row:
    status = "done" if error is None else "failed"
    return Row(
        rollout="r",
        episode=f"e{i}",
        team="t",
        variant="v",
        scenario="s",
        repeat=i,
        seed=i,
        status=status,
        error=error,
    )


def test_a_count_stops_past_it_and_a_rate_waits_for_enough_episodes() -> None:
    count = FailureLimit(3, planned=100)
    trips = [count.add(_row(i, None if i % 2 else f"boom {i > 0}")) for i in range(7)]
    assert trips == [False] * 6 + [True]  # the 4th failure is the 7th row
    assert count.reason() == (
        "stopped after 4 of 7 finished episodes failed (run.max_failures: 3); "
        "most common error (3 of 4): boom True"
    )
    rate = FailureLimit(0.1, planned=100)  # checked from 20 finished on
    assert not rate.add(_row(0, "early"))  # 1 of 1 failed, but too few finished to tell
    assert not any(rate.add(_row(i, None)) for i in range(1, 19))
    assert not rate.add(_row(19, "again\nand  again"))  # 2 of 20 = 10%: not past it
    assert rate.add(_row(20, "again\nand  again"))  # 3 of 21
    assert rate.reason() == (
        "stopped after 3 of 21 finished episodes failed (run.max_failures: 10% of at least 20 finished); "
        "most common error (2 of 3): again and again"
    )
    small = FailureLimit(0.5, planned=3)  # a run smaller than 20: checked once it all finished
    assert [small.add(_row(i, "x")) for i in range(3)] == [False, False, True]


# --- a rollout against a dead model endpoint ---------------------------------------------------------


def _agents(tmp_path: Path, model: str) -> Path:
    """The demo team, every agent on `model`; `openai/*` goes to a local port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    team = yaml.safe_load((ROOT / "experiments/agents.yaml").read_text())
    for a in team["agents"].values():
        a["model"] = model
    team["personas_dir"] = str(ROOT / "experiments/personas")
    team["providers"]["mock"]["rules_dirs"] = [str(ROOT / "experiments/mock")]
    team["providers"]["openai"] = {
        "base_url": f"http://127.0.0.1:{port}/v1",
        "max_retries": 0,
        "timeout_s": 5,
    }
    path = tmp_path / "agents.yaml"
    path.write_text(yaml.safe_dump(team))
    return path


def test_a_dead_endpoint_stops_the_rollout_and_resume_runs_the_failed_episodes(
    ray_session: None,
    store_env: dict[str, str],
    tmp_path: Path,
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
    log: EventLog,
) -> None:
    monkeypatch.chdir(tmp_path)
    agents = _agents(tmp_path, "openai/gpt-test")
    spec = {**SPEC, "agents": str(agents), "repeats": 4, "run": {"in_flight": 2, "max_failures": 3}}
    path = write_spec(tmp_path, spec)  # 2 variants x 3 scenarios x 4 repeats = 24 episodes
    code, out, err = cli("rollout", "run", str(path), "--no-recording")
    store = RolloutStore(log)
    (rid,) = store.ids()
    assert code == TooManyFailures.exit_code == 3, err
    (line,) = [x for x in err.splitlines() if x.strip()]
    assert line.startswith(f"error: rollout {rid} stopped after 4 of ")
    assert "finished episodes failed (run.max_failures: 3); most common error (" in line
    assert "could not be reached" in line and f"p2e rollout run {path} --resume {rid}" in line
    rows = store.rows(rid)
    failed = [r for r in rows if r.status == "failed"]
    assert 4 <= len(failed) == len(rows) < 8  # 2 in flight: the 4th failure stops it, far short of 24
    info = store.get(rid)
    assert info.status == "stopped" and info.note.startswith("stopped after 4 of")
    assert "could not be reached" in info.note
    code, out, _ = cli("rollout", "list")
    assert code == 0 and rid in out and "stopped" in out
    code, out, _ = cli("rollout", "show", rid)
    assert code == 0 and f"stopped  {len(rows)}/24 episodes" in out and "run.max_failures: 3" in out
    assert f"--resume {rid}" in out
    # the endpoint is fixed (here: the team goes back to the offline model); resume runs the
    # failed episodes again with the never-run ones, and every episode has one row, done
    _agents(tmp_path, "mock/default")
    code, out, err = cli("rollout", "run", str(path), "--resume", rid, "--no-recording")
    assert code == 0, err
    assert "24 episodes, 0 failed" in out
    final = store.rows(rid)
    assert len(final) == store.count(rid) == 24 == len({r.episode for r in final})
    assert all(r.status == "done" and r.error is None for r in final)
    assert {r.episode for r in failed} <= {r.episode for r in final if r.abandoned}  # the failed attempts
    assert [(s.n, s.failures) for s in summarize(final)] == [(12, 0), (12, 0)]
    info = store.get(rid)
    assert info.status == "done" and info.note == ""
