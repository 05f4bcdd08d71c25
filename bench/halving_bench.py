"""Benchmark of adaptive rollouts: does successive halving find the best variant, and with how
many of the full grid's episodes?

The task is experiments/halving.yaml: eight variants of a one-agent team (mock models, no
latency) answer 24 sums, each variant right on a fixed share of them; v6 is scripted to be the
best. Three parts, all on the same spec:

  grid    : the full grid (the spec without `adaptive:`) on local Ray: 8 x 24 = 192 episodes.
            Its per-variant means are the truth: `best` is their argmax.
  runs    : the adaptive rollout, for real, once per seed of the scenario order
            (`adaptive.seed`, --seeds): episodes run, their share of the full grid, the winner,
            whether it is the best, who stopped after which round (mean and 95% CI), wall time.
  replay  : `Halving.replay` of the grid's rows for --replay-seeds seeds (no episodes run; the
            mock models are deterministic, so it decides what a run would). It must agree with
            every real run (`replay_matches_runs`), and says how often the best is found over
            many scenario orders.

Target (issue #8): successive halving finds the best of 8 variants with at most 60% of the
episodes of the full grid.

Usage: python bench/halving_bench.py [--seeds 0,1,2,3,4] [--replay-seeds 1000] [--url URL]
Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from pathlib import Path

import ray
import yaml
from benchlib import delete_ns, ray_header, server

from p2e.api import run_rollout
from p2e.rollouts.adaptive import Halving
from p2e.rollouts.plan import expand
from p2e.rollouts.spec import load_spec
from p2e.rollouts.stats import summarize

SPEC = Path(__file__).resolve().parent.parent / "experiments" / "halving.yaml"
TARGET_SHARE = 0.6


def spec_with(tmp: Path, name: str, adaptive: dict | None) -> Path:
    """The example spec, with another `adaptive:` section (or none: the full grid)."""
    spec = yaml.safe_load(SPEC.read_text())
    if adaptive is None:
        spec.pop("adaptive", None)
    else:
        spec["adaptive"] = {**spec["adaptive"], **adaptive}
    spec["name"] = name
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2,3,4", help="adaptive.seed of each real run")
    ap.add_argument("--replay-seeds", type=int, default=1000)
    ap.add_argument("--url", default=None)
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s]

    with server(args.url) as (url, _, _, home):
        ns = f"bench-{uuid.uuid4().hex[:8]}"
        out: dict = ray_header("halving", spec=str(SPEC.relative_to(SPEC.parent.parent)))
        try:
            tmp = home / "spec"
            tmp.mkdir()
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="p2e")

            t0 = time.monotonic()
            grid = run_rollout(spec_with(tmp, "grid", None), store_url=url, namespace=ns)
            means = {s.variant: s.mean for s in summarize(grid.rows)}
            ranked = sorted(means, key=lambda v: -(means[v] or 0.0))
            best = ranked[0]
            out["grid"] = {
                "episodes": len(grid.rows),
                "failed": sum(r.status == "failed" for r in grid.rows),
                "means": {v: round(m, 4) if m is not None else None for v, m in sorted(means.items())},
                "best": best,
                "gap_to_second": round((means[best] or 0.0) - (means[ranked[1]] or 0.0), 4),
                "wall_s": round(time.monotonic() - t0, 2),
            }

            runs = []
            for seed in seeds:
                t0 = time.monotonic()
                result = run_rollout(
                    spec_with(tmp, f"halving-s{seed}", {"seed": seed}), store_url=url, namespace=ns
                )
                record = result.info.adaptive
                assert record is not None
                runs.append(
                    {
                        "seed": seed,
                        "episodes": len(result.rows),
                        "share_of_grid": round(len(result.rows) / record.grid_episodes, 4),
                        "winner": result.winner,
                        "found_best": result.winner == best,
                        "failed": sum(r.status == "failed" for r in result.rows),
                        "rounds": [
                            {
                                "round": rec.round,
                                "variants": len(rec.variants),
                                "episodes": rec.episodes,
                                "cutoff": rec.cutoff,
                                "stopped": {
                                    s.variant: [s.mean, s.ci_low, s.ci_high, s.separated] for s in rec.stopped
                                },
                            }
                            for rec in result.rounds
                        ],
                        "decisions": [[s.variant for s in rec.standings] for rec in result.rounds],
                        "wall_s": round(time.monotonic() - t0, 2),
                    }
                )
            out["runs"] = runs

            # the same decisions from the grid's rows, for many scenario orders
            found, shares, matches = 0, set(), []
            by_seed = {r["seed"]: r for r in runs}
            resolved = load_spec(SPEC)
            episodes = expand(resolved)
            adaptive = resolved.spec.adaptive
            assert adaptive is not None
            t0 = time.monotonic()
            for seed in range(max(args.replay_seeds, max(seeds, default=0) + 1)):
                spec = resolved.spec.model_copy(
                    update={"adaptive": adaptive.model_copy(update={"seed": seed})}
                )
                h = Halving(resolved.model_copy(update={"spec": spec}), episodes)
                decided = h.replay(grid.rows)
                found += decided[-1].kept == [best]
                shares.add(round(h.total / h.grid, 4))
                if seed in by_seed:
                    order = [[s.variant for s in rec.standings] for rec in decided]
                    matches.append(order == by_seed[seed]["decisions"])
            n = max(args.replay_seeds, max(seeds, default=0) + 1)
            out["replay"] = {
                "seeds": n,
                "found_best": round(found / n, 4),
                "share_of_grid": sorted(shares),
                "wall_s": round(time.monotonic() - t0, 2),
            }
            out["replay_matches_runs"] = all(matches) and len(matches) == len(runs)
            max_share = max((r["share_of_grid"] for r in runs), default=None)
            out["target"] = {
                "share_max": TARGET_SHARE,
                "runs_share_max": max_share,
                "runs_found_best": sum(r["found_best"] for r in runs),
                "runs": len(runs),
                "met": bool(runs) and max_share <= TARGET_SHARE and all(r["found_best"] for r in runs),
            }
            ray.shutdown()
            out["load_avg_end"] = os.getloadavg()
        finally:
            delete_ns(url, ns)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
