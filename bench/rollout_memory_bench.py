"""Benchmark of the rollout driver's memory: flat in the number of episodes (issue 17).

  plan    : a spec of `--plan-episodes` (default 1,000,000) episodes is loaded, validated and
            summarised as `p2e rollout validate` and `p2e rollout plan` do (counted, not built),
            then every episode is built and dropped in order, as the coordinator pulls them
            (`p2e.rollouts.plan.Episodes`). Time and peak RSS of each step.
  run     : a rollout of `--episodes` (default 100,000) on the mock provider at zero latency
            (agents in the supervisors, scored there), the team of bench/rollout_bench.py. The
            driver's RSS is sampled by an `on_row` hook at 10%, 20%, ..., 100% done; then the
            summary is computed from the store (streamed) and its time and peak RSS recorded.
            Flat: every sample from 10% to 100% within `--flat` (10%) of the 10% one.

Peak RSS is sampled every 20 ms by a thread (the process's own RSS, the driver's: Ray's workers
and the store are other processes).

Usage: python bench/rollout_memory_bench.py [--plan-episodes 1000000] [--episodes 100000]
       [--in-flight 256] [--supervisors 2] [--url URL]
Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import ray
import yaml
from benchlib import delete_ns, ray_header, server
from rollout_bench import write_spec

from p2e.api import run_rollout
from p2e.rollouts.plan import Episodes, summarize_plan
from p2e.rollouts.spec import load_spec
from p2e.rollouts.store import RolloutInfo, Row

MB = 2**20


class Peak:
    """The highest RSS of this process while the block runs (sampled every 20 ms)."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.peak = self.start = 0

    @contextlib.contextmanager
    def watch(self) -> Iterator[Peak]:
        self.start = self.peak = self.proc.memory_info().rss
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.02):
                self.peak = max(self.peak, self.proc.memory_info().rss)

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        try:
            yield self
        finally:
            stop.set()
            t.join()
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def figures(self) -> dict[str, float]:
        return {"rss_start_mb": round(self.start / MB, 1), "rss_peak_mb": round(self.peak / MB, 1)}


def plan_spec(tmp: Path, episodes: int) -> Path:
    """10 variants x 1,000 scenarios x `episodes / 10,000` repeats of the mock team."""
    write_spec(tmp, 0, 64, 0, 2, "supervisor")  # (the agents file and its mock rules)
    variants = 10
    scenarios = 1000
    spec = {
        "name": "plan",
        "agents": "agents.yaml",
        "teams": [{"id": "t", "root": "planner"}],
        "variants": [
            {"name": f"v{i}", "overrides": {"planner": {"persona": f"You plan, style {i}."}}}
            for i in range(variants)
        ],
        "scenarios": [
            {"id": f"s{i}", "message": f"question {i}", "reference": "Answer"} for i in range(scenarios)
        ],
        "repeats": max(1, episodes // (variants * scenarios)),
        "evaluators": [{"id": "contains", "per": "episode"}],
        "limits": {"max_steps": 10},
    }
    path = tmp / "plan.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def timed(fn, *args):  # type: ignore[no-untyped-def]
    peak = Peak()
    t0 = time.perf_counter()
    with peak.watch():
        out = fn(*args)
    return out, {"s": round(time.perf_counter() - t0, 2), **peak.figures()}


def plan_part(tmp: Path, episodes: int) -> dict:
    path = plan_spec(tmp, episodes)
    resolved, load = timed(load_spec, path)
    n, count = timed(lambda: len(Episodes(resolved)))
    summary, summ = timed(summarize_plan, resolved)

    def build_all() -> int:
        k = 0
        for _ in Episodes(resolved):
            k += 1
        return k

    built, walk = timed(build_all)
    return {
        "episodes": n,
        "variants": len(summary.variants),
        "min_model_calls": summary.min_model_calls,
        "max_model_calls": summary.max_model_calls,
        "load_and_validate": load,
        "count": count,
        "summarize_plan": summ,
        "build_every_episode_in_order": {**walk, "built": built},
    }


def run_part(
    tmp: Path, url: str, ns: str, episodes: int, in_flight: int, supervisors: int, flat: float
) -> dict:
    spec = write_spec(tmp, episodes, in_flight, 0, supervisors, "supervisor", 0.0, "supervisor")
    proc = psutil.Process()
    samples: list[tuple[int, float]] = []
    done, total, t0 = [0], [0], [0.0]
    start_rss: list[float] = []

    def on_start(info: RolloutInfo, todo: int, all_: int) -> None:
        total[0] = todo
        t0[0] = time.perf_counter()
        start_rss.append(proc.memory_info().rss / MB)

    def on_row(row: Row) -> None:
        done[0] += 1
        if done[0] % max(1, total[0] // 10) == 0:
            samples.append((done[0], proc.memory_info().rss / MB))

    result = run_rollout(spec, store_url=url, namespace=ns, on_start=on_start, on_row=on_row)
    wall = time.perf_counter() - t0[0]
    summaries, summ = timed(result.summary)
    rss = [round(x, 1) for _, x in samples]
    base = rss[0]
    return {
        "episodes": total[0],
        "rows": len(result.rows),
        "failed": sum(s.failures for s in summaries),
        "scored": sum(s.n for s in summaries),
        "wall_s": round(wall, 1),
        "episodes_per_s": round(total[0] / wall, 1),
        "driver_rss_mb_at_start": round(start_rss[0], 1) if start_rss else None,
        "driver_rss_mb_every_10pct": rss,
        "at_done": [n for n, _ in samples],
        "growth_10_to_100pct": round(rss[-1] / base - 1, 4),
        "max_over_10pct": round(max(rss) / base - 1, 4),
        "flat_within": flat,
        "flat": max(rss) <= base * (1 + flat) and min(rss) >= base * (1 - flat),
        "summary_from_store": summ,
        "mean": summaries[0].mean if summaries else None,
        "ci": [summaries[0].ci_low, summaries[0].ci_high] if summaries else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan-episodes", type=int, default=1_000_000)
    ap.add_argument("--episodes", type=int, default=100_000, help="the rollout's episodes (0: no run)")
    ap.add_argument("--in-flight", type=int, default=256)
    ap.add_argument("--supervisors", type=int, default=2)
    ap.add_argument("--flat", type=float, default=0.10, help="what flat means: within this of the 10%% RSS")
    ap.add_argument("--url", default=None)
    args = ap.parse_args()

    with server(args.url) as (url, _, _, home):
        ns = f"bench-{uuid.uuid4().hex[:8]}"
        out: dict = ray_header("rollout_memory")
        try:
            tmp = home / "spec"
            tmp.mkdir()
            if args.plan_episodes:
                out["plan"] = plan_part(tmp, args.plan_episodes)
            if args.episodes:
                ray.init(
                    address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="p2e"
                )
                out["run"] = run_part(
                    tmp, url, ns, args.episodes, args.in_flight, args.supervisors, args.flat
                )
                ray.shutdown()
            out["load_avg_end"] = os.getloadavg()
        finally:
            delete_ns(url, ns)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
