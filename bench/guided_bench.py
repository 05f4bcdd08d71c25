"""Benchmark of evaluator-guided branching: what best-of-n buys and what it costs, in tokens.

The rollout experiments/guided.yaml runs a solver on 8 sums with four mock "models" of different
skill, each alone (the plain variants `sloppy` (the baseline), `careful`, `lazy`, `guess`) and
`guided`: best-of-4 over the same four models at every root turn, valued by `exact_match`
against the reference. It runs on local Ray and the embedded store, like `make demo`.

  score  : mean primary score per variant; guided must reach the best plain variant's score.
  tokens : mean tokens per episode (guided counts every child, chosen or not); the target is
           guided tokens / baseline plain tokens <= 4.5 (n = 4 children, so ~4 is the floor).
  checks : every guided episode's conversation holds a search tree of 4 nodes, one chosen, and
           the row's branch is the chosen child.

Usage: python bench/guided_bench.py [--repeats N] [--url URL]. Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import uuid
from pathlib import Path

from benchlib import delete_ns, server

from p2e.api import run_rollout
from p2e.rollouts.spec import load_spec
from p2e.runtime.guided_search import read_tree
from p2e.store import connect

REPO = Path(__file__).resolve().parent.parent
SPEC = REPO / "experiments" / "guided.yaml"
TARGET_TOKENS_RATIO = 4.5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=4, help="repeats of each scenario (default 4)")
    ap.add_argument("--url", default=None, help="store URL (default: the embedded Valkey)")
    args = ap.parse_args()

    resolved = load_spec(SPEC)
    resolved = resolved.model_copy(
        update={"spec": resolved.spec.model_copy(update={"repeats": args.repeats})}
    )
    ns = f"bench-guided-{uuid.uuid4().hex[:8]}"
    with server(args.url) as (url, source, _, _):
        t0 = time.perf_counter()
        result = run_rollout(resolved, store_url=url, namespace=ns)
        wall = time.perf_counter() - t0
        by: dict[str, list] = {}
        for row in result.rows:
            by.setdefault(row.variant, []).append(row)
        log = connect(url, ns)
        trees = [read_tree(log, r.conversation) for r in by["guided"]]
        delete_ns(url, ns)

    variants = {
        v: {
            "n": len(rows),
            "failed": sum(r.status != "done" for r in rows),
            "score": statistics.fmean(r.primary or 0.0 for r in rows),
            "tokens": statistics.fmean(r.tokens for r in rows),
        }
        for v, rows in sorted(by.items())
    }
    plain = {v: s for v, s in variants.items() if v != "guided"}
    best = max(plain, key=lambda v: plain[v]["score"])
    guided = variants["guided"]
    ratio = guided["tokens"] / variants["sloppy"]["tokens"]
    tree_ok = all(
        len(t) == 4 and sum(n.chosen for n in t) == 1 and next(n for n in t if n.chosen).branch == r.branch
        for t, r in zip(trees, by["guided"], strict=True)
    )

    out = {
        "bench": "guided",
        "python": platform.python_version(),
        "spec": str(SPEC.relative_to(REPO)),
        "server": source,
        "episodes": len(result.rows),
        "wall_s": round(wall, 2),
        "variants": variants,
        "best_plain": best,
        "best_plain_score": plain[best]["score"],
        "guided_score": guided["score"],
        "guided_reaches_best": guided["score"] >= plain[best]["score"],
        "tokens_ratio_vs_baseline": round(ratio, 3),
        "tokens_ratio_target": TARGET_TOKENS_RATIO,
        "trees_ok": tree_ok,
        "ok": guided["score"] >= plain[best]["score"] and ratio <= TARGET_TOKENS_RATIO and tree_ok,
    }
    print(json.dumps(out))
    sys.exit(0 if out["ok"] else 1)


if __name__ == "__main__":
    main()
