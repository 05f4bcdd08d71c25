"""Benchmark of the embedded ledger: transfers/s from concurrent clients, and `verify` time.

  transfers : C client processes (default 8, like the floor) each paying for --seconds through
              `EmbeddedLedger.transfer` (validation, fingerprint, one `transfer.lua` EVALSHA,
              the receipt built from its short answer), one payment in flight per client. Two
              mixes: random payer and payee among 1,000 funded wallets, and every client paying
              from ONE hot wallet. Also one client alone. After the runs `verify` must pass (exit
              1 otherwise). Target: >= 5,000 transfers/s from concurrent clients. With each rate,
              the CPU per transfer (µs): the clients' (process time), the server's in all (INFO
              cpu) and inside the script (EVALSHA's usec per call) -- on this 2-core machine the
              rate is about 2 cores / the CPU per transfer, so these say where the time goes.
  verify    : the journal is filled to 100,000 entries (pipelined transfer scripts), then
              `verify()` is timed (median of --verify-runs): hash chain recomputed, every entry
              replayed, balances and totals compared. Target: <= 5 s.
  floor     : the floor's bare Lua transfer (two keys and an idempotency key, the script of
              `../shared/bench/redis_floor.py`) driven by the same client harness, interleaved
              with the p2e measurements in --rounds slices (ledger, floor, ledger, floor, ...), so
              the ratio is little exposed to this shared machine's drift; and, unless --no-floor,
              `redis_floor.py` itself run afterwards against the same server.

Server: --url URL, else an embedded Valkey started with p2e.store.server.ensure_embedded in a
temporary P2E home (AOF on, appendfsync everysec) and stopped afterwards. Everything is written
under a unique namespace whose keys are deleted at the end.

Usage: python bench/ledger_bench.py [--url URL] [--quick] [--clients C] [--seconds S] [--no-floor].
Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

import redis
from benchlib import SHARED_BENCH, server

from p2e.ledger import EmbeddedLedger, InsufficientFunds, units
from p2e.ledger.base import fingerprint, transfer_fingerprint
from p2e.ledger.embedded import _body

FLOOR = SHARED_BENCH / "redis_floor.py"
WALLETS = 1000
FLOOR_LUA = """
local done = redis.call('GET', KEYS[3])
if done then return done end
local amt = tonumber(ARGV[1])
local bal = tonumber(redis.call('GET', KEYS[1]) or '0')
local res
if bal < amt then
  res = 'insufficient'
else
  redis.call('DECRBY', KEYS[1], amt)
  redis.call('INCRBY', KEYS[2], amt)
  res = 'ok'
end
redis.call('SET', KEYS[3], res, 'EX', ARGV[2])
return res
"""


def _client(url: str, ns: str, mode: str, seconds: float, seed: int, go: Any, q: Any) -> None:
    """One client, one payment in flight: `random` / `hot` through EmbeddedLedger.transfer,
    `floor` the bare floor script through redis-py."""
    led = EmbeddedLedger(url, ns)
    led.r.ping()
    sha = led.r.script_load(FLOOR_LUA)
    rnd = random.Random(seed)
    names = [f"w{i}" for i in range(WALLETS)]
    go.wait()
    done = refused = 0
    c0 = time.process_time()
    t0 = time.monotonic()
    deadline = t0 + seconds
    while time.monotonic() < deadline:
        if mode == "floor":
            a, b = rnd.sample(range(WALLETS), 2)
            keys = [f"{ns}:floor:acct:{a}", f"{ns}:floor:acct:{b}", f"{ns}:floor:idem:{uuid.uuid4().hex}"]
            led.r.evalsha(sha, 3, *keys, rnd.randint(1, 100), 3600)
            done += 1
            continue
        payer = "hot" if mode == "hot" else rnd.choice(names)
        payee = rnd.choice(names)
        if payee == payer:
            continue
        try:
            cid = f"{mode}-{seed}-{uuid.uuid4().hex[:12]}"
            led.transfer(payer, payee, rnd.randint(1, 10**10), reason="bench", command_id=cid)
            done += 1
        except InsufficientFunds:
            refused += 1
    q.put((done, refused, t0, time.monotonic(), time.process_time() - c0))
    led.close()


def _server_cpu(r: redis.Redis) -> tuple[float, int, int]:
    """The server's CPU seconds (user + system, every thread), and EVALSHA's calls and usec."""
    cpu = r.info("cpu")
    ev = r.info("commandstats").get("cmdstat_evalsha", {})
    return cpu["used_cpu_user"] + cpu["used_cpu_sys"], ev.get("calls", 0), ev.get("usec", 0)


def transfers(url: str, ns: str, mode: str, clients: int, seconds: float, seed: int = 0) -> dict[str, Any]:
    """One measurement; with the CPU it cost: the clients' (process time: Python, redis-py and
    their system calls), the server's in the scripts (commandstats) and in all (INFO cpu: the
    scripts, the network, the AOF), each in total seconds and calls (the server's counters are
    read before and after, not reset, so a shared server's other users add to them)."""
    r = redis.Redis.from_url(url)
    ctx = mp.get_context("fork")
    go, q = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_client, args=(url, ns, mode, seconds, seed * 1000 + i, go, q))
        for i in range(clients)
    ]
    for p in procs:
        p.start()
    time.sleep(0.5)  # every client connected and waiting
    cpu0, calls0, usec0 = _server_cpu(r)
    go.set()
    res = [q.get() for _ in procs]
    cpu1, calls1, usec1 = _server_cpu(r)
    for p in procs:
        p.join()
    r.close()
    done = sum(x[0] for x in res)
    wall = max(x[3] for x in res) - min(x[2] for x in res)
    return {
        "transfers": done,
        "refused": sum(x[1] for x in res),
        "wall_s": round(wall, 3),
        "client_cpu_s": sum(x[4] for x in res),
        "server_cpu_s": cpu1 - cpu0,
        "script_calls": calls1 - calls0,
        "script_usec": usec1 - usec0,
    }


def interleaved(
    url: str, ns: str, modes: list[str], clients: int, seconds: float, rounds: int
) -> dict[str, Any]:
    """Each mode for `seconds / rounds` in turn, `rounds` times; per mode the total rate, and
    the CPU per transfer: the clients' and the server's (µs), and the server's inside the script
    (EVALSHA's usec per call)."""
    keys = ("transfers", "wall_s", "refused", "client_cpu_s", "server_cpu_s", "script_calls", "script_usec")
    tot = {m: dict.fromkeys(keys, 0) for m in modes}
    for r in range(rounds):
        for m in modes:
            res = transfers(url, ns, m, clients, seconds / rounds, seed=r * 10 + modes.index(m))
            for k in keys:
                tot[m][k] += res[k]
    out = {}
    for m, t in tot.items():
        n = max(1, t["transfers"])
        out[m] = {
            "transfers": t["transfers"],
            "refused": t["refused"],
            "per_s": round(t["transfers"] / t["wall_s"], 1),
            "client_cpu_us_per_transfer": round(t["client_cpu_s"] / n * 1e6, 1),
            "server_cpu_us_per_transfer": round(t["server_cpu_s"] / n * 1e6, 1),
            "script_us_per_call": round(t["script_usec"] / max(1, t["script_calls"]), 1),
        }
    return out


def fill(led: EmbeddedLedger, target: int, batch: int = 500) -> float:
    """Append transfers until the journal holds `target` entries; pipelined scripts, for speed."""
    t0 = time.perf_counter()
    k = led.keys
    script = led._scripts["transfer"]
    rnd = random.Random(7)
    n = led.metrics().entries
    i = 0
    while n < target:
        p = led.r.pipeline(transaction=False)
        todo = min(batch, target - n)
        for _ in range(todo):
            a, b = rnd.sample(range(WALLETS), 2)
            payer, payee, amount, cid = f"w{a}", f"w{b}", rnd.randint(1, 10**10), f"fill-{i}"
            i += 1
            body = _body(ts=time.time(), kind="transfer", cid=cid, by=payer, amount=amount, reason="fill")
            fp = transfer_fingerprint(payer, payee, amount, "fill")
            script(  # transfer.lua takes the entry's known fields without the braces
                keys=[*k.common, k.history(payer), k.history(payee), k.spent(payer)],
                args=[cid, fp, body[1:-1], payer, payee, str(amount), "", ""],
                client=p,
            )
        p.execute()
        n += todo
    return time.perf_counter() - t0


def floor(url: str, n: int) -> dict[str, Any] | None:
    if not FLOOR.exists():
        return None
    env = {**os.environ, "REDIS_URL": url}
    out = subprocess.run(
        [sys.executable, str(FLOOR), str(n)], env=env, capture_output=True, text=True, timeout=300
    )
    if out.returncode != 0:
        return {"error": out.stderr.strip()[-300:]}
    res = json.loads(out.stdout)
    srv = next(v for k, v in res.items() if k.startswith("server["))
    return {
        "lua_transfer_1client_per_s": srv["lua_transfer_1client_ops_per_s"],
        "lua_transfer_8clients_per_s": srv["lua_transfer_8clients_ops_per_s"],
        "lua_transfer_1client_p50_us": srv["lua_transfer_1client_p50_us"],
    }


def run(url: str, args: argparse.Namespace) -> dict[str, Any]:
    ns = f"p2ebench-ledger-{uuid.uuid4().hex[:8]}"
    led = EmbeddedLedger(url, ns)
    out: dict[str, Any] = {}
    try:
        led.initialize()
        for i in range(WALLETS):
            led.open_wallet(f"w{i}")
        led.open_wallet("hot")
        p = led.r.pipeline(transaction=False)
        for i in range(WALLETS):
            led._scripts["mint"](
                keys=[*led.keys.common, led.keys.history(f"w{i}")],
                args=[
                    f"fund-{i}",
                    fingerprint(kind="mint", i=i),
                    _body(
                        ts=time.time(),
                        kind="mint",
                        cid=f"fund-{i}",
                        by="issuer",
                        amount=units(10**4),
                        reason="bench",
                    ),
                    f"w{i}",
                    str(units(10**4)),
                    str(10**18),
                ],
                client=p,
            )
        p.execute()
        led.mint("hot", units(10**6), reason="bench", command_id="fund-hot")
        p = led.r.pipeline(transaction=False)
        for i in range(WALLETS):
            p.set(f"{ns}:floor:acct:{i}", 10**12)
        p.execute()
        one = interleaved(url, ns, ["random", "floor"], 1, args.seconds, args.rounds)
        out["one_client"] = {"ledger": one["random"], "floor": one["floor"]}
        out["clients"] = args.clients
        many = interleaved(url, ns, ["random", "hot", "floor"], args.clients, args.seconds, args.rounds)
        out["random_wallets"], out["one_hot_wallet"], out["floor_clients"] = (
            many["random"],
            many["hot"],
            many["floor"],
        )
        out["ratios_interleaved"] = {
            "random_wallets_vs_floor": round(many["random"]["per_s"] / many["floor"]["per_s"], 2),
            "one_hot_wallet_vs_floor": round(many["hot"]["per_s"] / many["floor"]["per_s"], 2),
            "one_client_vs_floor": round(one["random"]["per_s"] / one["floor"]["per_s"], 2),
        }
        rep = led.verify()
        out["verify_after_concurrent"] = {
            "ok": rep.ok,
            "entries": rep.entries,
            "seconds": round(rep.seconds, 3),
            "problems": list(rep.problems[:3]),
        }
        out["fill_s"] = round(fill(led, args.journal), 2)
        times = []
        for _ in range(args.verify_runs):
            rep = led.verify()
            times.append(rep.seconds)
        out["verify_journal"] = {
            "entries": rep.entries,
            "ok": rep.ok,
            "median_s": round(statistics.median(times), 3),
            "runs_s": [round(t, 3) for t in times],
            "entries_per_s": round(rep.entries / statistics.median(times)),
        }
        out["memory_bytes_per_entry"] = round(
            led.r.memory_usage(led.keys.journal, samples=0) / rep.entries, 1
        )
    finally:
        keys = list(led.r.scan_iter(match=f"{ns}:*", count=5000))
        for i in range(0, len(keys), 5000):
            led.r.unlink(*keys[i : i + 5000])
        led.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--url", help="a Redis/Valkey URL; default: a temporary embedded Valkey")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=3.0, help="per transfer measurement (split in rounds)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved slices of each measurement")
    ap.add_argument("--journal", type=int, default=100_000, help="entries in the journal verify reads")
    ap.add_argument("--verify-runs", type=int, default=3)
    ap.add_argument("--floor-n", type=int, default=20_000)
    ap.add_argument("--no-floor", action="store_true")
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.rounds, args.journal, args.verify_runs, args.floor_n = 1.0, 1, 10_000, 1, 2000
    with server(args.url, "p2e-ledger-bench-") as srv:
        url, source = srv.url, srv.source
        r = redis.Redis.from_url(url)
        info = r.info("server")
        cfg = {k: r.config_get(k).get(k) for k in ("appendonly", "appendfsync")}
        res = run(url, args)
        fl = None if args.no_floor else floor(url, args.floor_n)
    name = "valkey" if "valkey_version" in info else "redis"
    out: dict[str, Any] = {
        "bench": "ledger",
        "server": f"{name} {info.get('valkey_version') or info.get('redis_version')}",
        "source": source,
        **cfg,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_avg_start": os.getloadavg()[0],
        **res,
        "floor": fl,
    }
    if fl and "error" not in fl:
        out["ratios_to_redis_floor_py"] = {
            "random_wallets_vs_floor_8clients": round(
                res["random_wallets"]["per_s"] / fl["lua_transfer_8clients_per_s"], 2
            ),
            "one_client_vs_floor_1client": round(
                res["one_client"]["ledger"]["per_s"] / fl["lua_transfer_1client_per_s"], 2
            ),
        }
    out["targets"] = {
        "transfers_per_s_ge_5000": res["random_wallets"]["per_s"] >= 5000
        and res["one_hot_wallet"]["per_s"] >= 5000,
        "verify_after_concurrent_ok": res["verify_after_concurrent"]["ok"],
        "verify_100k_le_5s": res["verify_journal"]["ok"] and res["verify_journal"]["median_s"] <= 5.0,
    }
    print(json.dumps(out))
    if not (res["verify_after_concurrent"]["ok"] and res["verify_journal"]["ok"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
