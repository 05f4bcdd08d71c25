"""Benchmark of the observers (p2e.obs): how far behind the store they run, and what they cost.

  lag     : a writer process appends the demo team's events (the mock planner -> researcher ->
            writer episode, 10 events) round-robin into 10 live conversations at a fixed rate
            (default 500 events/s), one event per append, each stamped with its append time. In
            this process a `StoreFollower` (new conversations only, poll every 0.25 s) reads them;
            lag = time the observer has the event in hand (after logging it to Rerun, when it
            records) - the event's timestamp. p50/p95/p99/max over every event, with and
            without Rerun recording (to a .rrd file). Target: under 1 s.
            Also: the writer's append latency with and without the observer, and the observer's
            CPU per event (process CPU time, every thread, Rerun's included, divided by events).
  cost    : the same workload as a rollout, CPU-bound: a writer process runs the local runtime
            (p2e.runtime.local: machine, driver, agents, mock model; 8 episodes in flight) as
            fast as it can, with (a) no observer, (b) a follower only, (c) a follower recording
            to Rerun (compact detail, as `observe` records a rollout). Rounds interleave the three
            (order rotated each round) so that drift on a shared machine hits them alike.
            Reported: events/s per run and the median ratio of (c) to (a), the throughput the
            rollout keeps while it is recorded (target >= 0.95); and, steadier on a shared
            machine, the observer's CPU per event over the rollout's own (runtime process +
            store server, from process times and the server's INFO cpu): the share of the
            machine the observer takes from a CPU-bound rollout.
  redact  : the cost per event of masking secrets in an encoded event (what the store's write
            path would pay if every append went through `Redactor.data`).
  feed    : the alternative to polling that was measured and not taken: a notification stream
            written by the append script (an XADD per append). Appends/s of the script as it is
            and with the XADD, one event per call, alternated in 0.2 s slices.

Server: --url URL, else an embedded Valkey in a temporary P2E home (AOF on, everysec), stopped
afterwards. Everything is written under a unique namespace, deleted at the end.

Usage: python bench/obs_bench.py [--url URL] [--quick] [--rate N] [--seconds S] [--rounds N].
Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from benchlib import delete_ns, server

ROOT = Path(__file__).resolve().parents[1]
AGENTS = ROOT / "experiments" / "agents.yaml"
INTERVAL = 0.25  # as `observe` polls when it follows every new conversation (POLL_ALL_S)


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def dist_ms(xs: list[float]) -> dict[str, float]:
    return {
        "p50": round(pct(xs, 0.5) * 1e3, 2),
        "p95": round(pct(xs, 0.95) * 1e3, 2),
        "p99": round(pct(xs, 0.99) * 1e3, 2),
        "max": round(max(xs) * 1e3, 2) if xs else float("nan"),
    }


def demo_script(url: str, ns: str) -> list[str]:
    """The events of one demo episode (JSON without seq), recorded once by the local runtime."""
    from p2e.api import local_chat

    chat = local_chat("planner", agents=str(AGENTS), store_url=url, namespace=ns)
    try:
        chat.send("Weather in Paris?")
        return [e.model_dump_json(exclude={"seq"}) for e in chat.history()]
    finally:
        chat.close()


# --- writers (child processes) -----------------------------------------------------------------


def paced_writer(url: str, ns: str, script: list[str], rate: float, seconds: float, q: Any) -> None:
    """Appends at `rate` events/s into 10 conversations round-robin, each replaying the script."""
    from p2e.events import event_adapter
    from p2e.store import EventLog

    log = EventLog(url, ns)
    events = [event_adapter.validate_json(s) for s in script]
    slots: list[list[Any]] = [[None, 0] for _ in range(10)]
    lat: list[float] = []
    n = behind = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        due = t0 + n / rate
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        elif wait < -0.05:
            behind += 1
        slot = slots[n % len(slots)]
        if slot[1] == 0:
            slot[0] = log.create_conversation(events[0].root).id  # type: ignore[union-attr]
        e = events[slot[1]].model_copy(update={"ts": time.time()})
        a = time.perf_counter()
        log.append_to(slot[0], "main", [e])
        lat.append(time.perf_counter() - a)
        slot[1] = (slot[1] + 1) % len(events)
        n += 1
    q.put({"events": n, "seconds": time.monotonic() - t0, "append_s": lat, "late_by_50ms": behind})


def runtime_writer(url: str, ns: str, seconds: float, in_flight: int, q: Any) -> None:
    """The local runtime running demo episodes back to back, `in_flight` at a time."""
    from p2e.agents import load_team
    from p2e.runtime.local import local_driver
    from p2e.store import EventLog

    log = EventLog(url, ns)
    team = load_team(AGENTS)
    episodes = 0

    async def main() -> float:
        nonlocal episodes
        driver = local_driver(log, team)
        t0 = time.monotonic()

        async def worker() -> None:
            nonlocal episodes
            while time.monotonic() - t0 < seconds:
                cid = await driver.create("planner", team.team_of("planner"), team.limits)
                await driver.send(cid, "Weather in Paris?")
                driver.release(cid)
                episodes += 1

        await asyncio.gather(*(worker() for _ in range(in_flight)))
        el = time.monotonic() - t0
        await driver.writer.close()
        return el

    cpu0 = time.process_time()
    el = asyncio.run(main())
    cpu = time.process_time() - cpu0
    r = redis.Redis.from_url(url)
    events = 0
    for cid in r.zrange(f"{ns}:convs", 0, -1):
        events += int(r.hget(f"{ns}:conv:{cid.decode()}", "events") or 0)
    q.put({"episodes": episodes, "events": events, "seconds": el, "cpu_s": cpu})


# --- the observer (this process) ---------------------------------------------------------------


class Observer:
    """The product's observer (`p2e.obs.Observation`: a follower thread at lowered priority, with
    or without a Rerun recorder) plus a probe that notes each event's lag as it is handled."""

    def __init__(self, url: str, ns: str, rerun_file: Path | None, nice: int, detail: str = "compact"):
        from p2e.obs import Observation, RerunOptions, StoreFollower, start_recording
        from p2e.obs.recorder import Recorder
        from p2e.store import EventLog

        self.log = EventLog(url, ns)
        self.lags: list[float] = []
        self.events = 0
        make = None
        if rerun_file is not None:
            opts = RerunOptions(save=rerun_file)
            make = lambda: Recorder(start_recording(opts, "obs_bench"), detail=detail)  # noqa: E731
        follower = StoreFollower(self.log, None, new_only=True, forget_s=120.0)  # as `observe` does
        self.obs = Observation(follower, make, interval=INTERVAL, nice=nice, on_updates=self._probe)

    def _probe(self, updates: list[Any]) -> None:
        from p2e.obs import BranchBatch

        now = time.time()
        for u in updates:
            if isinstance(u, BranchBatch):
                self.events += len(u.steps)
                self.lags += [now - s.event.ts for s in u.steps]

    def start(self) -> None:
        self.obs.start()

    def close(self) -> None:
        self.obs.close()
        self.log.close()


def observe_while(proc: mp.process.BaseProcess, obs: Observer | None) -> float:
    """Observe until the writer exits (then a last poll); return this process's CPU seconds."""
    cpu0 = time.process_time()
    if obs is not None:
        obs.start()
    proc.join()
    if obs is not None:
        obs.close()
    return time.process_time() - cpu0


def run_lag(url: str, script: list[str], rate: float, seconds: float, tmp: Path, nice: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    out: dict[str, Any] = {"rate": rate, "seconds": seconds, "poll_interval_s": INTERVAL, "runs": {}}
    for mode in ("none", "follow", "rerun", "rerun_full"):
        ns = f"p2eobsbench-{uuid.uuid4().hex[:8]}"
        q = ctx.Queue()
        proc = ctx.Process(target=paced_writer, args=(url, ns, script, rate, seconds, q))
        detail = "full" if mode == "rerun_full" else "compact"
        file = tmp / f"lag-{mode}.rrd" if mode.startswith("rerun") else None
        obs = None if mode == "none" else Observer(url, ns, file, nice, detail)
        proc.start()
        cpu = observe_while(proc, obs)
        w = q.get(timeout=30)
        proc.join()
        run: dict[str, Any] = {
            "writer_events_per_s": round(w["events"] / w["seconds"], 1),
            "writer_append_ms": dist_ms(w["append_s"]),
            "writer_late_by_50ms": w["late_by_50ms"],
        }
        if obs is not None:
            run["observed"] = obs.events
            run["lag_ms"] = dist_ms(obs.lags)
            run["observer_cpu_s"] = round(cpu, 3)
            run["observer_cpu_us_per_event"] = round(cpu / max(obs.events, 1) * 1e6, 1)
            run["observer_core_fraction"] = round(cpu / w["seconds"], 3)
        if file is not None and obs is not None:
            run["rrd_bytes_per_event"] = round(file.stat().st_size / max(obs.events, 1), 1)
        out["runs"][mode] = run
        delete_ns(url, ns)
    return out


def run_cost(url: str, seconds: float, rounds: int, in_flight: int, tmp: Path, nice: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    modes = ["none", "follow", "rerun"]
    rates: dict[str, list[float]] = {m: [] for m in modes}
    cpu_per_event: dict[str, list[float]] = {"follow": [], "rerun": []}
    work_per_event: list[float] = []  # CPU the rollout itself spends per event: runtime + server
    share: dict[str, list[float]] = {"follow": [], "rerun": []}
    for r in range(rounds):
        order = modes[r % 3 :] + modes[: r % 3]
        for mode in order:
            ns = f"p2eobsbench-{uuid.uuid4().hex[:8]}"
            q = ctx.Queue()
            proc = ctx.Process(target=runtime_writer, args=(url, ns, seconds, in_flight, q))
            obs = (
                None
                if mode == "none"
                else Observer(url, ns, tmp / "cost.rrd" if mode == "rerun" else None, nice)
            )
            server0 = server_cpu(url)
            proc.start()
            cpu = observe_while(proc, obs)
            w = q.get(timeout=60)
            proc.join()
            work = (w["cpu_s"] + server_cpu(url) - server0) / max(w["events"], 1) * 1e6
            work_per_event.append(work)
            rates[mode].append(w["events"] / w["seconds"])
            if obs is not None:
                per = cpu / max(obs.events, 1) * 1e6
                cpu_per_event[mode].append(per)
                share[mode].append(per / work)
            delete_ns(url, ns)
    ratios = [rr / nn for rr, nn in zip(rates["rerun"], rates["none"], strict=True)]
    ratios_f = [ff / nn for ff, nn in zip(rates["follow"], rates["none"], strict=True)]
    return {
        "seconds_per_run": seconds,
        "in_flight": in_flight,
        "events_per_s": {m: [round(x, 1) for x in v] for m, v in rates.items()},
        "observer_cpu_us_per_event": {m: [round(x, 1) for x in v] for m, v in cpu_per_event.items()},
        "rollout_cpu_us_per_event": [round(x, 1) for x in work_per_event],
        "observer_cpu_share": {m: [round(x, 3) for x in v] for m, v in share.items()},
        "median_observer_cpu_share": {m: round(statistics.median(v), 3) for m, v in share.items()},
        "ratio_rerun_to_none": [round(x, 3) for x in ratios],
        "median_ratio_rerun_to_none": round(statistics.median(ratios), 3),
        "median_ratio_follow_to_none": round(statistics.median(ratios_f), 3),
    }


def server_cpu(url: str) -> float:
    """CPU seconds the store server has used (user + system), from INFO."""
    r = redis.Redis.from_url(url)
    info = r.info("cpu")
    r.close()
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def run_feed_cost(url: str, script: list[str], seconds: float) -> dict[str, Any]:
    """The road not taken: what a notification feed for observers (an XADD to a capped stream
    at the end of the append script) would cost the hot path. Appends/s of the append script as
    it is and with that XADD, one event per call, alternated in 0.2 s slices."""
    from importlib.resources import files

    from p2e.events import event_adapter
    from p2e.store import EventLog
    from p2e.store.log import append_call

    lua = files("p2e.store").joinpath("lua", "append.lua").read_text()
    tail = "return {len, seq}"
    xadd = "redis.call('XADD', KEYS[4], 'MAXLEN', '~', 10000, '*', 'c', KEYS[3], 'b', ARGV[3], 'n', seq)\n"
    ns = f"p2eobsbench-{uuid.uuid4().hex[:8]}"
    log = EventLog(url, ns)
    scripts = {
        "as_is": log.r.register_script(lua),
        "with_xadd": log.r.register_script(lua.replace(tail, xadd + tail)),
    }
    event = event_adapter.validate_json(script[-1])  # the root's answer: a typical reply
    counts = dict.fromkeys(scripts, 0)
    spent = dict.fromkeys(scripts, 0.0)
    cids = {m: log.create_conversation("planner").id for m in scripts}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for mode, fn in scripts.items():
            keys, args = append_call(log.keys, cids[mode], "main", [event], None)
            keys = [*keys, f"{ns}:feed"]
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < 0.2:
                fn(keys=keys, args=args)
                counts[mode] += 1
            spent[mode] += time.perf_counter() - t0
    rates = {m: counts[m] / spent[m] for m in scripts}
    log.close()
    delete_ns(url, ns)
    return {
        "appends_per_s": {m: round(v, 1) for m, v in rates.items()},
        "ratio_with_xadd_to_as_is": round(rates["with_xadd"] / rates["as_is"], 3),
    }


def run_redact(script: list[str], n: int = 20000) -> dict[str, Any]:
    from p2e.redact import Redactor

    r = Redactor()
    raws = [s.encode() for s in script]
    t = time.perf_counter()
    for i in range(n):
        r.data(raws[i % len(raws)])
    per = (time.perf_counter() - t) / n
    return {
        "us_per_event": round(per * 1e6, 2),
        "mean_event_bytes": round(statistics.fmean(map(len, raws)), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="Redis/Valkey URL; default: an embedded Valkey, stopped after")
    ap.add_argument("--quick", action="store_true", help="short runs: a smoke test of ~20 s")
    ap.add_argument("--rate", type=float, default=500.0, help="events/s of the paced writer (lag)")
    ap.add_argument("--seconds", type=float, default=None, help="length of each run (default 10, quick 3)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds of the cost runs (default 3, quick 1)")
    ap.add_argument("--in-flight", type=int, default=8, help="episodes in flight in the cost runs")
    ap.add_argument(
        "--nice", type=int, default=None, help="observer thread niceness (default: the product's)"
    )
    args = ap.parse_args()
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    rounds = args.rounds or (1 if args.quick else 3)
    from p2e.obs.observer import OBSERVER_NICE

    args.nice = OBSERVER_NICE if args.nice is None else args.nice
    import rerun

    load0 = os.getloadavg()
    t0 = time.time()
    with server(args.url, "p2e-obsbench-") as (url, source, _, _), tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ns = f"p2eobsbench-{uuid.uuid4().hex[:8]}"
        script = demo_script(url, ns)
        delete_ns(url, ns)
        r = redis.Redis.from_url(url)
        info = r.info("server")
        r.close()
        lag = run_lag(url, script, args.rate, seconds, tmp, args.nice)
        cost = run_cost(url, seconds, rounds, args.in_flight, tmp, args.nice)
        redact = run_redact(script)
        feed = run_feed_cost(url, script, seconds)
    lagr = lag["runs"]["rerun"]["lag_ms"]
    version = info.get("valkey_version") or info.get("redis_version")
    print(
        json.dumps(
            {
                "bench": "obs",
                "conditions": {
                    "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0)),
                    "wall_s": round(time.time() - t0, 1),
                    "cpus": os.cpu_count(),
                    "loadavg_start": [round(x, 2) for x in load0],
                    "loadavg_end": [round(x, 2) for x in os.getloadavg()],
                    "python": platform.python_version(),
                    "rerun_sdk": rerun.__version__,
                    "server": f"{info.get('server_name', 'redis')} {version}",
                    "server_source": source,
                    "observer_nice": args.nice,
                    "note": "shared 2-core machine: other engineers' tests may run at the same time",
                },
                "targets": {
                    "lag_p99_under_1s_at_500_per_s": lagr["p99"] < 1000,
                    "rerun_keeps_95pct_of_throughput": cost["median_ratio_rerun_to_none"] >= 0.95,
                },
                "lag": lag,
                "cost": cost,
                "redact": redact,
                "feed": feed,
            }
        )
    )


if __name__ == "__main__":
    sys.exit(main())
