"""A rollout from Python: run a spec, read the summary and the paired comparison, export.

    .venv/bin/python experiments/sweep.py [SPEC]        # default: experiments/quickstart.yaml

The same as `p2e rollout run SPEC` followed by `p2e rollout compare ID` and `p2e rollout export
ID --format parquet`, for scripts and notebooks that want the numbers themselves.
"""

from __future__ import annotations

import sys

import p2e
from p2e.rollouts.store import Row


def main(spec: str) -> None:
    done = 0

    def progress(row: Row) -> None:
        nonlocal done
        done += 1
        print(f"\r{done} episodes done ({row.variant} / {row.scenario}: {row.status})", end="", flush=True)

    result = p2e.rollout(spec, on_row=progress)
    print(f"\nrollout {result.id}: {len(result.rows)} episodes")
    for s in result.summary():
        ci = f"[{s.ci_low:.2f}, {s.ci_high:.2f}]" if s.ci_low is not None else "(too few)"
        mean = f"{s.mean:.3f}" if s.mean is not None else "-"
        print(f"  {s.variant:<24} mean {mean} 95% CI {ci}  n={s.n} failures={s.failures}")
    for c in result.compare():
        if c.difference is not None:
            print(f"  {c.variant} - {c.baseline}: {c.difference:+.3f} over {c.pairs} scenarios")
    failed = [r for r in result.rows if r.status == "failed"]
    for r in failed[:5]:
        print(f"  failed: {r.episode} ({r.variant} / {r.scenario}): {r.error}")
    path = result.to_parquet(f"{result.id}.parquet")
    print(f"rows written to {path}; look at an episode: p2e conversation show {result.rows[0].conversation}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "experiments/quickstart.yaml")
