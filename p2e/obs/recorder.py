"""Conversations, rollouts and ledgers as Rerun entities.

Entity layout (every name part escaped; `C` a conversation name, `B` a branch):

| entity | archetype | what |
| --- | --- | --- |
| `conversations/C/B/log/{user,system,AGENT}` | TextLog | messages, tool calls and results, per speaker |
| `conversations/C/B/stack/depth` | Scalars | interaction stack depth after each event |
| `conversations/C/B/stack/frames` | TextDocument | the stack (top first), when it changes |
| `conversations/C/B/graph` | GraphNodes + GraphEdges | user, agents, tools; an edge per caller -> callee |
| `conversations/C/B/usage` | Scalars | tokens, latency_ms, cost_usd of each step (agent reply) |
| `conversations/C/B/artifacts/AGENT/TOOL` | TextDocument | the latest output of each tool |
| `conversations/C/B/answer` | TextDocument | the root agent's latest answer |
| `conversations/C/B/scores/EVALUATOR` | Scalars | score of each step (or of the episode) |
| `conversations/C/B/rationales/EVALUATOR` | TextDocument | the evaluator's rationale (a judge's) |
| `rollouts/R/episodes` | TextLog | one line per finished episode |
| `rollouts/R/leaderboard` (+`/table`) | BarChart (+TextDocument) | mean score per variant, ranked |
| `rollouts/R/matrix` | TextDocument | variant x scenario mean scores |
| `rollouts/R/METRIC/VARIANT` | Scalars | score, cost_usd, tokens, wall_s, steps per episode |
| `rollouts/R/scores/EVALUATOR/VARIANT` | Scalars | each evaluator's score per episode |
| `ledger/PARTY` | Scalars | balance |

In `compact` detail (see `Detail`) a branch has one `log` entity and the conversations share
one graph, `conversations/graph`.

Timelines: `step` (the event's seq on its branch), `time` (the event's own timestamp; for scores
and ledger snapshots, when they were observed), `episode` (rows in order of arrival).

Every text goes through the redactor first. Many events of one entity are sent as columns (one
call for the batch); Rerun's per-call cost, not the data, is what an observer spends its CPU on.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

import numpy as np
import rerun as rr
import rerun.blueprint as rrb
from pydantic import BaseModel

from p2e.errors import InvalidArgument
from p2e.evals.score import Score
from p2e.events import AgentReply, Critique, Failed, Finished, Started, ToolResult, UserMessage
from p2e.machine import State
from p2e.obs.follow import BranchBatch, ScoreBatch, Step, Update
from p2e.obs.rows import RolloutRow, laid_out, leaderboard_markdown, matrix_markdown
from p2e.redact import Redactor, default_redactor
from p2e.rollouts.stats import Cells, Tally, ranked

STEP, TIME, EPISODE = "step", "time", "episode"
Detail = Literal["full", "compact"]
"""`full`: everything in the table above. `compact` (many conversations at once: a rollout):
one text log per branch instead of one per speaker, one delegation graph for all conversations
(`conversations/graph`), no stack or artifact documents: about a quarter of the Rerun calls per
event, and calls are what recording costs. Any one conversation can still be recorded in full
from the store afterwards (`p2e view CONV`)."""
TEXT_MAX = 4000
SUMMARY_EVERY_S = 1.0
"""A rollout's leaderboard and matrix cover every row so far: redrawn at most this often (and
at `flush`), so logging rows stays cheap however many there are."""
"""Longer texts are cut in the text log (the full text stays in the store and in artifacts)."""

USER, AGENT, TOOL = 0x50C8FFFF, 0x78DC78FF, 0xF0C850FF
"""Graph node colors (RGBA). Text log rows carry no color: the level colors them in the viewer,
and a per-row color doubles the cost of logging a row."""
USAGE_SERIES = ("tokens", "latency_ms", "cost_usd")
COLUMNS_FROM = 4
"""Rows of one entity from which one column send beats a log call per row (a send costs a few
log calls, then little per row: bench/README.md, "Observability")."""
ROLLOUT_METRICS = ("score", "cost_usd", "tokens", "wall_s", "steps")


@functools.lru_cache(maxsize=65536)
def path(*parts: str) -> str:
    return "/".join(rr.escape_entity_path_part(p) for p in parts)


def conv_path(conv: str, branch: str, *rest: str) -> str:
    return path("conversations", conv, branch, *rest)


ALL_GRAPH = "conversations/graph"
"""In compact detail: one delegation graph over every conversation recorded (who called whom
anywhere in the rollout), logged only when it grows."""


def _clip(text: str, n: int = TEXT_MAX) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _call_text(agent: str, name: str, args: Mapping[str, Any]) -> str:
    if name == "delegate":
        return f"{agent} → delegate to {args.get('agent')}: {args.get('task', '')}"
    shown = ", ".join(f"{k}={v!r}" for k, v in args.items())
    return f"{agent} → {name}({shown})"


@dataclass
class _Graph:
    nodes: dict[str, tuple[str, int]] = field(default_factory=dict)
    edges: set[tuple[str, str]] = field(default_factory=set)

    def node(self, nid: str, label: str, color: int) -> bool:
        if nid in self.nodes:
            return False
        self.nodes[nid] = (label, color)
        return True

    def edge(self, a: str, b: str) -> bool:
        if (a, b) in self.edges:
            return False
        self.edges.add((a, b))
        return True


@dataclass
class _Columns:
    """Rows for one entity and archetype, sent in one call at the end of a batch."""

    seqs: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    values: dict[str, list[Any]] = field(default_factory=dict)

    def add(self, seq: int, ts: float, **values: Any) -> None:
        self.seqs.append(seq)
        self.times.append(ts)
        for k, v in values.items():
            self.values.setdefault(k, []).append(v)


class Recorder:
    """Logs updates from a `StoreFollower`, rollout rows and ledger snapshots to one recording.

    Thread-safe: a follower thread and the code that produces rows may both call it.
    """

    def __init__(self, rec: rr.RecordingStream, redactor: Redactor | None = None, detail: Detail = "full"):
        if detail not in ("full", "compact"):
            raise InvalidArgument(f"detail {detail!r} is not one of full, compact")
        self.rec = rec
        self.detail = detail
        self.redactor = redactor or default_redactor()
        self._lock = threading.Lock()
        self._graphs: dict[tuple[str, str], _Graph] = {}
        self._last_seq: dict[tuple[str, str], int] = {}
        self._rows: dict[str, tuple[Tally, Cells]] = {}
        """Each rollout's leaderboard and matrix so far, fed row by row (no row is kept)."""
        self._logged: dict[str, int] = {}
        self._summarized: dict[str, float] = {}
        self._row_columns: dict[tuple[str, type], _Columns] = {}
        self._stale: set[str] = set()
        self._styled: set[str] = set()
        self.events = 0
        self.rows = 0

    def _t(self, s: str) -> str:
        return self.redactor.text(s)

    # --- conversations -------------------------------------------------------------------------

    def update(self, u: Update) -> None:
        if isinstance(u, BranchBatch):
            self.branch(u)
        else:
            self.scores(u)

    def updates(self, us: Iterable[Update]) -> None:
        for u in us:
            self.update(u)

    def branch(self, batch: BranchBatch) -> None:
        """Log a branch's new events (text log, stack, graph, usage, artifacts)."""
        conv, b = batch.conversation.name, batch.branch.name
        with self._lock:
            if not batch.steps:
                if batch.branch.parent:
                    self._at(batch.branch.fork_at, batch.branch.created)
                    note = f"branch {b} forked from {batch.branch.parent} at {batch.branch.fork_at}"
                    self.rec.log(self._log_entity(conv, b, "system"), rr.TextLog(note))
                return
            cols: dict[tuple[str, type], _Columns] = {}
            key = (batch.conversation.id, b) if self.detail == "full" else ("", "")
            graph = self._graphs.setdefault(key, _Graph())
            grown: Step | None = None
            for step in batch.steps:
                if self._step(conv, b, step, graph, cols):
                    grown = step
            if grown is not None and self.detail == "compact":  # the shared graph grew
                self.rec.reset_time()  # on the wall clock only: steps are per branch
                self.rec.set_time(TIME, timestamp=grown.event.ts)
                self._log_graph(ALL_GRAPH, graph)
            for (entity, kind), c in cols.items():
                self._send(entity, kind, c)
            self._last_seq[(batch.conversation.id, b)] = batch.steps[-1].event.seq or 0
            self.events += len(batch.steps)

    def _log_entity(self, conv: str, b: str, who: str) -> str:
        if self.detail == "compact":
            return conv_path(conv, b, "log")
        return conv_path(conv, b, "log", who)

    def _step(
        self, conv: str, b: str, step: Step, graph: _Graph, cols: dict[tuple[str, type], _Columns]
    ) -> bool:
        """Rows of one event go to `cols` (sent per entity at the end of the batch); the rare
        ones (a stack or graph that changed) are logged at once in full detail. True when the
        delegation graph grew."""
        e, seq = step.event, step.event.seq or 0
        full = self.detail == "full"

        def add(entity: str, kind: type, **values: Any) -> None:
            cols.setdefault((entity, kind), _Columns()).add(seq, e.ts, **values)

        for who, text, level in _lines(step):
            add(self._log_entity(conv, b, who), rr.TextLog, text=self._t(_clip(text)), level=level)
        add(conv_path(conv, b, "stack", "depth"), rr.Scalars, scalars=step.after.depth)
        if full and _stack_changed(step):
            self._at(seq, e.ts)
            frames = self._t(_stack_markdown(step.after))
            self.rec.log(
                conv_path(conv, b, "stack", "frames"), rr.TextDocument(frames, media_type="text/markdown")
            )
        grew = self._grow_graph(graph, step)
        if grew and full:
            self._at(seq, e.ts)
            self._log_graph(conv_path(conv, b, "graph"), graph)
        if isinstance(e, AgentReply):
            if e.usage is not None:
                u = e.usage
                usage = conv_path(conv, b, "usage")
                if full:  # (a style per conversation is one more call each: not for rollouts)
                    self._style(usage, rr.SeriesLines(names=list(USAGE_SERIES)))
                add(
                    usage,
                    rr.Scalars,
                    scalars=[u.prompt_tokens + u.completion_tokens, u.latency_ms, u.cost_usd],
                )
            if not e.tool_calls and step.after.depth == 1 and step.after.status == "idle":
                add(
                    conv_path(conv, b, "answer"),
                    rr.TextDocument,
                    text=self._t(e.text),
                    media_type="text/markdown",
                )
        elif full and isinstance(e, ToolResult) and e.name != "delegate":
            doc = conv_path(conv, b, "artifacts", e.agent, e.name)
            add(doc, rr.TextDocument, text=self._t(e.output), media_type="text/plain")
        return grew

    def _grow_graph(self, g: _Graph, step: Step) -> bool:
        grew = False
        state = step.after if step.after.team else step.before
        if state.team and (not g.nodes or isinstance(step.event, Started)):  # (a shared graph: each team)
            grew |= g.node("user", "user", USER)
            for agent in state.team:
                grew |= g.node(f"agent:{agent}", agent, AGENT)
            if state.root:
                grew |= g.edge("user", f"agent:{state.root}")
        e = step.event
        if isinstance(e, AgentReply):
            grew |= g.node(f"agent:{e.agent}", e.agent, AGENT)
            for c in e.tool_calls:
                if c.is_delegation:
                    target = str(c.arguments.get("agent", "?"))
                    grew |= g.node(f"agent:{target}", target, AGENT)
                    grew |= g.edge(f"agent:{e.agent}", f"agent:{target}")
                else:
                    grew |= g.node(f"tool:{c.name}", f"{c.name}()", TOOL)
                    grew |= g.edge(f"agent:{e.agent}", f"tool:{c.name}")
        return grew

    def _log_graph(self, entity: str, g: _Graph) -> None:
        ids = list(g.nodes)
        self.rec.log(
            entity,
            rr.GraphNodes(
                ids,
                labels=[g.nodes[i][0] for i in ids],
                colors=np.array([g.nodes[i][1] for i in ids], dtype=np.uint32),
            ),
            rr.GraphEdges(sorted(g.edges), graph_type="directed"),
        )

    def scores(self, batch: ScoreBatch) -> None:
        """Log done scores as scalars at their step, and rationales / errors as documents."""
        conv = batch.conversation.name
        with self._lock:
            now = time.time()
            for s in batch.scores:
                if s.status in ("pending", "running"):
                    continue
                b = s.target.branch
                seq = s.target.seq
                if seq is None:
                    seq = self._last_seq.get((batch.conversation.id, b), 0)
                self._at(seq, now)
                if s.status == "done" and s.value is not None:
                    self.rec.log(conv_path(conv, b, "scores", s.evaluator), rr.Scalars(s.value))
                if s.rationale or s.error:
                    self.rec.log(
                        conv_path(conv, b, "rationales", s.evaluator),
                        rr.TextDocument(self._t(_score_markdown(s)), media_type="text/markdown"),
                    )

    # --- rollouts ------------------------------------------------------------------------------

    def rollout_rows(self, rows: Iterable[RolloutRow | BaseModel | Mapping[str, Any]], rollout: str) -> None:
        """Log finished episodes, then the leaderboard and the variant x scenario matrix over
        every row of the rollout so far (call it as rows arrive, or once with all of them)."""
        new = [RolloutRow.of(r) for r in rows]
        if not new:
            return
        with self._lock:
            tally, cells = self._rows.setdefault(rollout, (Tally(), Cells()))
            for r in new:
                n = self._logged.get(rollout, 0)
                self._logged[rollout] = n + 1
                tally.add(r)
                cells.add(r)
                ts = r.finished if r.finished else time.time()  # 0 or None: not known
                score = "-" if r.primary is None else f"{r.primary:.3f}"
                level = "INFO" if r.status == "done" else "ERROR"
                where = f" ({r.conversation}/{r.branch})" if r.conversation else ""
                text = (
                    f"{r.variant} x {r.scenario} #{r.repeat}: {r.status}, score {score}, "
                    f"{r.steps} steps, {r.tokens} tokens, ${r.cost_usd:.4f}, {r.wall_s:.2f}s{where}"
                )
                # queued, and sent as columns with the summaries: one call per entity and batch
                episodes = self._queued(path("rollouts", rollout, "episodes"), rr.TextLog)
                episodes.add(n, ts, text=self._t(text), level=level)
                values = {"score": r.primary, "cost_usd": r.cost_usd, "tokens": r.tokens, "wall_s": r.wall_s}
                values["steps"] = r.steps
                for metric, v in values.items():
                    if v is not None and math.isfinite(v):
                        self._series(path("rollouts", rollout, metric, r.variant), r.variant)
                        self._queued(path("rollouts", rollout, metric, r.variant), rr.Scalars).add(
                            n, ts, scalars=float(v)
                        )
                for ev, v in r.scores.items():
                    if v is not None and math.isfinite(v):
                        entity = path("rollouts", rollout, "scores", ev, r.variant)
                        self._series(entity, r.variant)
                        self._queued(entity, rr.Scalars).add(n, ts, scalars=float(v))
            self.rows += len(new)
            now = time.monotonic()
            if now - self._summarized.get(rollout, -math.inf) >= SUMMARY_EVERY_S:
                self._summarize(rollout)
                self._summarized[rollout] = now
            else:
                self._stale.add(rollout)

    def _queued(self, entity: str, kind: type) -> _Columns:
        return self._row_columns.setdefault((entity, kind), _Columns())

    def _summarize(self, rollout: str) -> None:
        """The rows queued so far, then the leaderboard and the variant x scenario matrix over
        every row."""
        queued, self._row_columns = self._row_columns, {}
        for (entity, kind), c in queued.items():
            self._send(entity, kind, c, EPISODE)
        self._stale.discard(rollout)
        tally, cells = self._rows[rollout]
        board = ranked(tally.summaries())
        by_name = sorted(board, key=lambda s: s.variant)
        self.rec.log(
            path("rollouts", rollout, "leaderboard"),
            rr.BarChart([s.mean or 0.0 for s in by_name]),
        )
        bars = "bars, left to right: " + ", ".join(s.variant for s in by_name)
        table = self._t(leaderboard_markdown(board) + "\n\n" + bars)
        self.rec.log(
            path("rollouts", rollout, "leaderboard", "table"),
            rr.TextDocument(table, media_type="text/markdown"),
        )
        self.rec.log(
            path("rollouts", rollout, "matrix"),
            rr.TextDocument(self._t(matrix_markdown(*laid_out(cells.means()))), media_type="text/markdown"),
        )

    def _series(self, entity: str, name: str) -> None:
        """Per-episode values read better as points than as a line across unrelated scenarios."""
        if entity not in self._styled:  # build the style only when it is logged: once per entity
            self._style(entity, rr.SeriesPoints(names=self._t(name)))

    def _style(self, entity: str, style: Any) -> None:
        """Log a series style once per entity (static: it holds on every timeline)."""
        if entity not in self._styled:
            self._styled.add(entity)
            self.rec.log(entity, style, static=True)

    # --- ledger --------------------------------------------------------------------------------

    def ledger(
        self,
        balances: Mapping[str, int | float | Decimal | str],
        ts: float | None = None,
        name: str = "ledger",
    ) -> None:
        """Log a snapshot {party: balance} on the wall-clock timeline. Balances may be integers
        of a minor unit, Decimals or decimal strings; they are plotted as floats."""
        with self._lock:
            self.rec.reset_time()
            self.rec.set_time(TIME, timestamp=time.time() if ts is None else ts)
            for party, bal in balances.items():
                entity = path(name, party)
                self._style(entity, rr.SeriesLines(names=self._t(party)))
                self.rec.log(entity, rr.Scalars(float(Decimal(str(bal)))))

    # --- sending -------------------------------------------------------------------------------

    def _at(self, seq: int, ts: float, timeline: str = STEP) -> None:
        self.rec.reset_time()
        self.rec.set_time(timeline, sequence=seq)
        self.rec.set_time(TIME, timestamp=ts)

    def _send(self, entity: str, kind: type, c: _Columns, timeline: str = STEP) -> None:
        if len(c.seqs) < COLUMNS_FROM:
            for i, (seq, ts) in enumerate(zip(c.seqs, c.times, strict=True)):
                self._at(seq, ts, timeline)
                self.rec.log(entity, kind(**{k: v[i] for k, v in c.values.items()}))
            return
        self.rec.send_columns(
            entity,
            indexes=[
                rr.TimeColumn(timeline, sequence=np.asarray(c.seqs, dtype=np.int64)),
                rr.TimeColumn(TIME, timestamp=np.asarray(c.times, dtype=np.float64)),
            ],
            # each rerun archetype defines its own `columns`: no base class of theirs declares it
            columns=kind.columns(**c.values),  # type: ignore[attr-defined]
        )

    def flush(self) -> None:
        """Draw the rollout summaries that rows arrived for since they were last drawn, then
        flush the recording."""
        with self._lock:
            for rollout in sorted(self._stale):
                self._summarize(rollout)
        self.rec.flush()


def _lines(step: Step) -> list[tuple[str, str, str]]:
    """The text log rows of one event: (who speaks, text, level)."""
    e = step.event
    if isinstance(e, Started):
        team = ", ".join(f"{a} → {' | '.join(t)}" if t else a for a, t in e.team.items())
        return [("system", f"started: root {e.root}; team {team}", "DEBUG")]
    if isinstance(e, UserMessage):
        return [("user", f"user: {e.text}", "INFO")]
    if isinstance(e, AgentReply):
        out = []
        if e.text or not e.tool_calls:
            popped = step.after.depth < step.before.depth and step.after.depth > 0
            to = f" (answers {step.after.stack[-1].agent})" if popped else ""
            out.append((e.agent, f"{e.agent}{to}: {e.text}", "INFO"))
        for c in e.tool_calls:
            level = "INFO" if c.is_delegation else "DEBUG"
            out.append((e.agent, _call_text(e.agent, c.name, c.arguments), level))
        return out
    if isinstance(e, ToolResult):
        if e.is_error:
            return [(e.agent, f"{e.name} ✗ {e.output}", "WARN")]
        return [(e.agent, f"{e.name} → {e.output}", "DEBUG")]
    if isinstance(e, Critique):
        by = e.critic or "self-review"
        return [
            (e.critic or e.agent, f"{by} on {e.agent}'s answer: {e.text or '(review your answer)'}", "INFO")
        ]
    if isinstance(e, Failed):
        return [("system", f"failed: {e.code}: {e.message}", "ERROR")]
    if isinstance(e, Finished):
        return [("system", f"finished: {e.reason}", "INFO")]
    return []  # pragma: no cover


def _stack_changed(step: Step) -> bool:
    a, b = step.before.stack, step.after.stack
    return len(a) != len(b) or [(f.agent, f.start) for f in a] != [(f.agent, f.start) for f in b]


def _stack_markdown(state: State) -> str:
    if not state.stack:
        return "*(empty stack)*"
    lines = [f"**{state.status}**, depth {state.depth}, {state.steps} steps", ""]
    for i, f in reversed(list(enumerate(state.stack, 1))):
        task = f": {_clip(' '.join(f.task.split()), 200)}" if f.task else ""
        lines.append(f"{i}. **{f.agent}** ({f.phase}){task}")
    return "\n".join(lines)


def _score_markdown(s: Score) -> str:
    head = f"### {s.evaluator} {s.version}: " + (f"{s.value:.3f}" if s.value is not None else s.status)
    body = [head, f"target `{s.target.ref}`", ""]
    if s.error:
        body.append(f"**error**: {s.error}")
    if s.metrics:
        body.append(", ".join(f"{k} {v:g}" for k, v in s.metrics.items()))
    if s.rationale:
        body += ["", s.rationale]
    return "\n".join(body)


def blueprint(
    conversations: Sequence[tuple[str, str]] = (), rollout: str | None = None, ledger: bool = False
) -> rrb.Blueprint:
    """A layout: a tab per followed conversation branch (up to 6; more share one tab), a
    rollout tab (leaderboard, matrix, metrics, episodes), a ledger tab."""
    tabs: list[rrb.Container | rrb.View] = []
    if rollout is not None:
        base = path("rollouts", rollout)
        tabs.append(
            rrb.Vertical(
                rrb.Horizontal(
                    rrb.BarChartView(origin=f"{base}/leaderboard", name="mean score per variant"),
                    rrb.TextDocumentView(origin=f"{base}/leaderboard/table", name="leaderboard"),
                    rrb.TextDocumentView(origin=f"{base}/matrix", name="variant x scenario"),
                ),
                rrb.Grid(
                    *(rrb.TimeSeriesView(origin=f"{base}/{m}", name=m) for m in ROLLOUT_METRICS),
                    rrb.TextLogView(origin=f"{base}/episodes", name="episodes"),
                ),
                name=f"rollout {rollout}",
            )
        )
    if len(conversations) <= 6:
        tabs += [_conversation_tab(c, b) for c, b in conversations]
    if len(conversations) > 6 or (rollout is not None and not conversations):
        tabs.append(
            rrb.Horizontal(
                rrb.TextLogView(origin="conversations", name="messages (all conversations)"),
                rrb.TimeSeriesView(
                    origin="conversations", contents="conversations/**/stack/depth", name="stack depth"
                ),
                name="conversations",
            )
        )
    if ledger:
        tabs.append(rrb.TimeSeriesView(origin="ledger", name="ledger balances"))
    if not tabs:
        tabs.append(rrb.TextLogView(origin="/", name="log"))
    return rrb.Blueprint(rrb.Tabs(*tabs), collapse_panels=False)


def _conversation_tab(conv: str, branch: str) -> rrb.Container:
    base = conv_path(conv, branch)
    return rrb.Horizontal(
        rrb.TextLogView(origin=f"{base}/log", name="messages and tool calls"),
        rrb.Vertical(
            rrb.GraphView(origin=f"{base}/graph", name="delegation graph"),
            rrb.TimeSeriesView(origin=f"{base}/stack", name="stack depth"),
            rrb.TimeSeriesView(origin=f"{base}/usage", name="tokens, latency (ms), cost ($) per step"),
            rrb.TimeSeriesView(origin=f"{base}/scores", name="scores"),
        ),
        rrb.Vertical(
            rrb.TextDocumentView(origin=f"{base}/stack/frames", name="interaction stack"),
            rrb.TextDocumentView(origin=f"{base}/answer", name="answer"),
            rrb.TextDocumentView(origin=f"{base}/artifacts", name="artifacts"),
            rrb.TextDocumentView(origin=f"{base}/rationales", name="judge rationales"),
        ),
        column_shares=[2, 2, 1.5],
        name=f"{conv}/{branch}",
    )
