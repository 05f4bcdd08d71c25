"""Adaptive rollouts: successive halving across variants, so losing variants stop early.

```yaml
adaptive:
  method: halving      # the only method so far
  keep: 0.5            # the fraction of a round's variants that go on (rounded up)
  rounds: auto         # or an int; auto: enough rounds to get down to `finalists`
  finalists: 1         # how many variants the last round keeps
  seed: 0              # seeds the order in which scenarios are dealt into rounds
  failed_score: null   # what an unscored episode counts as when ranking; null: left out
```

**Dealing.** The spec's scenario x repeat pairs ("units") are put in a fixed order: repeat by
repeat (so the early rounds see as many distinct scenarios as there are), and within a repeat
by `sha256(seed, scenario, repeat)`, a shuffle that no library or Python version can change.
The order is cut into `rounds` consecutive chunks of equal size (sizes differ by at most one,
the larger ones first). Every team runs every unit of its round.

**A round.** Round r runs every variant still in on round r's chunk. Then the variants are
ranked by the mean primary score over all their rows so far (every round up to r: the variants
still in have all run the same units, so the means are comparable), with its 95% bootstrap
interval (`stats.mean_ci`); ties on the mean go to the variant with fewer unscored
episodes, then to the one listed first in the spec. The first
`max(finalists, min(n - 1, ceil(n * keep)))` go on; the rest stop, each with its reason (mean,
interval, rank, the cutoff, the leader, whether its interval lies wholly below the leader's).
Since the counts never depend on the scores, the plan's episode count is exact and known before
anything runs.

**Failures.** As in every summary, a failed episode (or one whose primary evaluation failed) is
left out of the mean by default; `failed_score: 0` counts it as 0 instead. A variant without a
single scored episode ranks last.

**Resume.** A decided round is stored in the rollout's info and read back, never redecided. A
round without a decision runs its missing episodes (failed ones again, as in any resume) and is
decided from the stored rows: the same rows give the same decision (the bootstrap is seeded).

Pure code: no Ray; `p2e/rollouts/run.py` drives the rounds with the coordinator.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from p2e.errors import InvalidArgument
from p2e.rollouts.halving import next_count, round_count, schedule
from p2e.rollouts.plan import Episode, Episodes
from p2e.rollouts.spec import Resolved
from p2e.rollouts.stats import VariantSummary, counted, mean_ci
from p2e.rollouts.store import AdaptiveRecord, RoundRecord, Row, Standing

Unit = tuple[int, str]
"""(repeat index, scenario id): one cell of the scenario x repeat grid."""


def deal(scenarios: Sequence[str], repeats: int, rounds: int, seed: int = 0) -> dict[Unit, int]:
    """Each (repeat index, scenario) -> its round (1-based): see the module's docstring."""

    def shuffled(u: Unit) -> tuple[int, str]:
        return u[0], hashlib.sha256(f"{seed}\0{u[1]}\0{u[0]}".encode()).hexdigest()

    order = sorted(((rep, s) for rep in range(repeats) for s in scenarios), key=shuffled)
    if not 1 <= rounds <= len(order):
        raise InvalidArgument(f"cannot deal {len(order)} scenario x repeat pairs into {rounds} rounds")
    size, extra = divmod(len(order), rounds)
    out: dict[Unit, int] = {}
    at = 0
    for r in range(rounds):
        n = size + (r < extra)
        for u in order[at : at + n]:
            out[u] = r + 1
        at += n
    return out


class Halving:
    """A spec's successive-halving plan over its expanded episodes, and the decision of a
    round from rows."""

    def __init__(self, resolved: Resolved, episodes: Sequence[Episode]):
        cfg = resolved.spec.adaptive
        if cfg is None:
            raise InvalidArgument(f"{resolved.path}: the spec has no `adaptive` section")
        self.cfg = cfg
        self.order = [v.name for v in resolved.variants]
        self.rounds = round_count(cfg, len(self.order))
        self.round_of = deal(
            [s.id for s in resolved.scenarios], len(resolved.spec.seeds), self.rounds, cfg.seed
        )
        self.teams = len(resolved.spec.teams)
        self.grid = len(episodes)
        self._expanded = episodes
        self.units = [sum(r == k for r in self.round_of.values()) for k in range(1, self.rounds + 1)]
        self.counts = schedule(cfg, len(self.order))
        self.plan = [
            {"round": k + 1, "units": u, "variants": n, "episodes": n * u * self.teams}
            for k, (u, n) in enumerate(zip(self.units, self.counts, strict=True))
        ]
        self.total = sum(p["episodes"] for p in self.plan)

    @property
    def episodes(self) -> Iterator[Episode]:
        """Every episode of the grid, with its round, in expansion order (built as read)."""
        for e in self._expanded:
            yield e.model_copy(update={"round": self.round_of[(e.repeat, e.scenario)]})

    def record(self) -> AdaptiveRecord:
        """The plan, before any decision."""
        return AdaptiveRecord(
            method=self.cfg.method,
            keep=self.cfg.keep,
            finalists=self.cfg.finalists,
            rounds=self.rounds,
            plan=self.plan,
            grid_episodes=self.grid,
        )

    def episodes_of(self, round_: int, variants: Iterable[str]) -> Iterator[Episode]:
        """Round `round_`'s episodes for these variants, in expansion order (built as read: a
        round of a million-episode grid is never held at once)."""
        alive = set(variants)
        units = {u for u, r in self.round_of.items() if r == round_}
        if isinstance(self._expanded, Episodes):
            chosen: Iterator[Episode] = self._expanded.where(alive, units)
        else:
            chosen = (e for e in self._expanded if e.variant in alive and (e.repeat, e.scenario) in units)
        for e in chosen:
            yield e.model_copy(update={"round": round_})

    def decide(self, round_: int, variants: Sequence[str], rows: Iterable[Row]) -> RoundRecord:
        """Rank the round's variants by their rows of rounds 1..`round_`, keep the best."""
        return decide(
            round_,
            [v for v in self.order if v in set(variants)],
            rows,
            keep=next_count(len(variants), self.cfg.keep, self.cfg.finalists),
            failed_score=self.cfg.failed_score,
            units=self.units[round_ - 1],
            episodes=self.plan[round_ - 1]["episodes"],
        )

    def replay(self, rows: Iterable[Row]) -> list[RoundRecord]:
        """The decisions halving would make on the rows of a full grid of the same spec (a plain
        rollout of it, say): each row is dealt into its round, and each round decided on the rows
        it would have had by then. Runs nothing; with deterministic models it is exactly what an
        adaptive run would decide."""
        tagged = [
            r.model_copy(update={"round": self.round_of[(r.repeat, r.scenario)]})
            for r in rows
            if (r.repeat, r.scenario) in self.round_of
        ]
        variants, out = list(self.order), []
        for k in range(1, self.rounds + 1):
            rec = self.decide(k, variants, [r for r in tagged if r.round is not None and r.round <= k])
            out.append(rec)
            variants = rec.kept
        return out


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _ci(s: Standing) -> str:
    return f"[{_fmt(s.ci_low)}, {_fmt(s.ci_high)}]" if s.ci_low is not None else "[no interval: n < 2]"


def decide(
    round_: int,
    variants: Sequence[str],
    rows: Iterable[Row],
    *,
    keep: int,
    failed_score: float | None = None,
    units: int = 0,
    episodes: int = 0,
) -> RoundRecord:
    """The decision of one round: `variants` (in spec order, which breaks the last ties) ranked
    by the mean primary score of their rows of rounds up to `round_`; the first `keep` go on."""
    scored: dict[str, array[float]] = {v: array("d") for v in variants}
    unscored, failures = dict.fromkeys(variants, 0), dict.fromkeys(variants, 0)
    for r in rows:  # one pass, keeping each variant's scores only (8 bytes an episode)
        if r.variant in scored and (r.round is None or r.round <= round_):
            if (x := counted(r)) is None:
                unscored[r.variant] += 1
            else:
                scored[r.variant].append(x)
            failures[r.variant] += r.status == "failed"
    raw: list[tuple[tuple[Any, ...], Standing]] = []
    for index, v in enumerate(variants):
        scores = list(scored[v])
        if failed_score is not None:
            scores += [failed_score] * unscored[v]
        m = mean_ci(scores)
        mean = m.mean
        s = Standing(
            variant=v,
            rank=0,
            n=m.n,
            failures=failures[v],
            mean=mean,
            ci_low=m.ci_low,
            ci_high=m.ci_high,
            kept=False,
        )
        # rounded, so that equal means summed in another order still tie
        key = (mean is None, -round(mean, 9) if mean is not None else 0.0, unscored[v], index)
        raw.append((key, s))
    raw.sort(key=lambda ks: ks[0])
    leader = raw[0][1]
    cut_key = raw[keep - 1][0]
    cutoff = raw[keep - 1][1].mean
    out = []
    for rank, (key, s) in enumerate(raw, 1):
        kept = rank <= keep
        update: dict[str, Any] = {"rank": rank, "kept": kept}
        if not kept:
            tied = key[:2] == cut_key[:2] and s.mean is not None
            separated = s.ci_high is not None and leader.ci_low is not None and s.ci_high < leader.ci_low
            tie_break = ("more unscored" if key[2] != cut_key[2] else "spec order") if tied else ""
            reason = _reason(round_, s, rank, len(raw), keep, cutoff, leader, tie_break, separated)
            update |= {"tied": tied, "tie_break": tie_break, "separated": separated, "reason": reason}
        out.append(s.model_copy(update=update))
    return RoundRecord(
        round=round_,
        variants=list(variants),
        units=units,
        episodes=episodes,
        cutoff=cutoff,
        leader=leader.variant,
        standings=out,
    )


def _reason(
    round_: int,
    s: Standing,
    rank: int,
    of: int,
    keep: int,
    cutoff: float | None,
    leader: Standing,
    tie_break: str,
    separated: bool,
) -> str:
    if s.mean is None:
        return f"round {round_}: no scored episode ({s.failures} failed); ranked last ({rank} of {of})"
    text = (
        f"round {round_}: mean {_fmt(s.mean)} {_ci(s)} over {s.n} episodes, rank {rank} of {of}; "
        f"the cutoff (rank {keep}) was {_fmt(cutoff)}"
    )
    if tie_break:
        why = "more unscored episodes" if tie_break == "more unscored" else "being listed later in the spec"
        text += f"; tied with the cutoff, ranked below it for {why}"
    lead = f"{leader.variant} {_fmt(leader.mean)} {_ci(leader)}"
    if separated:
        text += f"; its interval lies wholly below the leader's ({lead})"
    else:
        text += f"; its interval overlaps the leader's ({lead}): stopped on the point estimate"
    return text


def outcomes(record: AdaptiveRecord) -> dict[str, str]:
    """Variant -> what became of it: `winner`, `finalist`, `stopped after round r`, `in round r`."""
    out: dict[str, str] = {}
    for rec in record.decided:
        for s in rec.stopped:
            out[s.variant] = f"stopped after round {rec.round}"
    done = len(record.decided) == record.rounds
    for i, v in enumerate(record.survivors if done else []):
        out[v] = "winner" if i == 0 else "finalist"
    if not done and record.decided:
        for v in record.decided[-1].kept:
            out[v] = f"in round {len(record.decided) + 1}"
    return out


def annotate(summaries: list[VariantSummary], record: AdaptiveRecord | None) -> list[VariantSummary]:
    """Summaries with each variant's fate in the adaptive rollout (`outcome`)."""
    if record is None:
        return summaries
    fate = outcomes(record)
    return [s.model_copy(update={"outcome": fate.get(s.variant.rsplit("/", 1)[-1])}) for s in summaries]
