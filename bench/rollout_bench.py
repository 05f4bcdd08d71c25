"""Benchmark of rollouts: episodes through the coordinator, supervisors, agents and the store.

The team is two mock agents whose model takes `--latency-ms` per call; each episode makes exactly
5 model calls (planner delegates -> researcher calls `clock` -> researcher answers -> planner calls
`clock` -> planner answers), 11 events, and is scored by `contains` on the episode.

  latency : E episodes at F in flight on local Ray. Ideal (latency-bound) = E x 5 x latency / F;
            the figure is wall time (first episode sent to last row stored) and its ratio to the
            ideal. Target (issue #5): 2,000 episodes, 256 in flight, 500 ms: <= 1.1x the ideal.
  memory  : the driver's RSS (the coordinator's process) sampled every 10% of the episodes; flat
            means nothing grows per episode beyond the result rows.
  scaling : --nodes 1,2,3 runs the same rollout on a simulated cluster (ray.cluster_utils) of
            1, 2, 3 nodes with one supervisor and F in flight per node (weak scaling: each node
            brings its own capacity). The simulated nodes share this machine's cores, so this
            shows the fan-out, not more CPU.

Usage: python bench/rollout_bench.py [--episodes 2000] [--in-flight 256] [--latency-ms 500]
       [--supervisors 2] [--nodes 1,2,3 --scaling-episodes 600 --per-node 64] [--url URL]
Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import uuid
from pathlib import Path

import psutil
import ray
import yaml
from benchlib import delete_ns, ray_header, server

from p2e.api import run_rollout
from p2e.obs.observer import RerunOptions, observe
from p2e.rollouts.store import RolloutInfo, Row

CALLS = 5

RULES = {
    "rules": [
        {"agent": "planner", "role": "user", "delegate": {"agent": "researcher", "task": "{{ last }}"}},
        {
            "agent": "planner",
            "role": "tool",
            "match": "^Findings",
            "tool_calls": [{"name": "clock", "arguments": {}}],
        },
        {"agent": "planner", "role": "tool", "text": "Answer: {{ results | join(' ') }}"},
        {"agent": "researcher", "role": "user", "tool_calls": [{"name": "clock", "arguments": {}}]},
        {"agent": "researcher", "role": "tool", "text": "Findings: {{ results[0] }}"},
    ],
    "default": "unscripted",
}


def write_spec(
    tmp: Path,
    episodes: int,
    in_flight: int,
    latency_ms: int,
    supervisors: int,
    placement: str = "actor",
    ramp_s: float = 1.0,
    scoring: str = "supervisor",
) -> Path:
    (tmp / "mock").mkdir(exist_ok=True)
    (tmp / "mock" / "bench.yaml").write_text(yaml.safe_dump({**RULES, "latency_ms": latency_ms}))
    agents = {
        "agents": {
            "planner": {
                "model": "mock/bench",
                "persona": "You plan.",
                "tools": ["clock"],
                "can_delegate_to": ["researcher"],
            },
            "researcher": {"model": "mock/bench", "persona": "You research.", "tools": ["clock"]},
        },
        "providers": {"mock": {"rules_dirs": [str(tmp / "mock")]}},
    }
    for a in agents["agents"].values():
        a["placement"] = placement
    (tmp / "agents.yaml").write_text(yaml.safe_dump(agents))
    scenarios = 20
    spec = {
        "name": "bench",
        "agents": "agents.yaml",
        "teams": [{"id": "t", "root": "planner"}],
        "scenarios": [
            {"id": f"s{i}", "message": f"question {i}", "reference": "Answer"} for i in range(scenarios)
        ],
        "repeats": max(1, episodes // scenarios),
        "evaluators": [{"id": "contains", "per": "episode"}],
        "limits": {"max_steps": 10},
        "run": {
            "in_flight": in_flight,
            "supervisors": supervisors,
            "retries": 2,
            "ramp_s": ramp_s,
            "scoring": scoring,
        },
    }
    path = tmp / f"spec-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def one_run(
    spec: Path,
    url: str,
    ns: str,
    latency_ms: int,
    in_flight: int,
    record: Path | None = None,
    **ray_opts: object,
) -> dict:
    """One rollout; with `record`, the rows go to a Rerun recording as they land (what `p2e
    rollout run` does by default)."""
    proc = psutil.Process()
    recording = contextlib.ExitStack()
    observations: list = []
    rss: list[int] = []
    done = [0]
    total = [0]

    def on_start(info: RolloutInfo, todo: int, all_: int) -> None:
        total[0] = todo
        if record is not None:
            opts = RerunOptions(save=record)
            observations.append(recording.enter_context(observe(opts, None, follow=False, rollout=info.id)))

    def on_row(row: Row) -> None:
        for obs in observations:
            obs.rollout_rows([row], row.rollout)
        done[0] += 1
        if done[0] % max(1, total[0] // 10) == 0:
            rss.append(proc.memory_info().rss)

    with recording:
        result = run_rollout(spec, store_url=url, namespace=ns, on_start=on_start, on_row=on_row, **ray_opts)
    rows = result.rows
    # from the first episode sent to the last row stored (actor start-up is not counted)
    first_sent = min(r.finished - r.wall_s for r in rows)
    last_done = max(r.finished for r in rows)
    wall = last_done - first_sent
    episode_s = CALLS * latency_ms / 1000
    ideal = math.ceil(len(rows) / in_flight) * episode_s  # each slot runs whole episodes in turn
    fluid = len(rows) * episode_s / in_flight  # as if episodes could be split across slots
    bad = [r for r in rows if r.status != "done" or r.primary != 1.0 or r.steps != CALLS]
    return {
        "episodes": len(rows),
        "failed_or_wrong": len(bad),
        "wall_s": round(wall, 2),
        "ideal_s": round(ideal, 2),
        "ratio_to_ideal": round(wall / ideal, 3) if ideal else None,
        "fluid_ideal_s": round(fluid, 2),
        "ratio_to_fluid_ideal": round(wall / fluid, 3) if fluid else None,
        "episodes_per_s": round(len(rows) / wall, 1),
        "model_calls_per_s": round(len(rows) * CALLS / wall, 1),
        "driver_rss_mb": [round(x / 2**20, 1) for x in rss],
        "recorded": record is not None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=2000)
    ap.add_argument("--in-flight", type=int, default=256)
    ap.add_argument("--latency-ms", type=int, default=500)
    ap.add_argument("--supervisors", type=int, default=2)
    ap.add_argument("--nodes", default="", help="e.g. 1,2,3: the weak-scaling runs on a simulated cluster")
    ap.add_argument("--scaling-episodes", type=int, default=600)
    ap.add_argument("--per-node", type=int, default=64)
    ap.add_argument("--url", default=None)
    ap.add_argument("--ramp-s", type=float, default=1.0, help="run.ramp_s of the spec (0: all start at once)")
    ap.add_argument(
        "--record", action="store_true", help="also record the rows to Rerun, as `p2e rollout run` does"
    )
    ap.add_argument(
        "--placement",
        choices=["actor", "supervisor"],
        default="actor",
        help="where the agents run (agents file)",
    )
    ap.add_argument(
        "--scoring",
        choices=["supervisor", "evaluators"],
        default="supervisor",
        help="run.scoring of the spec: the supervisor scores its episodes, or one Evaluator actor does",
    )
    args = ap.parse_args()

    with server(args.url) as (url, _, _, home):
        ns = f"bench-{uuid.uuid4().hex[:8]}"
        out: dict = ray_header("rollout")
        try:
            tmp = home / "spec"
            tmp.mkdir()
            if args.episodes:
                spec = write_spec(
                    tmp,
                    args.episodes,
                    args.in_flight,
                    args.latency_ms,
                    args.supervisors,
                    args.placement,
                    args.ramp_s,
                    args.scoring,
                )
                ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="p2e")
                out["latency"] = {
                    "in_flight": args.in_flight,
                    "latency_ms": args.latency_ms,
                    "supervisors": args.supervisors,
                    "placement": args.placement,
                    "scoring": args.scoring,
                    "ramp_s": args.ramp_s,
                    **one_run(
                        spec,
                        url,
                        ns,
                        args.latency_ms,
                        args.in_flight,
                        tmp / "rows.rrd" if args.record else None,
                    ),
                }
                ray.shutdown()
            if args.nodes:
                from ray.cluster_utils import Cluster

                out["scaling"] = []
                for n in [int(x) for x in args.nodes.split(",")]:
                    cluster = Cluster(
                        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
                    )
                    for _ in range(n - 1):
                        cluster.add_node(num_cpus=1)
                    cluster.wait_for_nodes()
                    ray.init(address=cluster.address, namespace="p2e", log_to_driver=False)
                    flight = args.per_node * n
                    spec = write_spec(
                        tmp, args.scaling_episodes, flight, args.latency_ms, n, args.placement, args.ramp_s
                    )
                    r = one_run(spec, url, ns, args.latency_ms, flight)
                    out["scaling"].append({"nodes": n, "in_flight": flight, **r})
                    ray.shutdown()
                    cluster.shutdown()
            out["load_avg_end"] = os.getloadavg()
        finally:
            delete_ns(url, ns)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
