"""`p2e rollout validate | plan | run | list | show | compare | export`: sweeps from a spec."""

from __future__ import annotations

import contextlib
import time
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from p2e.cli import ids
from p2e.cli._common import console, finite, open_log
from p2e.cli.dashboard import announce, ray_options, wanted
from p2e.cli.fit import Cell, Col, FitTable
from p2e.cli.render import clip
from p2e.cli.rerun_flags import RERUN, RERUN_CONNECT, RERUN_SAVE
from p2e.cli.terminal import DataTable, styled
from p2e.errors import InvalidArgument
from p2e.obs.observer import Observation, RerunOptions, observe
from p2e.obs.viewer import recording_path
from p2e.rollouts.stats import Comparison, Tally, VariantSummary, compare
from p2e.rollouts.store import AdaptiveRecord, RolloutInfo, RolloutStore, RoundRecord, Row, StoredRows
from p2e.settings import Settings, settings

if TYPE_CHECKING:
    from p2e.rollouts.plan import PlanSummary
    from p2e.rollouts.spec import Resolved

app = typer.Typer(
    help="Rollouts: run a team over variants x scenarios x repeats from a YAML spec, then compare.",
    no_args_is_help=True,
)

SPEC = typer.Argument(..., metavar="SPEC", help="the rollout spec (YAML), e.g. experiments/quickstart.yaml")
RID = typer.Argument(
    ..., metavar="ID", help=f"a rollout id, {ids.PREFIX} (see `p2e rollout list`)", callback=ids.on_rollout
)

CONFIRM_OVER = Settings().confirm_episodes
"""`rollout run` asks before running more episodes than this (`P2E_CONFIRM_EPISODES` sets it):
a typo in `repeats` should not start millions of paid model calls."""


@app.command()
def validate(spec: Path = SPEC) -> None:
    """Check a spec and everything it points to, run nothing; every problem is listed at once.

    Checked: the spec, the agents, scenario files, evaluators, and for the agents and each
    variant's overrides what an agent needs to run (its model's provider and mock rules set,
    its tools, its persona). Checking imports the agents file's tool_modules and
    evaluator_modules (and installed packages' evaluator entry points) and calls the spec's
    scenario callables, running their code; it names them. Counting the episodes builds none
    of them.

    Example: p2e rollout validate experiments/quickstart.yaml
    """
    from p2e.rollouts.plan import Episodes
    from p2e.rollouts.spec import load_spec

    resolved = load_spec(spec)
    for kind, names in resolved.imported.items():
        if names:
            console.print(f"imported {kind}: {', '.join(names)}", soft_wrap=True)
    episodes = Episodes(resolved)
    n = len(episodes)
    if resolved.spec.adaptive is not None:
        from p2e.rollouts.adaptive import Halving

        h = Halving(resolved, episodes)
        console.print(
            styled(
                ("ok", "green"),
                f" {spec}: at most {h.total} episodes in {h.rounds} rounds of successive halving, "
                f"{_share(h.total, n)} of the full grid's {n} ({len(resolved.variants)} variants)",
            ),
            soft_wrap=True,
        )
        return
    console.print(
        styled(("ok", "green"), f" {spec}: {n} episodes ({len(resolved.variants)} variants)"), soft_wrap=True
    )


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


@app.command()
def plan(spec: Path = SPEC) -> None:
    """Show what a spec would run: episodes by variant, and model calls (counted, not built).

    Example: p2e rollout plan experiments/quickstart.yaml
    """
    from p2e.rollouts.plan import summarize_plan
    from p2e.rollouts.spec import load_spec

    resolved = load_spec(spec)
    s = summarize_plan(resolved)
    if resolved.spec.adaptive is not None:
        _plan_adaptive(resolved, s)
        return
    t = Table(title=f"{resolved.spec.name}: {s.episodes} episodes")
    t.add_column("variant", overflow="fold")
    t.add_column("overrides", overflow="fold")
    t.add_column("episodes", justify="right")
    per_variant = s.teams * s.scenarios * s.repeats  # every variant runs every team x scenario x seed
    for v in resolved.variants:
        t.add_row(v.name, clip(str(v.overrides or "-"), 80), str(per_variant))
    console.print(t)
    console.print(
        f"teams {s.teams} x variants {len(s.variants)} x scenarios {s.scenarios} x repeats {s.repeats}"
        f" = {s.episodes} episodes; model calls between {s.min_model_calls} (one per episode, n for "
        "a guided root) and "
        f"{s.max_model_calls} (every episode at its step limit, {resolved.limits.max_steps})",
        soft_wrap=True,
    )
    ev = ", ".join(e.id for e in resolved.spec.evaluators) or "none"
    console.print(f"evaluators: {ev}; primary: {resolved.spec.primary_metric or '-'}")
    r = resolved.spec.run
    console.print(f"in flight {r.in_flight}, supervisors {r.supervisors}, retries {r.retries}")


def _plan_adaptive(resolved: Resolved, s: PlanSummary) -> None:
    """`plan` for a spec with `adaptive:`: the variants, then the rounds and what they cost."""
    from p2e.rollouts.adaptive import Halving
    from p2e.rollouts.plan import Episodes

    h = Halving(resolved, Episodes(resolved))
    cfg = h.cfg
    t = Table(title=f"{resolved.spec.name}: {len(resolved.variants)} variants")
    t.add_column("variant", overflow="fold")
    t.add_column("overrides", overflow="fold")
    for v in resolved.variants:
        t.add_row(v.name, clip(str(v.overrides or "-"), 80))
    console.print(t)
    t = Table(title=f"successive halving: keep {cfg.keep:g} per round, {h.rounds} rounds")
    for col in ("round", "scenario x repeat", "variants", "episodes", "so far"):
        t.add_column(col, justify="right")
    so_far = 0
    for p in h.plan:
        so_far += p["episodes"]
        t.add_row(*(str(x) for x in (p["round"], p["units"], p["variants"], p["episodes"], so_far)))
    console.print(t)
    steps = resolved.limits.max_steps
    console.print(
        f"at most {h.total} episodes, {_share(h.total, h.grid)} of the full grid (teams {s.teams} x variants "
        f"{len(s.variants)} x scenarios {s.scenarios} x repeats {s.repeats} = {h.grid}); model calls "
        f"between {h.total} (one per episode) and {h.total * steps} (every episode at its step limit, "
        f"{steps})",
        soft_wrap=True,
    )
    console.print(
        f"each round ranks the variants by mean {resolved.spec.primary_metric} over their episodes so far "
        f"and stops the rest; {cfg.finalists} finalist(s); scenarios dealt into rounds by seed {cfg.seed}",
        soft_wrap=True,
    )
    r = resolved.spec.run
    console.print(f"in flight {r.in_flight}, supervisors {r.supervisors}, retries {r.retries}")


TABLE_EVERY_S = 1.0
PLAIN_EVERY_S = 5.0
"""Without a terminal (`ray job logs`, a file), a progress line this often."""


class _Display:
    """The progress bar (and with --follow, a live table per variant) fed by finished rows."""

    def __init__(self, follow: bool):
        self.follow = follow
        self.progress = Progress(
            TextColumn("{task.description}", style="bold", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}", markup=False),
            TimeElapsedColumn(),
            console=console,
        )
        self.task = self.progress.add_task("episodes", total=None, stats="")
        self.tally = Tally()
        """With --follow: the live table's summary of the rows so far (never the rows)."""
        self.rid = ""
        self.failed = self.tokens = 0
        self.cost = 0.0
        self.t0 = self.plain_at = time.monotonic()
        self.todo = 0
        self.table_at = -TABLE_EVERY_S
        self.live = Live(self._render(), console=console, refresh_per_second=4)

    def start(self, info: RolloutInfo, todo: int, total: int) -> None:
        self.t0 = time.monotonic()
        self.rid = description = info.id
        if info.adaptive is not None:
            description += f" round {len(info.adaptive.decided) + 1}/{info.adaptive.rounds}"
        # reset: the elapsed column starts now, as the rate does (Ray's start-up counted in one only)
        self.progress.reset(self.task, total=todo, description=description)
        self.todo = todo
        if todo < total:
            console.print(f"resuming {info.id}: {total - todo} of {total} episodes are done already")
        if console.is_terminal:
            self.live.start()
        else:  # a job log or a file: a plain line now and every PLAIN_EVERY_S, not one redraw at the end
            self._plain(0)

    def round_(self, rec: RoundRecord, record: AdaptiveRecord) -> None:
        """A round was decided: say who stopped, and what the bar is on now."""
        console.print(round_line(rec, record.rounds), soft_wrap=True)
        if rec.round < record.rounds:
            self.progress.update(self.task, description=f"{self.rid} round {rec.round + 1}/{record.rounds}")

    def row(self, row: Row) -> None:
        self.failed += row.status == "failed"
        self.tokens += row.tokens
        self.cost += row.cost_usd
        if self.follow:
            self.tally.add(row)
        done = int(self.progress.tasks[0].completed) + 1
        rate = done / max(time.monotonic() - self.t0, 1e-9)
        failed = f"failed {self.failed}  " if self.failed else ""
        stats = f"{failed}{rate:.1f} ep/s  tokens {self.tokens:,}  ${self.cost:.4f}"
        self.progress.update(self.task, advance=1, stats=stats)
        due = time.monotonic() - self.plain_at >= PLAIN_EVERY_S or done == self.todo
        if not console.is_terminal and due:
            self._plain(done)
        # the live table bootstraps intervals over every row: redrawn at most once a second, as
        # this runs on the coordinator's loop (the progress bar refreshes by itself)
        if self.follow and time.monotonic() - self.table_at >= TABLE_EVERY_S:
            self.live.update(self._render())

    def _plain(self, done: int) -> None:
        self.plain_at = time.monotonic()
        elapsed = self.plain_at - self.t0
        rate = done / elapsed if elapsed > 0 else 0.0
        console.print(
            f"{self.rid}: {done}/{self.todo} episodes, {self.failed} failed, {rate:.1f} ep/s, "
            f"tokens {self.tokens:,}, ${self.cost:.4f}, {elapsed:.0f} s",
            soft_wrap=True,
        )

    def _render(self) -> Group | Progress:
        if not self.follow:
            return self.progress
        self.table_at = time.monotonic()
        return Group(self.progress, summary_table(self.tally.summaries(), "live"))

    def stop(self) -> None:
        if self.live.is_started:
            self.live.update(self._render())  # the last rows too
            self.live.stop()
            if not console.is_terminal:
                console.print()


def round_line(rec: RoundRecord, rounds: int) -> str:
    """One line per decided round: who goes on, who stopped (mean and interval)."""
    stopped = ", ".join(f"{s.variant} {_num(s.mean)} {_ci(s.ci_low, s.ci_high)}" for s in rec.stopped)
    kept = ", ".join(rec.kept)
    what = "winner" if rec.round == rounds and len(rec.kept) == 1 else "kept"
    return (
        f"round {rec.round}/{rounds}: {len(rec.variants)} variants, cutoff {_num(rec.cutoff)}; "
        f"{what} {kept}; stopped {stopped or 'none'}"
    )


@app.command()
def run(
    spec: Path = SPEC,
    address: str | None = typer.Option(
        None, "--address", help="join a Ray cluster: `auto`, or ray://HOST:10001; default: local Ray"
    ),
    resume: str | None = typer.Option(
        None,
        "--resume",
        metavar="ID",
        help=f"finish rollout ID ({ids.PREFIX}): skip its done episodes",
        callback=ids.on_rollout,
    ),
    follow: bool = typer.Option(False, "--follow", "-f", help="show a live table per variant"),
    rerun: bool = RERUN,
    rerun_connect: str | None = RERUN_CONNECT,
    rerun_save: Path | None = RERUN_SAVE,
    no_recording: bool = typer.Option(
        False, "--no-recording", help="keep no Rerun recording of the rows (saved by default)"
    ),
    yes: bool = typer.Option(
        False,
        "--yes",
        "-y",
        help=f"run without asking, however many episodes (asked over {CONFIRM_OVER:,}: P2E_CONFIRM_EPISODES)",
    ),
    no_dashboard: bool = typer.Option(
        False, "--no-dashboard", help="start Ray without its dashboard (on by default, at 127.0.0.1:8265)"
    ),
) -> None:
    """Run every episode of a spec (or what is left of one) and print the variant summary.

    Ctrl-C stops cleanly; the episodes that finished keep their rows, and `--resume ID` runs
    the rest (failed episodes again). With `run.max_failures` in the spec, a rollout whose
    episodes keep failing stops early the same way, prints how many failed and the most common
    error, and exits 3. On a cluster the store must be a Redis every node reaches (P2E_REDIS_URL).

    A Rerun recording of the rows (leaderboard, scores, cost per variant) is kept in
    $P2E_HOME/recordings (`p2e view ID` opens it); --rerun, --rerun-connect or --rerun-save add
    every episode's conversation to it, live.

    The local Ray it starts runs its dashboard on 127.0.0.1 (the URL is printed on stderr;
    --no-dashboard or P2E_DASHBOARD=0 for none); with --address, the cluster's is printed.

    Examples:
      p2e rollout run experiments/quickstart.yaml
      p2e rollout run experiments/quickstart.yaml --rerun-save sweep.rrd
      p2e rollout run experiments/quickstart.yaml --resume quickstart-1a2b3c
      ray job submit -- p2e rollout run experiments/judge_sweep.yaml --address auto
    """
    from p2e.api import run_rollout
    from p2e.rollouts.spec import load_spec

    resolved = load_spec(spec)
    if not yes:
        _confirm_size(resolved)
    opts = RerunOptions.from_flags(rerun, rerun_connect, rerun_save)
    display = _Display(follow)
    rid: list[str] = []
    recording = contextlib.ExitStack()
    observations: list[Observation] = []
    balances: dict[str, Decimal] = {}

    def on_start(info: RolloutInfo, todo: int, total: int) -> None:
        rid.append(info.id)
        if opts.enabled or not no_recording:
            # the rows (leaderboard, scores, cost) always; every conversation only when asked,
            # since following them all costs the rollout CPU (docs/observability.md)
            saved = opts.with_default_save(recording_path("rollout", info.id))
            obs = recording.enter_context(
                observe(saved, open_log(), new_only=True, follow=opts.enabled, rollout=info.id)
            )
            observations.append(obs)
            balances.update({w: Decimal(v) for w, v in info.ledger.get("balances_before", {}).items()})
            if balances:
                obs.ledger(balances)
        announce()
        display.start(info, todo, total)

    def on_row(row: Row) -> None:
        display.row(row)
        for w, d in row.ledger_deltas.items():  # balances over time, from each episode's payments
            balances[w] = balances.get(w, Decimal(0)) + Decimal(d)
        for obs in observations:
            obs.rollout_rows([row], row.rollout)
            if row.ledger_deltas:
                obs.ledger(balances)

    try:
        with recording:
            result = run_rollout(
                resolved,
                address=address,
                resume=resume,
                on_start=on_start,
                on_row=on_row,
                on_round=display.round_,
                **ray_options(address, not no_dashboard and wanted(True)),
            )
            after = result.info.ledger.get("balances_after")
            for obs in observations:  # after the bounty's payout
                if after:
                    obs.ledger(after)
    except KeyboardInterrupt:
        display.stop()
        if rid:
            console.print(
                f"interrupted; finish it with: p2e rollout run {spec} --resume {rid[0]}", soft_wrap=True
            )
        raise
    finally:
        display.stop()
    summaries = result.summary()  # streamed from the store: the driver never holds the rows
    episodes, failed = sum(s.episodes for s in summaries), sum(s.failures for s in summaries)
    console.print(summary_table(summaries, result.id))
    if result.info.adaptive is not None:
        console.print(adaptive_lines(result.info.adaptive, episodes), soft_wrap=True)
    if observations and observations[0].active:
        console.print(f"recording: p2e view {result.id}", soft_wrap=True)
    console.print(
        f"{episodes} episodes, {failed} failed. Next: p2e rollout show {result.id} | "
        f"p2e rollout compare {result.id} | p2e rollout export {result.id} --format parquet",
        soft_wrap=True,
    )


def _confirm_size(resolved: Resolved) -> None:
    """Ask on a terminal before a rollout of more than `P2E_CONFIRM_EPISODES` episodes; refuse
    without one (a script passes --yes)."""
    import sys

    from p2e.rollouts.plan import Episodes

    limit, episodes = settings().confirm_episodes, Episodes(resolved)
    n = len(episodes)
    if resolved.spec.adaptive is not None:
        from p2e.rollouts.adaptive import Halving

        n = Halving(resolved, episodes).total
    if n <= limit:
        return
    what = f"{resolved.path} runs {n:,} episodes, more than {limit:,} (P2E_CONFIRM_EPISODES)"
    if not sys.stdin.isatty():
        raise InvalidArgument(f"{what}; pass --yes to run them (`p2e rollout plan` shows what they are)")
    typer.confirm(f"{what}. Run them?", abort=True)


def summary_table(summaries: list[VariantSummary], title: str) -> FitTable:
    """A line per variant; on a narrow terminal wall time, tokens and cost give way first."""
    adaptive = any(s.rounds or s.outcome for s in summaries)
    cols = [
        Col("variant"),
        *(Col(h, "num", justify="right") for h in ("n", "failed", "mean", "95% CI")),
        Col("tokens", "num", drop=2, justify="right"),
        Col("cost $", "num", drop=1, justify="right"),
        Col("wall s", "num", drop=3, justify="right"),
    ]
    if adaptive:
        cols += [Col("rounds", "num", drop=4, justify="right"), Col("outcome")]
    rows = []
    for s in summaries:
        cells: list[Cell] = [
            s.variant,
            str(s.n),
            str(s.failures),
            _num(s.mean),
            _ci(s.ci_low, s.ci_high),
            f"{s.tokens:,}",
            f"{s.cost_usd:.4f}",
            _num(s.mean_wall_s, 2),
        ]
        if adaptive:  # "stopped" beside rounds 1-2: stopped after round 2
            outcome = (s.outcome or "").split(" ")[0]
            style = {"winner": "green", "stopped": "dim"}.get(outcome)
            cells += [_rounds(s.rounds), styled((outcome, style or ""))]
        rows.append(cells)
    return FitTable(cols, rows, title)


def _rounds(rounds: list[int]) -> str:
    if not rounds:
        return "-"
    if rounds == list(range(rounds[0], rounds[-1] + 1)) and len(rounds) > 1:
        return f"{rounds[0]}-{rounds[-1]}"
    return ",".join(map(str, rounds))


def _num(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _ci(lo: float | None, hi: float | None) -> str:
    return f"[{_num(lo)}, {_num(hi)}]" if lo is not None else "-"


def _ratio(v: float | None) -> str:
    """A ratio with three significant digits; an em dash where it means nothing."""
    return "—" if v is None else f"{v:+.3g}"


def adaptive_lines(record: AdaptiveRecord, ran: int) -> str:
    """The short account of an adaptive rollout: what it ran against the full grid, the winner."""
    planned = sum(p["episodes"] for p in record.plan)
    share = _share(ran, record.grid_episodes)
    head = (
        f"successive halving: {len(record.decided)}/{record.rounds} rounds decided; {ran} of {planned} "
        f"planned episodes ran, {share} of the full grid's {record.grid_episodes}"
    )
    if record.winner is None:
        return head
    last = record.decided[-1].standings[0]
    return head + f"; winner {record.winner}: mean {_num(last.mean)} {_ci(last.ci_low, last.ci_high)}"


def rounds_table(record: AdaptiveRecord) -> DataTable:
    """Each decided round: who ran, the leader, the cutoff and who stopped."""
    t = DataTable(title="rounds")
    for col in ("round", "variants", "episodes", "leader", "cutoff", "stopped (mean, 95% CI)"):
        t.add_column(col, overflow="fold")
    for rec in record.decided:
        lead = rec.standings[0]
        stopped = "; ".join(f"{s.variant} {_num(s.mean)} {_ci(s.ci_low, s.ci_high)}" for s in rec.stopped)
        t.add_row(
            str(rec.round),
            str(len(rec.variants)),
            str(rec.episodes),
            f"{lead.variant} {_num(lead.mean)} {_ci(lead.ci_low, lead.ci_high)}",
            _num(rec.cutoff),
            stopped or "-",
        )
    return t


def stopped_table(record: AdaptiveRecord) -> DataTable:
    """Every stopped variant: when, at what score, and how (the whole reason is in the record:
    `RolloutResult.rounds`)."""
    t = DataTable(title="stopped variants")
    for col in ("variant", "after round", "rank", "n", "mean", "95% CI", "cutoff", "vs the leader", "tie"):
        t.add_column(col, overflow="fold")
    for rec in record.decided:
        for s in rec.stopped:
            against = "no score" if s.mean is None else "below its CI" if s.separated else "CIs overlap"
            t.add_row(
                s.variant,
                str(rec.round),
                f"{s.rank}/{len(rec.standings)}",
                str(s.n),
                _num(s.mean),
                _ci(s.ci_low, s.ci_high),
                _num(rec.cutoff),
                against,
                s.tie_break,
            )
    return t


@app.command("list")
def list_() -> None:
    """Every rollout in the store, oldest first."""
    store = RolloutStore(open_log())
    cols = (
        Col("id", "id"),
        Col("status"),
        Col("rows/episodes", "num", justify="right"),
        Col("created", drop=1),
        Col("spec", drop=2),
    )
    rows = [
        (
            info.id,
            info.status,
            f"{store.count(info.id)}/{info.episodes}",
            time.strftime("%Y-%m-%d %H:%M", time.localtime(info.created)),
            info.spec_path,
        )
        for info in store.list()
    ]
    console.print(FitTable(cols, rows))


@app.command()
def show(
    rollout_id: str = RID,
    rows: bool = typer.Option(False, "--rows", help="list every episode's row too"),
) -> None:
    """A rollout's status and variant summary (mean, 95% bootstrap CI, n, failures).

    Example: p2e rollout show quickstart-1a2b3c --rows
    """
    store = RolloutStore(open_log())
    info = store.get(rollout_id)
    tally, count, abandoned = Tally(), 0, 0
    for r in store.iter_rows(rollout_id):  # streamed: a rollout of millions is never held
        tally.add(r)
        count += 1
        abandoned += len(r.abandoned)
    console.print(
        styled(
            (info.id, "bold"),
            f"  {info.status}  {count}/{info.episodes} episodes  spec {info.spec_path}",
        )
    )
    from p2e.rollouts.adaptive import annotate

    console.print(summary_table(annotate(tally.summaries(), info.adaptive), "variants"))
    if info.adaptive is not None:
        console.print(rounds_table(info.adaptive))
        if any(rec.stopped for rec in info.adaptive.decided):
            console.print(stopped_table(info.adaptive))
        console.print(adaptive_lines(info.adaptive, count), soft_wrap=True)
    if info.ledger:
        console.print(ledger_lines(info.ledger), soft_wrap=True)
    if abandoned:
        console.print(
            styled(
                f"{abandoned} abandoned attempts (a dead supervisor or driver, a stopped rollout, or a "
                "failed attempt that --resume ran again): not counted; their "
                "payments are in their episode's ledger deltas (its row's `abandoned` names them)"
            ),
            soft_wrap=True,
        )
    if info.status == "interrupted":
        console.print(
            styled(f"interrupted; finish it with: p2e rollout run {info.spec_path} --resume {info.id}"),
            soft_wrap=True,
        )
    if info.status == "stopped":  # it passed run.max_failures: the note says how it went
        console.print(
            styled(
                (info.note or "stopped", "red"),
                f"; fix the cause, then run the failed and the remaining episodes: "
                f"p2e rollout run {info.spec_path} --resume {info.id}",
            ),
            soft_wrap=True,
        )
    if rows:
        console.print(rows_table(store.rows(rollout_id)))


def rows_table(rows: list[Row]) -> FitTable:
    """One line per episode; a failed one says why (cut short: `p2e rollout export` has it all).
    On a narrow terminal the episode id (no command takes it), steps, round and the like give
    way first; the conversation id, which `p2e conversation show` takes, stays whole."""
    cols = (
        Col("episode", "id", drop=6),
        Col("variant"),
        Col("scenario", drop=1),
        Col("rep", "num", drop=4, justify="right"),
        Col("round", "num", drop=5, justify="right"),
        Col("status", "text"),
        Col("primary", "num", justify="right"),
        Col("steps", "num", drop=3, justify="right"),
        Col("tokens", "num", drop=2, justify="right"),
        Col("conversation", "id"),
    )
    table = [
        (
            r.episode,
            r.variant,
            r.scenario,
            str(r.repeat),
            "-" if r.round is None else str(r.round),
            r.status if r.status == "done" else styled((r.status, "red"), f": {clip(r.error or '', 40)}"),
            _num(r.primary),
            str(r.steps),
            str(r.tokens),
            r.conversation,
        )
        for r in rows
    ]
    return FitTable(cols, table)


def ledger_lines(ledger: dict) -> str:
    """The rollout's money: balances before and after, and where the bounty went."""
    out = []
    before, after = ledger.get("balances_before", {}), ledger.get("balances_after", {})
    for w in sorted(set(before) | set(after)):
        out.append(f"  {w}: {before.get(w, '-')} -> {after.get(w, '-')}")
    payout = ledger.get("payout")
    if payout:
        if payout["refunded"]:
            out.append(f"  bounty {payout['escrow']}: refunded to the sponsor")
        else:
            paid = ", ".join(f"{w} {a}" for w, a in payout["paid"].items())
            out.append(f"  bounty {payout['escrow']}: best {', '.join(payout['winners'])}; paid {paid}")
    return "ledger:\n" + "\n".join(out)


@app.command("compare")
def compare_(
    rollout_id: str = RID,
    baseline: str | None = typer.Option(
        None, "--baseline", help="the variant to compare against (default: first)"
    ),
) -> None:
    """Each variant against the baseline, paired by scenario: the difference and its 95% CI.

    Example: p2e rollout compare quickstart-1a2b3c --baseline baseline
    """
    store = RolloutStore(open_log())
    info = store.get(rollout_id)
    all_rows = StoredRows(store, rollout_id)  # streamed, twice: no rollout is held at once
    variants = (
        [v["name"] for v in info.spec.get("variants", [])]
        if isinstance(info.spec.get("variants"), list)
        else []
    )
    present = sorted({r.variant for r in all_rows})
    base = baseline or (variants[0] if variants else (present[0] if present else None))
    if base is None:
        raise InvalidArgument(f"rollout {rollout_id!r} has no finished episodes to compare yet")
    if base not in present:
        raise InvalidArgument(
            f"no variant {base!r} in rollout {rollout_id!r}; its variants: {', '.join(present)}"
        )
    console.print(comparison_table(compare(all_rows, base), base))


def comparison_table(comparisons: list[Comparison], baseline: str) -> FitTable:
    """The paired difference, its verdict, and what it costs: extra tokens and dollars per
    episode, and the score gained per extra 1k tokens and per extra dollar ("—" where the
    variant spends no more than the baseline: a ratio would mean nothing)."""
    cols = (
        Col("variant"),
        Col("pairs", "num", justify="right"),
        Col("difference", "num", justify="right"),
        Col("95% CI", "num", justify="right"),
        Col("verdict", "text"),
        Col("extra tokens/ep", "num", drop=2, justify="right"),
        Col("score per 1k extra tokens", "num", drop=1, justify="right"),
        Col("extra $/ep", "num", drop=4, justify="right"),
        Col("score per extra $", "num", drop=3, justify="right"),
    )
    rows = []
    verdict: str | Text
    for c in comparisons:
        if c.ci_low is None or c.ci_high is None:
            verdict = "too few pairs"
        elif c.ci_low > 0:
            verdict = styled(("better", "green"))
        elif c.ci_high < 0:
            verdict = styled(("worse", "red"))
        else:
            verdict = "no clear difference"
        rows.append(
            (
                c.variant,
                str(c.pairs),
                _num(c.difference),
                _ci(c.ci_low, c.ci_high),
                verdict,
                "-" if c.extra_tokens is None else f"{c.extra_tokens:+,.0f}",
                _ratio(c.score_per_1k_tokens),
                "-" if c.extra_cost_usd is None else f"{c.extra_cost_usd:+.4f}",
                _ratio(c.score_per_usd),
            )
        )
    return FitTable(cols, rows, f"against {baseline} (paired by scenario)")


@app.command()
def export(
    rollout_id: str = RID,
    fmt: str = typer.Option("jsonl", "--format", help="jsonl | parquet (rows), or chat (trajectories)"),
    out: Path | None = typer.Option(None, "--out", "-o", help="output file; default: <ID>.<format>"),
    min_score: float | None = typer.Option(
        None, "--min-score", callback=finite, help="chat: only episodes with a primary score at least this"
    ),
    agent: str = typer.Option(
        "root", "--agent", help="chat: whose frames: root (the episode's root agent), an agent's id, or all"
    ),
    metadata: bool = typer.Option(
        False, "--metadata", help="chat: add where each line came from (OpenAI's upload may refuse it)"
    ),
) -> None:
    """Write a rollout's rows (JSONL, Parquet), or its done episodes as OpenAI chat fine-tuning
    JSONL (`--format chat`): one line per frame of the chosen agent, with its system message,
    its tools (`delegate` included) and `parallel_tool_calls`. Failed episodes are left out.

    Examples:
      p2e rollout export quickstart-1a2b3c --format parquet
      p2e rollout export quickstart-1a2b3c --format chat --min-score 1 -o good.jsonl
      p2e rollout export quickstart-1a2b3c --format chat --agent all -o frames.jsonl
    """
    from p2e.rollouts.export import write_jsonl, write_parquet, write_trajectories

    if fmt not in ("jsonl", "parquet", "chat"):
        raise InvalidArgument(f"--format {fmt!r}: use jsonl, parquet or chat")
    if fmt != "chat" and (agent != "root" or metadata):
        raise InvalidArgument("--agent and --metadata choose what a chat export holds: add --format chat")
    log = open_log()
    store = RolloutStore(log)
    store.get(rollout_id)
    all_rows = StoredRows(store, rollout_id)  # streamed a page at a time
    path = out or Path(f"{rollout_id}.{'chat.jsonl' if fmt == 'chat' else fmt}")
    if fmt == "jsonl":
        n = write_jsonl(all_rows, path)
    elif fmt == "parquet":
        n = write_parquet(all_rows, path)
    else:
        n = write_trajectories(log, all_rows, path, min_score, agent=agent, metadata=metadata)
    console.print(f"wrote {n} {'trajectories' if fmt == 'chat' else 'rows'} to {path}", soft_wrap=True)
