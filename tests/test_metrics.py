"""Ray metrics tell the same numbers as the rows: after a short rollout, what the local Ray node's
metrics agent exports (scraped from its Prometheus endpoint, as Ray's own tests read it) sums to
the rollout's rows, per variant, although the supervisors were killed right after the last
episode (their counters used to wait a second for a flush that never came)."""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from pathlib import Path

import pytest
import ray
import yaml
from openai_server import OpenAIServer, Reply
from ray_cli_cluster import scrape as scrape_url

import actors.metrics
import p2e.obs
from p2e.api import run_rollout

PRICE = [1000, 2000]
"""USD per 1M input and output tokens of the test model: every step costs something."""


def scrape() -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample the local Ray node exports: name -> [(labels, value)]."""
    node = next(n for n in ray.nodes() if n.get("Alive"))
    return scrape_url(f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics")


def totals(samples: dict, name: str, rollout: str, by: str) -> dict[str, float]:
    """The sum of metric `name` over the rollout's samples, per value of label `by`."""
    out: dict[str, float] = defaultdict(float)
    for labels, value in samples.get(name, []):
        if labels.get("rollout") == rollout:
            out[labels[by]] += value
    return dict(out)


def test_a_rollouts_metrics_add_up_to_its_rows(
    ray_session: None, store_url: str, namespace: str, tmp_path: Path, openai_server: OpenAIServer
) -> None:
    openai_server.responder = lambda body: (
        Reply(status=400, error="no such model")
        if body["model"] == "broken-model"
        else Reply(text="done", prompt_tokens=7, completion_tokens=3)
    )
    agents = {
        "agents": {"solo": {"model": "openai/test-model", "persona": "You answer."}},
        "providers": {
            "openai": {
                "base_url": openai_server.url,
                "max_retries": 0,
                "prices": {"test-model": PRICE, "broken-model": PRICE},
            }
        },
    }
    (tmp_path / "agents.yaml").write_text(yaml.safe_dump(agents))
    spec = {
        "name": "metered",
        "agents": str(tmp_path / "agents.yaml"),
        "teams": [{"id": "one", "root": "solo"}],
        "scenarios": [{"id": "a", "message": "first?"}, {"id": "b", "message": "second?"}],
        "variants": [
            {"name": "baseline"},
            {"name": "warm", "overrides": {"solo": {"temperature": 0.9}}},
            {"name": "broken", "overrides": {"solo": {"model": "openai/broken-model"}}},
        ],
        "repeats": 2,
        "evaluators": [{"id": "max_steps", "per": "episode", "params": {"limit": 6}}],
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    result = run_rollout(tmp_path / "spec.yaml", store_url=store_url, namespace=namespace)
    rows = result.rows
    assert len(rows) == 12 and {r.status for r in rows} == {"done", "failed"}

    want = {
        "ray_p2e_steps_total": defaultdict(float),
        "ray_p2e_tokens_total": defaultdict(float),
        "ray_p2e_cost_usd_total": defaultdict(float),
    }
    episodes: dict[str, float] = defaultdict(float)
    for r in rows:
        want["ray_p2e_steps_total"][r.variant] += r.steps
        want["ray_p2e_tokens_total"][r.variant] += r.tokens
        want["ray_p2e_cost_usd_total"][r.variant] += r.cost_usd
        episodes[f"{r.variant}/{r.status}"] += 1
    want = {k: {v: x for v, x in d.items() if x} for k, d in want.items()}  # no sample for a zero
    assert want["ray_p2e_steps_total"] == {"baseline": 4, "warm": 4}  # the broken variant never replied

    # Ray's workers report to the node's metrics agent every few seconds: wait for the episodes
    got: dict[str, dict[str, float]] = {}
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        samples = scrape()
        got = {name: totals(samples, name, result.id, "variant") for name in want}
        by_status = defaultdict(float)
        for labels, value in samples.get("ray_p2e_episodes_total", []):
            if labels.get("rollout") == result.id:
                by_status[f"{labels['variant']}/{labels['status']}"] += value
        got["episodes"] = dict(by_status)
        if got["episodes"] == episodes:
            break
        time.sleep(1)
    assert got.pop("episodes") == dict(episodes)
    assert got["ray_p2e_steps_total"] == want["ray_p2e_steps_total"]
    assert got["ray_p2e_tokens_total"] == want["ray_p2e_tokens_total"]
    assert got["ray_p2e_cost_usd_total"].keys() == want["ray_p2e_cost_usd_total"].keys()
    for variant, cost in want["ray_p2e_cost_usd_total"].items():
        assert got["ray_p2e_cost_usd_total"][variant] == pytest.approx(cost)
    # the episode wall-time histogram counts every episode too, labelled the same way
    samples = scrape()
    wall = totals(samples, "ray_p2e_episode_seconds_count", result.id, "variant")
    assert wall == {"baseline": 4, "warm": 4, "broken": 4}
    assert totals(samples, "ray_p2e_score_count", result.id, "variant") == {
        "baseline": 4,
        "warm": 4,
    }  # not the failed ones
    dashboard_reads_what_ray_exports(samples)


ONLY_ON_ERROR = {"ray_p2e_score_errors_total"}
"""Counters that appear once something fails (no evaluation fails here): the declaration is checked."""


def test_error_counters_the_dashboard_reads_are_declared() -> None:
    source = (Path(actors.metrics.__file__)).read_text()
    assert all(f'"{name.removeprefix("ray_")}"' in source for name in ONLY_ON_ERROR)


def dashboard_reads_what_ray_exports(samples: dict[str, list[tuple[dict[str, str], float]]]) -> None:
    """Every series the shipped Grafana dashboard queries is one Ray exports, with the labels the
    query groups and filters by (a renamed metric or label would leave a panel empty)."""
    dashboard = json.loads((Path(p2e.obs.__file__).parent / "grafana" / "p2e_rollouts.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    assert len(exprs) >= 10
    for expr in exprs:
        names = re.findall(r"ray_p2e_\w+", expr)
        labels = {x.strip() for group in re.findall(r"by \(([^)]*)\)", expr) for x in group.split(",")}
        labels |= set(re.findall(r"(\w+)\s*=~?\s*\"", expr))
        labels |= set(re.findall(r"label_values\(\w+, (\w+)\)", expr))
        assert names, expr
        for name in names:
            if name in ONLY_ON_ERROR and not samples.get(name):
                continue
            assert samples.get(name), f"{name} (in {expr!r}) is not exported"
            have = {k for series, _ in samples[name] for k in series}
            assert labels <= have, (expr, labels - have)
