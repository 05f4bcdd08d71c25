"""Benchmark of evaluation throughput: `p2e.evals.runner.evaluate_branch` with a model judge.

The judge is the `judge` evaluator (rubric experiments/rubrics/helpful.yaml) on the mock provider,
with a copy of experiments/mock/judge.yaml plus `latency_ms: 100` (a simulated 100 ms model call
that always answers valid JSON). One conversation's branch holds N agent replies (Started, then
N x UserMessage/AgentReply of the root agent, written through `Conversation.submit` so the
machine checks the history); every reply is a step to grade.

  throughput: wall time of `evaluate_branch(log, info, [judge], concurrency=64, providers=...)`
              on N = 640 steps, from the read of the history to the stored scores. Ideal
              (latency-bound) = ceil(N / 64) x 0.1 s, i.e. 640 evaluations/s; the figure is
              reported beside it as a ratio. Target: ratio >= 0.9.
  cpu       : the same run with a 0 ms judge: the CPU the whole pipeline spends on N evaluations
              (what is left when the model takes no time).
  overhead  : concurrency 1 on a small branch (N = 20): (wall - N x 0.1 s) / N, the p2e time per
              evaluation that is not the model's.
  checks    : after each run, ScoreStore(log).all(cid) holds exactly N scores, all `done`, one per
              (evaluator, target) and each target a distinct step.

Server: --url URL, else an embedded Valkey started with p2e.store.server.ensure_embedded in a
temporary P2E home (AOF on, appendfsync everysec) and stopped afterwards. Everything is written
under a unique namespace whose keys are deleted at the end.

Usage: python bench/eval_bench.py [--url URL] [--quick] [knobs, see --help]. Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis
import yaml
from benchlib import delete_ns, server

from p2e.conversation import Conversation
from p2e.evals import BoundEvaluator, builtin_registry
from p2e.evals.runner import evaluate_branch
from p2e.evals.store import ScoreStore
from p2e.events import AgentReply, Limits, UserMessage
from p2e.llm.registry import Providers
from p2e.store import BranchInfo, EventLog

REPO = Path(__file__).resolve().parent.parent
JUDGE_RULES = REPO / "experiments" / "mock" / "judge.yaml"
RUBRIC = REPO / "experiments" / "rubrics" / "helpful.yaml"
ROOT = "assistant"

QUESTION = "What will the weather be like in Paris this week, and what should I pack for {i} days?"
ANSWER = (
    "It is 22C and sunny in Paris this afternoon. The forecast for the rest of the week shows "
    "light rain on Thursday and clearer skies by the weekend; for {i} days, pack a light jacket "
    "and an umbrella."
)

FULL = {"n": 640, "small_n": 20, "concurrency": 64, "latency_ms": 100.0, "rounds": 1}
QUICK = {"n": 128, "small_n": 5, "concurrency": 64, "latency_ms": 100.0, "rounds": 1}


# --- helpers ------------------------------------------------------------------------------------


def rules_dir(latencies_ms: list[float]) -> Path:
    """A temp rules dir holding judge.yaml's rules as `judge<ms>.yaml`, one per latency."""
    d = Path(tempfile.mkdtemp(prefix="p2e-evalbench-rules-"))
    base = yaml.safe_load(JUDGE_RULES.read_text())
    for ms in latencies_ms:
        (d / f"judge{int(ms)}.yaml").write_text(yaml.safe_dump({**base, "latency_ms": ms}))
    return d


def build(log: EventLog, n: int) -> BranchInfo:
    """A conversation whose main branch holds Started + n x (UserMessage, AgentReply)."""
    conv = Conversation.create(log, ROOT, {ROOT: ()}, limits=Limits(max_steps=max(64, n + 1)))
    batch: list = []
    for i in range(n):
        batch += [UserMessage(text=QUESTION.format(i=i)), AgentReply(agent=ROOT, text=ANSWER.format(i=i))]
        if len(batch) >= 200:
            conv.submit(*batch)
            batch = []
    if batch:
        conv.submit(*batch)
    info = log.branch(conv.id)
    assert info.length == 1 + 2 * n, (info.length, n)
    return info


def check(log: EventLog, info: BranchInfo, n: int, returned: int) -> dict[str, object]:
    """Exactly n scores stored, all done, no duplicate (evaluator, target), each a distinct step."""
    scores = ScoreStore(log).all(info.conversation)
    keys = [s.key for s in scores]
    seqs = {s.target.seq for s in scores}
    steps = {e.seq for e in log.read(info) if isinstance(e, AgentReply)}
    out = {
        "returned": returned,
        "stored": len(scores),
        "done": sum(s.status == "done" for s in scores),
        "duplicates": len(keys) - len(set(keys)),
        "all_steps_scored": seqs == steps,
    }
    out["ok"] = (
        returned == n
        and out["stored"] == n
        and out["done"] == n
        and out["duplicates"] == 0
        and out["all_steps_scored"]
    )
    if not out["ok"]:
        errors = [s.error for s in scores if s.status == "error"][:3]
        out["sample_errors"] = errors
    return out


def run_once(
    log: EventLog, n: int, judge: BoundEvaluator, providers: Providers, concurrency: int
) -> tuple[float, dict[str, object]]:
    """Build a fresh n-step branch (not timed), time evaluate_branch over it, check the scores."""
    info = build(log, n)
    t = time.perf_counter()
    scores = asyncio.run(evaluate_branch(log, info, [judge], concurrency=concurrency, providers=providers))
    wall = time.perf_counter() - t
    return wall, check(log, info, n, len(scores))


def rnd(x: float, k: int = 3) -> float:
    return round(x, k)


# --- the bench ----------------------------------------------------------------------------------


def run(url: str, args: argparse.Namespace, sizes: dict[str, float]) -> dict[str, object]:
    n, small_n = int(sizes["n"]), int(sizes["small_n"])
    conc, lat = int(sizes["concurrency"]), float(sizes["latency_ms"])
    ns = f"p2ebench-eval-{uuid.uuid4().hex[:8]}"
    log = EventLog(url, namespace=ns)
    rdir = rules_dir([lat, 0.0])
    providers = Providers({"mock": {"rules_dirs": [str(rdir)]}})
    reg = builtin_registry()
    judge = reg.create("judge", model=f"mock/judge{int(lat)}", rubric=str(RUBRIC))
    judge0 = reg.create("judge", model="mock/judge0", rubric=str(RUBRIC))
    out: dict[str, object] = {"namespace": ns}
    try:
        # warm-up: imports, template compilation, the rules file's first load, the connection
        run_once(log, 4, judge0, providers, conc)

        ideal_s = math.ceil(n / conc) * lat / 1000
        ideal_rate = n / ideal_s
        walls, checks = [], []
        for _ in range(int(sizes["rounds"])):
            wall, chk = run_once(log, n, judge, providers, conc)
            walls.append(wall)
            checks.append(chk)
        best = min(walls)
        rate = n / best
        out["throughput"] = {
            "n": n,
            "concurrency": conc,
            "latency_ms": lat,
            "wall_s": [rnd(w) for w in walls],
            "evals_per_s": rnd(rate, 1),
            "ideal_s": rnd(ideal_s),
            "ideal_evals_per_s": rnd(ideal_rate, 1),
            "ratio_to_ideal": rnd(rate / ideal_rate),
            "target_ratio": 0.9,
            "met": rate / ideal_rate >= 0.9,
            "checks": checks,
        }

        wall0, chk0 = run_once(log, n, judge0, providers, conc)
        out["cpu"] = {
            "n": n,
            "concurrency": conc,
            "latency_ms": 0,
            "wall_s": rnd(wall0),
            "ms_per_eval": rnd(wall0 / n * 1e3),
            "evals_per_s": rnd(n / wall0, 1),
            "checks": chk0,
        }

        wall1, chk1 = run_once(log, small_n, judge, providers, 1)
        floor1 = small_n * lat / 1000
        out["serial"] = {
            "n": small_n,
            "concurrency": 1,
            "latency_ms": lat,
            "wall_s": rnd(wall1),
            "ideal_s": rnd(floor1),
            "overhead_ms_per_eval": rnd((wall1 - floor1) / small_n * 1e3),
            "ratio_to_ideal": rnd(floor1 / wall1),
            "checks": chk1,
        }
        out["all_checks_ok"] = all(c["ok"] for c in [*checks, chk0, chk1])
    finally:
        out["keys_deleted"] = delete_ns(log.r, ns)
        log.close()
        shutil.rmtree(rdir, ignore_errors=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="Redis/Valkey URL; default: start an embedded Valkey and stop it after")
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke test, a few seconds)")
    ap.add_argument("--n", type=int, help="steps graded in the throughput run (default 640)")
    ap.add_argument("--small-n", type=int, help="steps graded at concurrency 1 (default 20)")
    ap.add_argument("--concurrency", type=int, help="evaluations in flight (default 64)")
    ap.add_argument("--latency-ms", type=float, help="simulated judge latency (default 100)")
    ap.add_argument("--rounds", type=int, help="throughput runs, the best is reported (default 1)")
    args = ap.parse_args()
    sizes = dict(QUICK if args.quick else FULL)
    for k in ("n", "small_n", "concurrency", "latency_ms", "rounds"):
        if getattr(args, k) is not None:
            sizes[k] = getattr(args, k)
    out: dict[str, object] = {
        "bench": "p2e_eval",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": args.quick,
        "python": platform.python_version(),
        "client": f"redis-py {redis.__version__}",
        "cpus": os.cpu_count(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }
    with server(args.url) as (url, source, _, _):
        out["source"] = source
        out.update(run(url, args, sizes))
    print(json.dumps(out))
    return 0 if out.get("all_checks_ok") else 1


if __name__ == "__main__":
    sys.exit(main())
