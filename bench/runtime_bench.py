"""Benchmark of p2e's runtime (Supervisor and Agent Ray actors + the store), beside its floor.

Reference episode, the same as /work/shared/bench/ray_redis_floor.py: a `supervisor` agent (root)
delegates to a `worker`; the worker calls the built-in `weather` tool, then answers; the
supervisor answers. 4 model turns, 1 tool call; zero-latency `mock/bench` model (inline rules).
Stored per episode: user message, supervisor reply, worker reply, tool result, worker reply,
supervisor reply = 6 events in 5 appends (the worker's reply and its tool result are one append);
the count is checked from the store. A "step" is one model turn: one agent actor call and its
event appends; steps/s = 4 x episodes/s.

Measures (`p2e.api.init(...)` on a local Ray; every `send` returns only after every event of
the episode is acknowledged by the store):

  rtt       : bare `ray.get(actor.health.remote())` round trips, driver -> supervisor and
              driver -> agent actor (the floor of any driver -> actor call).
  ray_call  : a bare async actor -> actor call with AgentActor's options and a real StepRequest
              as argument (the callee returns it), 1 and 256 in flight: calls/s and CPU
              microseconds per call in caller and callee: what Ray alone costs per step here.
  idle_cpu  : CPU of every process while nothing runs (ms/s): the baseline of the CPU figures,
              and what other tenants of the machine use ("machine").
  one       : ONE conversation at a time: K episodes back to back, each one `send` (supervisor
              handle, `ray.get(sup.send.remote(cid, text))`) on a fresh conversation created
              before the timed region. steps/s, and per-step p50/p99 = episode time / 4 (the
              driver -> supervisor call and the user message's append are spread over the 4
              steps, which the floor's in-actor per-step figure does not carry). Also: the same
              through `Chat.send` (the public API: one more store read per send), and repeated
              sends on ONE conversation (its root frame, hence every request, grows by 4 messages
              per episode).
  many      : 200 conversations, R rounds; each round fires one `send` per conversation at once
              (`rt.supervisor_for(cid).send.remote`) and waits for all; aggregate steps/s, with
              supervisors=1 and supervisors=2 (one Agent actor per agent either way). CPU
              milliseconds per step of every process involved (psutil; also for `one`), of the
              whole machine, and the difference (other tenants).
  profile   : py-spy (sampling, --nonblocking) on the supervisor and both agent actors while the
              200-conversation load runs (not during the timed runs). Samples whose leaf is a
              wait (selector, idle pool thread, Ray's main loop, a sync Redis reply) are counted
              apart; of the busy ones: self time by package, top self functions, top inclusive
              functions (p2e's, and all). The raw stacks are left in a temp dir (printed).
  micro     : the pieces of a step timed in this process, without Ray: the episode on the same
              Driver + AgentRunners in one event loop (store included), an agent step, persona
              rendering, StepRequest construction and pickling, the machine + transcript fold,
              event encoding.
  memory    : supervisor process RSS before and after hosting 1,000 more idle conversations that
              each did one episode (twice: 2 x 1,000), per conversation; and the message text
              those conversations hold (in their events, and in the transcript the supervisor
              keeps), to derive the figure "not counting message text".
  floor     : ray_redis_floor.py run in the same sitting (after this process's Ray is shut down),
              against the same server (REDIS_URL), and the ratios p2e / floor.

Store: --url URL, else an embedded Valkey started with p2e.store.server.ensure_embedded in a
temporary P2E home (AOF on, appendfsync everysec), stopped afterwards. Namespaces are unique per
run and their keys are deleted at the end.

Usage: python bench/runtime_bench.py [--url URL] [--quick] [knobs, see --help]. Prints ONE JSON
line. A full run takes about 2-3 minutes on 2 cores (half of it the floor).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pickle
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import ray
import redis
from benchlib import SHARED_BENCH, delete_ns, server, server_info

import p2e.api
from actors.supervisor import agent_actor_name, supervisor_actor_name
from p2e.agents import load_team
from p2e.agents.persona import render_persona
from p2e.agents.prompt import delegate_spec
from p2e.events import AgentReply, ToolResult, UserMessage, encode
from p2e.runtime.agent_step import AgentRunner
from p2e.runtime.driver import Driver
from p2e.runtime.steps import StepRequest
from p2e.store.aio import GroupCommit
from p2e.store.log import EventLog, new_id
from p2e.tools import REGISTRY
from p2e.transcript import Transcript

FLOOR = str(SHARED_BENCH / "ray_redis_floor.py")
TEXT = "What is the weather in Paris?"
STEPS = 4  # model turns per episode
EVENTS = 6  # stored events per episode, the user message included

AGENTS = """\
agents:
  supervisor:
    description: answers the user
    model: mock/bench
    persona: "You are supervisor."
    can_delegate_to: [worker]
  worker:
    description: looks the weather up
    model: mock/bench
    persona: "You are worker."
    tools: [weather]
providers:
  mock:
    rules:
      bench:
        latency_ms: 0
        rules:
          - {agent: supervisor, role: user, delegate: {agent: worker, task: "{{ last }}"}}
          - {agent: worker, role: user, tool_calls: [{name: weather, arguments: {city: Paris}}]}
          - {agent: worker, role: tool, text: "Findings: {{ results | join('; ') }}"}
          - {agent: supervisor, role: tool, text: "{{ last }}"}
limits:
  max_steps: 1000000   # the default (64 replies per conversation) ends repeated sends early
"""

FULL = {
    "episodes": 500,  # one conversation, fresh conversation per episode
    "chat_api": 100,  # the same through Chat.send
    "same": 200,  # repeated sends on one conversation
    "conversations": 200,
    "rounds": 5,
    "rtt": 1000,
    "profile_s": 8.0,
    "micro": 100,
    "idle": 1000,
    "floor": 500,
}
QUICK = {
    "episodes": 40,
    "chat_api": 10,
    "same": 20,
    "conversations": 200,
    "rounds": 1,
    "rtt": 100,
    "profile_s": 0.0,
    "micro": 10,
    "idle": 100,
    "floor": 100,
}


# --- helpers ------------------------------------------------------------------------------------


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def ms(x: float) -> float:
    return round(x * 1e3, 3)


def us(x: float) -> float:
    return round(x * 1e6, 1)


def write_team(d: Path, placement: str = "actor") -> Path:
    """The team; with placement `supervisor` both agents run inside the supervisor process."""
    text = AGENTS
    if placement != "actor":
        text = text.replace("    model: mock/bench\n", f"    model: mock/bench\n    placement: {placement}\n")
    path = d / "agents.yaml"
    path.write_text(text)
    return path


def actor_pids() -> dict[str, int]:
    """Ray actor name -> pid of the live actors (from the GCS; works without the dashboard)."""
    from ray._private import state

    return {
        a["Name"]: int(a["Pid"])
        for a in state.actors().values()
        if a.get("State") == "ALIVE" and a.get("Name") and a.get("Pid")
    }


def processes(ns: str, supervisors: int, store_pid: int | None) -> dict[str, psutil.Process]:
    pids = actor_pids()
    out = {f"supervisor{i}": pids[supervisor_actor_name(ns, i)] for i in range(supervisors)}
    for agent in ("supervisor", "worker"):  # absent when the agents run inside the supervisor
        name = agent_actor_name(ns, agent, 0)
        if name in pids:
            out[f"agent_{agent}"] = pids[name]
    out["driver"] = os.getpid()
    if store_pid:
        out["store"] = store_pid
    for p in psutil.Process().children(recursive=True):  # this driver's Ray, not another one
        with contextlib.suppress(psutil.Error):
            if p.name() in ("raylet", "gcs_server"):
                out[p.name()] = p.pid
    return {k: psutil.Process(v) for k, v in out.items()}


def cpu_seconds(procs: dict[str, psutil.Process]) -> dict[str, float]:
    out = {}
    for k, p in procs.items():
        try:
            t = p.cpu_times()
            out[k] = t.user + t.system
        except psutil.Error:
            out[k] = 0.0
    busy = psutil.cpu_times()
    out["machine"] = sum(busy) - busy.idle - getattr(busy, "iowait", 0.0)
    return out


def cpu_per_step(before: dict[str, float], after: dict[str, float], steps: int) -> dict[str, float]:
    """CPU milliseconds per step of each process, ours in total, and the machine's."""
    per = {k: (after[k] - before[k]) * 1e3 / steps for k in before}
    ours = sum(v for k, v in per.items() if k != "machine")
    per["all_ours"] = ours
    per["machine_other"] = per["machine"] - ours  # other tenants of the machine, plus kernel
    return {k: round(v, 3) for k, v in per.items()}


def create(rt: p2e.api.Runtime, n: int, batch: int = 200) -> list[str]:
    """n conversations rooted at `supervisor`, created as `Runtime.chat` does (id chosen up
    front, created on its host), `batch` at a time."""
    cids: list[str] = []
    while len(cids) < n:
        ids = [new_id() for _ in range(min(batch, n - len(cids)))]
        ray.get([rt.supervisor_for(c).create.remote("supervisor", None, None, None, c) for c in ids])
        cids += ids
    return cids


def send_all(rt: p2e.api.Runtime, cids: list[str], batch: int | None = None) -> None:
    """One episode on each conversation, all at once (or `batch` at a time)."""
    batch = batch or len(cids)
    for i in range(0, len(cids), batch):
        part = cids[i : i + batch]
        results = ray.get([rt.supervisor_for(c).send.remote(c, TEXT) for c in part])
        check(results)


def check(results: list[Any]) -> None:
    bad = [r for r in results if r.status != "idle" or not (r.answer or "").startswith("Findings: ")]
    if bad:
        raise RuntimeError(f"{len(bad)} episodes did not end with the worker's findings: {bad[0]}")


def stored_lengths(log: EventLog, cids: list[str]) -> list[int]:
    p = log.r.pipeline(transaction=False)
    for c in cids:
        p.hget(log.keys.branch(c, "main"), "length")
    return [int(x) for x in p.execute()]


# --- measurements -------------------------------------------------------------------------------


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=3, concurrency_groups={"control": 1})
class Callee:
    """A bare async actor with AgentActor's options: returns its argument."""

    async def step(self, req: Any) -> Any:
        return req

    def pid(self) -> int:
        return os.getpid()


@ray.remote(num_cpus=0)
class Caller:
    """Calls `Callee.step` from an async actor, as the supervisor calls agents."""

    def __init__(self, callee: Any):
        self.callee = callee

    def pid(self) -> int:
        return os.getpid()

    async def run(self, req: Any, n: int, inflight: int) -> float:
        sem = asyncio.Semaphore(inflight)

        async def one() -> Any:
            async with sem:
                return await self.callee.step.remote(req)

        t = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return time.perf_counter() - t


def bench_ray_call(req: StepRequest, n: int) -> dict[str, object]:
    """What one actor -> actor call costs here, whatever p2e does around it: calls/s, and CPU
    microseconds per call in the caller and in the callee (arg: a real StepRequest)."""
    callee = Callee.remote()
    caller = Caller.remote(callee)
    pc = psutil.Process(ray.get(caller.pid.remote()))
    pe = psutil.Process(ray.get(callee.pid.remote()))
    ray.get(caller.run.remote(req, 500, 64))
    out: dict[str, object] = {}
    for inflight in (1, 256):
        k = n if inflight == 1 else 4 * n
        c0, e0 = sum(pc.cpu_times()[:2]), sum(pe.cpu_times()[:2])
        dt = ray.get(caller.run.remote(req, k, inflight))
        c1, e1 = sum(pc.cpu_times()[:2]), sum(pe.cpu_times()[:2])
        out[f"ray_call_inflight{inflight}_per_s"] = round(k / dt, 1)
        out[f"ray_call_inflight{inflight}_caller_cpu_us"] = us((c1 - c0) / k)
        out[f"ray_call_inflight{inflight}_callee_cpu_us"] = us((e1 - e0) / k)
    ray.kill(caller)
    ray.kill(callee)
    return out


def bench_idle_cpu(ns: str, store_pid: int | None, seconds: float = 2.0) -> dict[str, object]:
    """CPU the processes burn while nothing runs (ms per second): the baseline under the
    per-step CPU figures."""
    procs = processes(ns, 1, store_pid)
    c0 = cpu_seconds(procs)
    time.sleep(seconds)
    c1 = cpu_seconds(procs)
    return {"idle_cpu_ms_per_s": {k: round((c1[k] - c0[k]) * 1e3 / seconds, 1) for k in c0}}


def bench_rtt(rt: p2e.api.Runtime, n: int) -> dict[str, object]:
    out: dict[str, object] = {}
    targets = {"supervisor": rt.supervisors[0]}
    if "worker" in rt.agents:  # not when the agents run inside the supervisor
        targets["agent"] = rt.agents["worker"][0]
    for name, h in targets.items():
        ray.get([h.health.remote() for _ in range(50)])
        lat = []
        for _ in range(n):
            t = time.perf_counter()
            ray.get(h.health.remote())
            lat.append(time.perf_counter() - t)
        out[f"health_rtt_{name}_p50_ms"] = ms(pct(lat, 0.5))
        out[f"health_rtt_{name}_p99_ms"] = ms(pct(lat, 0.99))
        out[f"health_rtt_{name}_mean_ms"] = ms(statistics.fmean(lat))
    return out


def episodes(rt: p2e.api.Runtime, cids: list[str], via_chat: bool = False) -> list[float]:
    """One `send` per cid, back to back (through `Chat.send` or the supervisor handle); the wall
    time of each."""
    chats = {c: p2e.api.Chat(rt, c, c) for c in cids}

    def send(c: str) -> Any:
        return chats[c].send(TEXT) if via_chat else ray.get(rt.supervisor_for(c).send.remote(c, TEXT))

    lat = []
    results = []
    for c in cids:
        t = time.perf_counter()
        results.append(send(c))
        lat.append(time.perf_counter() - t)
    check(results)
    return lat


def summarise(lat: list[float], prefix: str) -> dict[str, object]:
    total = sum(lat)
    steps = [x / STEPS for x in lat]
    return {
        f"{prefix}_episodes": len(lat),
        f"{prefix}_steps_per_s": round(STEPS * len(lat) / total, 1),
        f"{prefix}_episode_p50_ms": ms(pct(lat, 0.5)),
        f"{prefix}_step_p50_ms": ms(pct(steps, 0.5)),
        f"{prefix}_step_p99_ms": ms(pct(steps, 0.99)),
    }


def bench_one(
    rt: p2e.api.Runtime, ns: str, store_pid: int | None, k: int, k_api: int, k_same: int
) -> dict[str, object]:
    out: dict[str, object] = {}
    send_all(rt, create(rt, 20), batch=1)  # warm-up
    t = time.perf_counter()
    cids = create(rt, k, batch=1)
    out["create_ms_per_conversation"] = ms((time.perf_counter() - t) / k)
    procs = processes(ns, len(rt.supervisors), store_pid)
    c0 = cpu_seconds(procs)
    out |= summarise(episodes(rt, cids), "one")
    out["one_cpu_ms_per_step"] = cpu_per_step(c0, cpu_seconds(procs), STEPS * k)
    lengths = stored_lengths(rt.log, cids)
    out["one_events_per_episode_in_store"] = statistics.fmean(lengths) - 1  # minus `started`
    assert all(n == 1 + EVENTS for n in lengths), Counter(lengths)
    kinds = [e.kind for e in rt.log.history(cids[0])]
    out["episode_event_kinds"] = kinds[1:]

    out |= summarise(episodes(rt, create(rt, k_api, batch=1), via_chat=True), "one_chat_api")

    cid = create(rt, 1)[0]
    lat = episodes(rt, [cid] * k_same)
    out |= summarise(lat, "one_same_conv")
    tenth = max(1, k_same // 10)
    out["one_same_conv_first10pct_episode_ms"] = ms(statistics.fmean(lat[:tenth]))
    out["one_same_conv_last10pct_episode_ms"] = ms(statistics.fmean(lat[-tenth:]))
    out["one_same_conv_events_in_store"] = stored_lengths(rt.log, [cid])[0]
    return out


def bench_many(
    rt: p2e.api.Runtime, ns: str, n_conv: int, rounds: int, store_pid: int | None, tag: str
) -> tuple[dict[str, object], list[str]]:
    cids = create(rt, n_conv)
    send_all(rt, cids)  # warm-up round (also: every conversation hosted)
    procs = processes(ns, len(rt.supervisors), store_pid)
    c0 = cpu_seconds(procs)
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        send_all(rt, cids)
        times.append(time.perf_counter() - t)
    c1 = cpu_seconds(procs)
    steps = STEPS * n_conv * rounds
    lengths = stored_lengths(rt.log, cids)
    assert all(n == 1 + EVENTS * (rounds + 1) for n in lengths), Counter(lengths)
    out: dict[str, object] = {
        f"{tag}_conversations": n_conv,
        f"{tag}_rounds": rounds,
        f"{tag}_steps_per_s": round(steps / sum(times), 1),
        f"{tag}_events_per_s": round(EVENTS * n_conv * rounds / sum(times), 1),
        f"{tag}_round_ms": [ms(x) for x in times],
        f"{tag}_events_in_store_ok": True,
        f"{tag}_cpu_ms_per_step": cpu_per_step(c0, c1, steps),
    }
    return out, cids


# --- profile ------------------------------------------------------------------------------------


def pyspy() -> str | None:
    exe = Path(sys.executable).parent / "py-spy"
    return str(exe) if exe.exists() else shutil.which("py-spy")


REPO = str(Path(__file__).resolve().parents[1]) + "/"
WAITS = {  # leaf frames of a thread that waits (py-spy --nonblocking cannot always tell)
    "select (selectors.py)": "event loop idle",
    "EpollSelector.select (selectors.py)": "event loop idle",
    "_worker (concurrent/futures/thread.py)": "thread pool idle",
    "Worker.main_loop (ray/_private/worker.py)": "ray main thread",
    "Condition.wait (threading.py)": "lock/condition wait",
    "Event.wait (threading.py)": "lock/condition wait",
    "SocketBuffer._read_from_socket (redis/_parsers/socket.py)": "sync redis reply (in a thread)",
    "": "no python frame",
}


def short(frame: str) -> str:
    """'f (/x/site-packages/pydantic/main.py)' -> 'f (pydantic/main.py)'; repo files relative."""
    name, _, where = frame.rpartition(" (")
    where = where.rstrip(")")
    for marker in ("/site-packages/", REPO, "/lib/python3.11/"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    return f"{name} ({where})" if name else frame


def package(frame: str) -> str:
    """'model_copy (pydantic/main.py)' -> 'pydantic'; p2e frames keep their sub-package."""
    where = frame.rpartition(" (")[2].rstrip(")")
    parts = where.split("/")
    if parts[0] in ("p2e", "actors") and len(parts) > 1:
        return "/".join(parts[:2]).removesuffix(".py")
    return parts[0].removesuffix(".py") if len(parts) == 1 else parts[0]


def parse_raw(path: Path, top: int = 12) -> dict[str, object]:
    """py-spy raw (collapsed) stacks -> waits, and the busy samples: self share by package, top
    self functions, top inclusive functions (p2e's own, and all), in % of busy samples."""
    total = busy = 0
    waits: Counter[str] = Counter()
    by_pkg: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        frames = [short(f) for f in stack.split(";")] if stack else [""]
        total += count
        if frames[-1] in WAITS:
            waits[WAITS[frames[-1]]] += count
            continue
        busy += count
        leaf[frames[-1]] += count
        by_pkg[package(frames[-1])] += count
        for f in set(frames):
            incl[f] += count
    if not busy:
        return {"samples": total, "busy_samples": 0}

    def share(c: Counter[str], n: int, of: int, skip: float = 1.01) -> dict[str, float]:
        items = [(k, v / of) for k, v in c.most_common() if v / of < skip]
        return {k: round(100 * v, 1) for k, v in items[:n]}

    p2e_incl = Counter({k: v for k, v in incl.items() if "(p2e/" in k or "(actors/" in k})
    return {
        "samples": total,
        "busy_samples": busy,
        "wait_pct_of_samples": share(waits, 10, total),
        "busy_self_pct_by_package": share(by_pkg, 10, busy),
        "busy_self_pct_top_functions": share(leaf, top, busy),
        "busy_inclusive_pct_p2e_functions": share(p2e_incl, top, busy, skip=0.97),
        "busy_inclusive_pct_top_functions": share(incl, top, busy, skip=0.97),
    }


def bench_profile(
    rt: p2e.api.Runtime, ns: str, cids: list[str], seconds: float, native: bool
) -> dict[str, object]:
    exe = pyspy()
    if not exe or seconds <= 0:
        return {"profile": "skipped" if seconds <= 0 else "py-spy not found"}
    pids = actor_pids()
    targets = {"supervisor": pids[supervisor_actor_name(ns, 0)]}
    for agent in ("supervisor", "worker"):
        if agent_actor_name(ns, agent, 0) in pids:
            targets[f"agent_{agent}"] = pids[agent_actor_name(ns, agent, 0)]
    tmp = Path(tempfile.mkdtemp(prefix="p2e-pyspy-"))
    procs = {}
    for name, pid in targets.items():
        cmd = [exe, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "100"]
        cmd += ["--format", "raw", "--nolineno", "--full-filenames", "--output", str(tmp / f"{name}.txt")]
        cmd.append("--native" if native else "--nonblocking")  # native frames need pausing
        procs[name] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            send_all(rt, cids)

    t = threading.Thread(target=load, daemon=True)
    t.start()
    out: dict[str, object] = {}
    for name, p in procs.items():
        _, err = p.communicate(timeout=seconds + 60)
        f = tmp / f"{name}.txt"
        out[name] = parse_raw(f) if f.exists() else {"error": err.strip()[-300:]}
    stop.set()
    t.join()
    out["raw_stacks_dir"] = str(tmp)
    return {"profile": out}


# --- micro (in this process, no Ray) ------------------------------------------------------------


class Recorder:
    """An AgentHandle around a local AgentRunner that keeps the requests and times the steps."""

    def __init__(self, runner: AgentRunner):
        self.runner = runner
        self.calls: list[tuple[StepRequest, Any, float]] = []

    async def step(self, req: StepRequest) -> Any:
        t = time.perf_counter()
        res = await self.runner.step(req)
        self.calls.append((req, res, time.perf_counter() - t))
        return res

    async def run_tools(self, req: Any) -> Any:
        return await self.runner.run_tools(req)


def timeit(fn: Any, n: int) -> float:
    """Median seconds per call over 5 batches of n calls."""
    batches = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        batches.append((time.perf_counter() - t) / n)
    return statistics.median(batches)


def bench_micro(url: str, ns: str, team_path: Path, k: int) -> tuple[dict[str, object], StepRequest]:
    team = load_team(team_path)
    log = EventLog(url, ns)

    async def run() -> tuple[list[float], dict[str, Recorder], list[Any]]:
        recs = {a: Recorder(AgentRunner(a, team, store=log)) for a in team.agents}
        driver = Driver(log, GroupCommit(url, ns), lambda a: recs[a])
        root = team.team_of("supervisor")
        cids = [await driver.create("supervisor", root, team.limits) for _ in range(k + 10)]
        for c in cids[:10]:
            await driver.send(c, TEXT)
        for r in recs.values():
            r.calls.clear()
        lat = []
        for c in cids[10:]:
            t = time.perf_counter()
            res = await driver.send(c, TEXT)
            lat.append(time.perf_counter() - t)
        check([res])
        await driver.writer.close()
        return lat, recs, log.history(cids[-1])

    lat, recs, history = asyncio.run(run())
    out: dict[str, object] = {
        "local_episode_p50_ms": ms(pct(lat, 0.5)),
        "local_steps_per_s": round(STEPS * len(lat) / sum(lat), 1),
    }
    steps = [x for r in recs.values() for x in r.calls]
    out["local_agent_step_p50_us"] = us(pct([x[2] for x in steps], 0.5))
    out["local_agent_step_sum_per_episode_us"] = us(sum(x[2] for x in steps) / len(lat))

    spec = team.agent("supervisor")
    delegates = [team.agent("worker")]
    tools = [delegate_spec(delegates)]
    n = 200
    out["render_persona_us"] = us(
        timeit(lambda: render_persona(spec, delegates, tools, team.personas_path), n)
    )
    out["delegate_spec_us"] = us(timeit(lambda: delegate_spec(delegates), n))
    out["registry_specs_us"] = us(timeit(lambda: REGISTRY.specs(("weather",), agent="worker"), n))
    # the biggest request of the episode: the supervisor's second turn (4 messages)
    req, res, _ = max(steps, key=lambda x: len(x[0].messages))
    fields = {f: getattr(req, f) for f in StepRequest.model_fields}
    out["step_request_messages"] = len(req.messages)
    out["step_request_build_us"] = us(timeit(lambda: StepRequest(**fields), n))
    blob = ray.cloudpickle.dumps(req)
    out["step_request_pickle_bytes"] = len(blob)
    out["step_request_pickle_roundtrip_us"] = us(timeit(lambda: pickle.loads(ray.cloudpickle.dumps(req)), n))
    rblob = ray.cloudpickle.dumps(res)
    out["step_result_pickle_bytes"] = len(rblob)
    out["step_result_pickle_roundtrip_us"] = us(timeit(lambda: pickle.loads(ray.cloudpickle.dumps(res)), n))
    out["transcript_fold_per_event_us"] = us(timeit(lambda: Transcript.rebuild(history), 50) / len(history))
    out["encode_per_event_us"] = us(timeit(lambda: [encode(e) for e in history], 50) / len(history))
    out["events_bytes_per_episode"] = sum(len(encode(e)) for e in history[1:])
    log.close()
    return out, req


# --- memory -------------------------------------------------------------------------------------


def held_text(log: EventLog, cids: list[str]) -> tuple[int, int]:
    """(chars of message text in the events, chars of text in the transcript a host keeps)."""
    in_events = in_transcript = 0
    for c in cids:
        events = log.history(c)
        for e in events:
            if isinstance(e, UserMessage):
                in_events += len(e.text)
            elif isinstance(e, AgentReply):
                in_events += len(e.text) + sum(len(json.dumps(t.arguments)) for t in e.tool_calls)
            elif isinstance(e, ToolResult):
                in_events += len(e.output)
        transcript, _ = Transcript.rebuild(events)
        for frame in transcript.frames:
            for m in frame:
                in_transcript += len(m.content) + sum(len(json.dumps(t.arguments)) for t in m.tool_calls)
    return in_events, in_transcript


def bench_memory(rt: p2e.api.Runtime, ns: str, n: int) -> dict[str, object]:
    sup = psutil.Process(actor_pids()[supervisor_actor_name(ns, 0)])
    out: dict[str, object] = {"memory_conversations_per_batch": n}
    deltas = []
    ev = tr = 0
    for i in range(2):
        before = sup.memory_info().rss
        hosted0 = ray.get(rt.supervisors[0].health.remote())["hosted"]
        cids = create(rt, n)
        send_all(rt, cids, batch=200)
        after = sup.memory_info().rss
        hosted1 = ray.get(rt.supervisors[0].health.remote())["hosted"]
        assert hosted1 - hosted0 == n, (hosted0, hosted1)
        deltas.append((after - before) / n)
        out[f"memory_rss_mb_before_batch{i + 1}"] = round(before / 2**20, 1)
        out[f"memory_rss_mb_after_batch{i + 1}"] = round(after / 2**20, 1)
        if i == 0:
            ev, tr = held_text(rt.log, cids)
    out["memory_hosted_after"] = hosted1
    out["memory_kb_per_idle_conversation"] = [round(d / 1024, 1) for d in deltas]
    out["memory_text_chars_in_events_per_conversation"] = round(ev / n, 1)
    out["memory_text_chars_in_transcript_per_conversation"] = round(tr / n, 1)
    # message text is ASCII here: one byte per char in a Python str (plus ~49 B of header each)
    out["memory_kb_per_idle_conversation_minus_event_text"] = [round((d - ev / n) / 1024, 1) for d in deltas]
    return out


# --- floor --------------------------------------------------------------------------------------


def run_floor(path: str, url: str, n: int) -> dict[str, Any]:
    if not Path(path).exists():
        return {"error": f"{path} not found"}
    env = {**os.environ, "REDIS_URL": url}
    p = subprocess.run([sys.executable, path, str(n)], env=env, capture_output=True, text=True, timeout=600)
    lines = [x for x in p.stdout.splitlines() if x.startswith("{")]
    if p.returncode != 0 or not lines:
        return {"error": (p.stderr or p.stdout).strip()[-500:]}
    return json.loads(lines[-1])


def ratios(out: dict[str, Any], floor: dict[str, Any]) -> dict[str, object]:
    if "error" in floor:
        return {}

    def r(a: str, b: str, inverse: bool = False) -> float | None:
        x, y = out.get(a), floor.get(b)
        if not x or not y:
            return None
        return round(y / x if inverse else x / y, 3)

    return {
        "ratio_one_steps": r("one_steps_per_s", "b_1conv_steps_per_s"),
        "ratio_one_step_p50_floor_over_p2e": r("one_step_p50_ms", "b_1conv_step_p50_ms", inverse=True),
        "ratio_one_episode_floor_over_p2e": r("one_episode_p50_ms", "b_1conv_episode_ms", inverse=True),
        "ratio_many_sup1_steps": r("many_sup1_steps_per_s", "b_200conv_steps_per_s"),
        "ratio_many_sup2_steps": r("many_sup2_steps_per_s", "c_2sup_100conv_each_steps_per_s"),
    }


# --- main ---------------------------------------------------------------------------------------


def run(url: str, store_pid: int | None, args: argparse.Namespace, sizes: dict[str, Any]) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    ns1, ns2, ns_local = f"rtbench-{tag}", f"rtbench-{tag}-s2", f"rtbench-{tag}-local"
    tmp = Path(tempfile.mkdtemp(prefix="p2e-runtime-bench-team-"))
    team = write_team(tmp, args.placement)
    r = redis.Redis.from_url(url)
    out: dict[str, Any] = {"bench": "p2e_runtime", "namespace": ns1, **server_info(r)}
    try:
        micro, micro_req = bench_micro(url, ns_local, team, sizes["micro"])
        out |= micro

        t = time.perf_counter()
        rt = p2e.api.init(
            agents=team,
            store_url=url,
            namespace=ns1,
            supervisors=1,
            include_dashboard=False,
            log_to_driver=False,
        )
        out["init_s"] = round(time.perf_counter() - t, 1)
        out |= bench_rtt(rt, sizes["rtt"])
        out |= bench_ray_call(micro_req, sizes["rtt"])
        out |= bench_idle_cpu(ns1, store_pid)
        out |= bench_one(rt, ns1, store_pid, sizes["episodes"], sizes["chat_api"], sizes["same"])
        many, cids = bench_many(rt, ns1, sizes["conversations"], sizes["rounds"], store_pid, "many_sup1")
        out |= many
        out |= bench_profile(rt, ns1, cids, sizes["profile_s"], args.native)
        out |= bench_memory(rt, ns1, sizes["idle"])
        for h in [*rt.supervisors, *(h for hs in rt.agents.values() for h in hs)]:
            ray.kill(h)  # free the CPU and memory before the second set

        rt2 = p2e.api.init(agents=team, store_url=url, namespace=ns2, supervisors=2)
        many, _ = bench_many(rt2, ns2, sizes["conversations"], sizes["rounds"], store_pid, "many_sup2")
        out |= many
        rt2.shutdown()
    finally:
        if ray.is_initialized():
            ray.shutdown()
        out["keys_deleted"] = sum(delete_ns(r, ns) for ns in (ns1, ns2, ns_local))
        shutil.rmtree(tmp, ignore_errors=True)
    if sizes["floor"] and not args.no_floor:
        floor = run_floor(args.floor, url, sizes["floor"])
        out["floor"] = floor
        out |= ratios(out, floor)
    r.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="Redis/Valkey URL; default: start an embedded Valkey and stop it after")
    ap.add_argument("--quick", action="store_true", help="a smoke run: small counts, no profile")
    ap.add_argument("--episodes", type=int, help="one-conversation episodes (fresh conversation each)")
    ap.add_argument("--conversations", type=int, help="concurrent conversations (default 200)")
    ap.add_argument("--rounds", type=int, help="rounds of one send per conversation")
    ap.add_argument("--idle", type=int, help="idle conversations per memory batch (default 1000)")
    ap.add_argument("--profile-s", type=float, help="seconds of py-spy sampling (0: no profile)")
    ap.add_argument("--native", action="store_true", help="py-spy --native (C/C++ frames too)")
    ap.add_argument("--floor", default=FLOOR, help="path of ray_redis_floor.py")
    ap.add_argument("--floor-episodes", type=int, help="N for the floor (default 500)")
    ap.add_argument("--no-floor", action="store_true", help="do not run the floor")
    ap.add_argument(
        "--placement",
        choices=["actor", "supervisor"],
        default="actor",
        help="where the agents run: their own actors (default) or inside the supervisor",
    )
    args = ap.parse_args()
    sizes = dict(QUICK if args.quick else FULL)
    for k, v in (
        ("episodes", args.episodes),
        ("conversations", args.conversations),
        ("rounds", args.rounds),
        ("idle", args.idle),
        ("profile_s", args.profile_s),
        ("floor", args.floor_episodes),
    ):
        if v is not None:
            sizes[k] = v
    t0 = time.perf_counter()
    with server(args.url, "p2e-runtime-bench-") as (url, source, store_pid, _):
        meta = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "quick": args.quick,
            "placement": args.placement,
            "store": source,
            "python": platform.python_version(),
            "ray": ray.__version__,
            "cpus": os.cpu_count(),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        }
        out = {**meta, **run(url, store_pid, args, sizes)}
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
