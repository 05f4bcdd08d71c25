"""Benchmark of p2e's branching event log (p2e.store.EventLog) on a Redis-protocol server.

Measures, from ONE Python process, with realistic AgentReply events (~250 chars of text, ~360
bytes encoded):

  append : events/s through `EventLog.append_to` (the hot path `Conversation` uses, with
           `expected=` set), (a) one event per call, (b) batches of 100 per call.
           Target: >= 5,000 events/s.
  history: `log.read(info)` (full history, parsed into pydantic events) of the 100th fork of a
           fork line (each fork taken at its parent's end, ~100 own events, 10,000 events in
           total), p50/p99 over ~30 reads; and of one unforked 10,000-event branch. The same
           reads split into fetch (the pipelined LRANGEs alone) and decode (pydantic alone).
           Target: <= 50 ms.
  fork   : p50 of `log.fork(...)` at the end of branches of 10, 1,000 and 100,000 events (should
           be flat: O(1) in history length), plus forking the tip of the 100-deep fork line.
  memory : MEMORY USAGE (SAMPLES 0) summed over every key of a namespace holding one
           10,000-event branch, divided by the event count, beside the average encoded event size;
           then again after 100 forks of that branch with a few own events each.

Server: --url URL, else an embedded Valkey started with p2e.store.server.ensure_embedded in a
temporary P2E home (AOF on, appendfsync everysec) and stopped afterwards. Everything is written
under a unique namespace whose keys are deleted at the end, so an existing server's data is left
alone.

Usage: python bench/store_bench.py [--url URL] [--quick] [knobs, see --help]. Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import uuid
from collections.abc import Callable

import redis
from benchlib import delete_ns, ns_keys, server, server_info

from p2e.events import AgentReply, Event, encode, events_adapter
from p2e.store.log import BranchInfo, EventLog

TEXT = (
    "It is 22C and sunny in Paris this afternoon. The forecast for the rest of the week shows "
    "light rain on Thursday and clearer skies by the weekend; I checked three sources and they "
    "agree within a degree, so the answer for the user is: pack a light jacket and an umbrella. "
)

FULL = {
    "append_single": 20_000,  # events, or --max-s seconds, whichever first
    "append_batch": 100_000,
    "fork_line": 100,  # forks in the line; the last one is read
    "per_fork": 100,  # own events per fork
    "reads": 30,
    "fork_sizes": (10, 1_000, 100_000),
    "fork_samples": 50,
    "mem_events": 10_000,
    "mem_forks": 100,
    "mem_fork_own": 3,
}
QUICK = {
    "append_single": 500,
    "append_batch": 2_000,
    "fork_line": 10,
    "per_fork": 20,
    "reads": 5,
    "fork_sizes": (10, 100, 1_000),
    "fork_samples": 10,
    "mem_events": 1_000,
    "mem_forks": 10,
    "mem_fork_own": 3,
}


# --- helpers ------------------------------------------------------------------------------------


def make_events(n: int, text_chars: int) -> list[Event]:
    """n distinct AgentReply events (different text start and timestamp), seq unset."""
    body = (TEXT * (text_chars // len(TEXT) + 2))[: text_chars + 64]
    t0 = 1_764_072_000.0
    return [
        AgentReply(agent="worker", text=body[k : k + text_chars], model="scripted", ts=t0 + i * 0.001)
        for i in range(n)
        for k in (i % 64,)
    ]


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def ms(x: float) -> float:
    return round(x * 1e3, 3)


def timed(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def fill(log: EventLog, cid: str, branch: str, pool: list[Event], n: int, length: int = 0) -> int:
    """Append n events to a branch in batches of 1,000 (setup, not measured); the new length."""
    done = 0
    while done < n:
        k = min(1_000, n - done)
        batch = [pool[(done + j) % len(pool)] for j in range(k)]
        log.append_to(cid, branch, batch, expected=length + done)
        done += k
    return length + n


def role(key: bytes) -> str:
    if key.endswith(b":ev"):
        return "event_lists"
    if b":ix:" in key:
        return "index_lists"
    return "records"  # conversation/branch hashes, zsets, names


def ns_bytes(r: redis.Redis, ns: str) -> tuple[int, int, dict[str, int]]:
    """(sum of MEMORY USAGE over the namespace's keys, key count, bytes by role).
    SAMPLES 0 counts every element of a list or hash (exact rather than sampled)."""
    keys = ns_keys(r, ns)
    p = r.pipeline(transaction=False)
    for k in keys:
        p.execute_command("MEMORY", "USAGE", k, "SAMPLES", 0)
    by_role: dict[str, int] = {"event_lists": 0, "index_lists": 0, "records": 0}
    for k, b in zip(keys, p.execute(), strict=True):
        by_role[role(k)] += int(b or 0)
    return sum(by_role.values()), len(keys), by_role


# --- measurements -------------------------------------------------------------------------------


def bench_append(log: EventLog, pool: list[Event], batch: int, n: int, max_s: float) -> dict[str, object]:
    """p2e appends, interleaved in ~0.1 s slices with the raw floor on the same connection: RPUSH of
    the same encoded bytes, one per round trip (batch 1) or 100 pipelined (batch 100), as in
    shared/bench/redis_floor.py. Interleaving makes the ratio robust to the machine's drift."""
    r = log.r
    cid = log.create_conversation("worker").id
    raw_key = f"{log.keys.ns}:rawfloor:{batch}"
    encoded = [encode(e) for e in pool]
    length = fill(log, cid, "main", pool, min(200, n))  # warm-up (script cached, connection up)
    r.rpush(raw_key, encoded[0])
    start_len = length
    done = {"p2e": 0, "raw": 0}
    spent = {"p2e": 0.0, "raw": 0.0}

    def p2e_step(i: int) -> None:
        nonlocal length
        log.append_to(cid, "main", [pool[(i + j) % len(pool)] for j in range(batch)], expected=length)
        length += batch

    def raw_step(i: int) -> None:
        if batch == 1:
            r.rpush(raw_key, encoded[i % len(pool)])
            return
        p = r.pipeline(transaction=False)
        for j in range(batch):
            p.rpush(raw_key, encoded[(i + j) % len(pool)])
        p.execute()

    steps = {"p2e": p2e_step, "raw": raw_step}
    while any(done[k] < n and spent[k] < max_s for k in done):
        for k, step in steps.items():
            if done[k] >= n or spent[k] >= max_s:
                continue
            t = time.perf_counter()
            stop = t + 0.1
            now = t
            while done[k] < n and now < stop:
                step(done[k])
                done[k] += batch
                now = time.perf_counter()
            spent[k] += now - t
    stored = log.branch(cid, "main").length
    assert stored == length == start_len + done["p2e"], (stored, length, done)
    assert r.llen(raw_key) == 1 + done["raw"]
    r.unlink(raw_key)
    p2e_rate, raw_rate = done["p2e"] / spent["p2e"], done["raw"] / spent["raw"]
    return {
        "events_per_s": round(p2e_rate, 1),
        "events": done["p2e"],
        "calls_per_s": round(p2e_rate / batch, 1),
        "raw_rpush_events_per_s": round(raw_rate, 1),
        "ratio_to_raw_rpush": round(p2e_rate / raw_rate, 3),
    }


def bench_history(
    log: EventLog, pool: list[Event], forks: int, per_fork: int, reads: int
) -> dict[str, object]:
    r = log.r
    cid = log.create_conversation("worker").id
    # A fork line: main is empty; fork-1 is forked from main at 0, fork-k from fork-(k-1) at its end;
    # each fork gets per_fork own events, so fork-`forks` holds forks * per_fork events in all.
    parent, length = "main", 0
    for k in range(1, forks + 1):
        name = f"f{k}"
        log.fork(cid, parent, length, name)
        length = fill(log, cid, name, pool[(k * 7) % 50 :], per_fork, length)
        parent = name
    deep = log.branch(cid, parent)
    assert deep.length == forks * per_fork and len(deep.segments) == forks, deep
    flat_cid = log.create_conversation("worker").id
    fill(log, flat_cid, "main", pool, forks * per_fork)
    flat = log.branch(flat_cid, "main")

    def fetch(info: BranchInfo) -> list[list[bytes]]:  # what read() sends, without the decode
        p = r.pipeline(transaction=False)
        for s in info.segments:
            p.lrange(log.keys.events(info.conversation, s.branch), s.lo - s.offset, s.hi - s.offset - 1)
        return p.execute()

    out: dict[str, object] = {"events": deep.length, "fork_depth": forks, "segments": len(deep.segments)}
    infos = {"fork_line": deep, "unforked": flat}
    joined = {}
    for label, info in infos.items():
        got = log.read(info)  # warm-up, and check
        assert len(got) == info.length and got[-1].seq == info.length - 1
        joined[label] = b"[" + b",".join(x for part in fetch(info) for x in part) + b"]"
    # round-robin over (branch x what), so that the machine's drift hits every figure alike
    samples: dict[tuple[str, str], list[float]] = {}
    for _ in range(reads):
        for label, info in infos.items():
            for what, fn in (
                ("read", lambda info=info: log.read(info)),
                ("fetch", lambda info=info: fetch(info)),
                ("decode", lambda j=joined[label]: events_adapter.validate_json(j)),
            ):
                samples.setdefault((label, what), []).extend(timed(fn, 1))
    for label in infos:
        read = samples[(label, "read")]
        out[label] = {
            "read_p50_ms": ms(pct(read, 0.5)),
            "read_p99_ms": ms(pct(read, 0.99)),
            "read_min_ms": ms(min(read)),
            "fetch_p50_ms": ms(pct(samples[(label, "fetch")], 0.5)),
            "decode_p50_ms": ms(pct(samples[(label, "decode")], 0.5)),
            "reads": reads,
        }
    # forking the tip of the deep line (lineage has `forks` segments): fork cost vs depth
    ft = []
    for j in range(20):
        t = time.perf_counter()
        log.fork(cid, deep.name, deep.length, f"tip{j}")
        ft.append(time.perf_counter() - t)
    out["fork_of_deep_tip_p50_ms"] = ms(pct(ft, 0.5))
    return out


def bench_fork(log: EventLog, pool: list[Event], sizes: tuple[int, ...], samples: int) -> dict[str, object]:
    """Forks at the end of branches of each size, taken round-robin across the sizes (so that the
    machine's drift hits every size alike)."""
    cids = {}
    for n in sizes:
        cids[n] = log.create_conversation("worker").id
        fill(log, cids[n], "main", pool, n)
        log.fork(cids[n], "main", n, "warm")
    ts: dict[int, list[float]] = {n: [] for n in sizes}
    for j in range(samples):
        for n in sizes:
            t = time.perf_counter()
            log.fork(cids[n], "main", n, f"b{j}")
            ts[n].append(time.perf_counter() - t)
    out: dict[str, object] = {"samples": samples}
    for n in sizes:
        out[f"len_{n}"] = {"p50_ms": ms(pct(ts[n], 0.5)), "p99_ms": ms(pct(ts[n], 0.99))}
    out["p50_largest_over_smallest"] = round(pct(ts[sizes[-1]], 0.5) / pct(ts[sizes[0]], 0.5), 2)
    return out


def bench_memory(url: str, ns: str, pool: list[Event], n: int, forks: int, own: int) -> dict[str, object]:
    log = EventLog(url, ns)
    try:
        cid = log.create_conversation("worker").id
        fill(log, cid, "main", pool, n)
        enc = sum(len(encode(pool[i % len(pool)])) for i in range(n)) / n
        before, keys_before, by_role = ns_bytes(log.r, ns)
        for k in range(forks):
            name = f"fk{k}"
            log.fork(cid, "main", n, name)
            fill(log, cid, name, pool[k % 50 :], own, n)
        after, keys_after, by_role_after = ns_bytes(log.r, ns)
        per_event = before / n
        own_total = forks * own
        # what the forks cost beyond storing their own events, per event they inherit
        overhead = after - before - own_total * per_event
        return {
            "events": n,
            "avg_encoded_event_bytes": round(enc, 1),
            "bytes_per_event": round(per_event, 1),
            "bytes_per_event_over_encoded": round(per_event / enc, 3),
            "keys": keys_before,
            "bytes_per_event_by_role": {k: round(v / n, 1) for k, v in by_role.items()},
            "forks": forks,
            "own_events_per_fork": own,
            "bytes_after_forks": after,
            "bytes_per_event_after_forks": round(after / (n + own_total), 1),
            "keys_after_forks": keys_after,
            "bytes_after_forks_by_role": by_role_after,
            "fork_overhead_bytes_per_fork": round(overhead / forks, 1),
            "fork_overhead_bytes_per_inherited_event": round(overhead / (forks * n), 4),
        }
    finally:
        delete_ns(log.r, ns)
        log.close()


def run(url: str, args: argparse.Namespace, sizes: dict) -> dict[str, object]:
    ns = f"p2ebench-{uuid.uuid4().hex[:10]}"
    log = EventLog(url, ns)
    pool = make_events(1_000, args.text_chars)
    out: dict[str, object] = server_info(log.r)
    out["namespace"] = ns
    out["avg_encoded_event_bytes"] = round(sum(len(encode(e)) for e in pool) / len(pool), 1)
    try:
        t = time.perf_counter()
        n1, n100 = args.n_single or sizes["append_single"], args.n_batch or sizes["append_batch"]
        out["append_batch1"] = bench_append(log, pool, 1, n1, args.max_s)
        out["append_batch100"] = bench_append(log, pool, 100, n100, args.max_s)
        reads = args.reads or sizes["reads"]
        out["history"] = bench_history(log, pool, sizes["fork_line"], sizes["per_fork"], reads)
        out["fork"] = bench_fork(log, pool, sizes["fork_sizes"], sizes["fork_samples"])
        out["memory"] = bench_memory(
            url, ns + "-mem", pool, sizes["mem_events"], sizes["mem_forks"], sizes["mem_fork_own"]
        )
        out["elapsed_s"] = round(time.perf_counter() - t, 1)
    finally:
        out["keys_deleted"] = delete_ns(log.r, ns)
        log.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="Redis/Valkey URL; default: start an embedded Valkey and stop it after")
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke test, a few seconds)")
    ap.add_argument("--n-single", type=int, help="events appended one per call (default 20,000)")
    ap.add_argument("--n-batch", type=int, help="events appended 100 per call (default 100,000)")
    ap.add_argument("--max-s", type=float, default=3.0, help="time box of each append measurement")
    ap.add_argument("--reads", type=int, help="history reads timed (default 30)")
    ap.add_argument("--text-chars", type=int, default=250, help="text length of each AgentReply")
    args = ap.parse_args()
    sizes = QUICK if args.quick else FULL
    out: dict[str, object] = {
        "bench": "p2e_store",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": args.quick,
        "python": platform.python_version(),
        "client": f"redis-py {redis.__version__}",
        "hiredis": bool(getattr(redis.utils, "HIREDIS_AVAILABLE", False)),
        "cpus": os.cpu_count(),
    }
    with server(args.url) as (url, source, _, _):
        out["source"] = source
        out.update(run(url, args, sizes))
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
