"""Getting results out: rows as JSONL or Parquet, and trajectories as OpenAI chat JSONL.

Rows leave as flat records whose column names work unquoted in SQL (`primary_score`,
`score_<evaluator>`), with types from the `Row` model, and null scores for failed episodes.

A trajectory is what one agent saw and said in one frame of an episode (its system message, its
task, its replies with their tool calls, each tool's and delegate's answer), with the tools it was
offered: one line of OpenAI's chat fine-tuning format.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import types
import typing
from collections.abc import Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from p2e.agents import TeamConfig
from p2e.agents.check import import_tool_modules
from p2e.agents.prompt import Prepared
from p2e.agents.spec import read_team, team_from_mapping
from p2e.errors import InvalidArgument, P2EError
from p2e.events import Event, Started
from p2e.llm.base import Message
from p2e.llm.openai import chat_message, chat_tool
from p2e.machine import INITIAL, apply
from p2e.machine.state import Frame
from p2e.redact import default_redactor
from p2e.rollouts.store import PAGE, RolloutInfo, RolloutStore, Row
from p2e.runtime.agent_step import AgentRunner
from p2e.store import EventLog
from p2e.tools import REGISTRY
from p2e.transcript import Transcript

if TYPE_CHECKING:
    import pyarrow as pa

RENAMED = {"primary": "primary_score"}
"""Row fields exported under another name: `primary` is a reserved word in SQL (duckdb, SQLite)."""
SCORE_PREFIX = "score_"
_PLAIN = re.compile(r"[a-z0-9]+(?:_[a-z0-9]+)*")


def score_column(evaluator: str) -> str:
    """The export column of an evaluator's score, usable unquoted in SQL: `score_<id>` for an id
    of lower-case letters, digits and single inner underscores; any other id (`Judge`,
    `judge.v2`, `a__b`) becomes its letters and digits joined by `_`, then `__` and a digest of
    the id. A plain name never holds `__` and a digested one always does, so two evaluators never
    share a column (short of a digest collision, which `columns` refuses)."""
    if _PLAIN.fullmatch(evaluator):
        return SCORE_PREFIX + evaluator
    base = "_".join(re.findall(r"[a-z0-9]+", evaluator.lower()))
    digest = hashlib.sha256(evaluator.encode()).hexdigest()[:8]
    return f"{SCORE_PREFIX}{base}__{digest}" if base else f"{SCORE_PREFIX}_{digest}"


def score_columns(rows: Iterable[Row]) -> dict[str, str]:
    """Evaluator id -> its column, for every evaluator that scored any of `rows` (by column)."""
    out: dict[str, str] = {}
    for ev in sorted({e for r in rows for e in r.scores}):
        out[ev] = score_column(ev)
    taken: dict[str, str] = {}
    for ev, col in out.items():
        if col in taken:  # pragma: no cover - a digest collision
            raise InvalidArgument(f"evaluators {taken[col]!r} and {ev!r} map to one column {col!r}")
        taken[col] = ev
    return dict(sorted(out.items(), key=lambda kv: kv[1]))


def flat(row: Row, scores: dict[str, str] | None = None) -> dict[str, Any]:
    """A row as one flat record, the same in every export (JSONL, Parquet, `to_pandas()`):
    `primary` becomes `primary_score`, each evaluator's score its own `score_<id>` column
    (`score_columns`; default: this row's evaluators), lists are joined by commas and the
    ledger deltas are JSON text. A failed episode's scores are null, whatever the row holds:
    a failure is counted as a failure, never as a score (as in every summary)."""
    done = row.status == "done"
    d: dict[str, Any] = {}
    for name in Row.model_fields:
        if name == "scores":
            continue
        value = getattr(row, name)
        if name == "primary" and not done:
            value = None
        d[RENAMED.get(name, name)] = _flat_value(value)
    for ev, col in (score_columns([row]) if scores is None else scores).items():
        d[col] = row.scores.get(ev) if done else None
    return d


def _flat_value(value: Any) -> Any:
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True) if value else ""
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    return value


def schema(columns: dict[str, str]) -> pa.Schema:
    """The Arrow schema of the export, from the `Row` model (so a column keeps its type even
    when every value is null: `round` stays int64), plus a float64 per score column
    (`score_columns`)."""
    import pyarrow as pa

    fields = [
        pa.field(RENAMED.get(name, name), _arrow_type(f.annotation))
        for name, f in Row.model_fields.items()
        if name != "scores"
    ]
    fields += [pa.field(col, pa.float64()) for col in columns.values()]
    return pa.schema(fields)


def _arrow_type(annotation: Any) -> pa.DataType:
    import pyarrow as pa

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in args if a is not type(None)]
        return _arrow_type(inner)
    if origin is Literal or annotation is str or origin in (list, dict):  # lists, dicts: as text
        return pa.string()
    simple = {bool: pa.bool_(), int: pa.int64(), float: pa.float64()}
    return simple.get(annotation, pa.string())  # anything else leaves as text (`_flat_value`)


def batches(rows: Collection[Row]) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The rows as Arrow record batches of `PAGE` rows with the export's schema (what Parquet
    and pandas get). `rows` is read twice (the score columns, then the values), a page at a
    time: a rollout's stored rows are streamed, never all held as rows."""
    try:
        import pyarrow as pa
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        raise InvalidArgument("Parquet export needs pyarrow: pip install pyarrow") from None
    cols = score_columns(rows)
    sch = schema(cols)

    def gen() -> Iterator[pa.RecordBatch]:
        it = iter(rows)
        while page := list(itertools.islice(it, PAGE)):
            yield pa.RecordBatch.from_pylist([flat(r, cols) for r in page], schema=sch)

    return sch, gen()


def table(rows: Collection[Row]) -> pa.Table:
    """The rows as an Arrow table with the export's schema (built a page at a time)."""
    import pyarrow as pa

    sch, parts = batches(rows)
    return pa.Table.from_batches(list(parts), schema=sch)


def write_jsonl(rows: Collection[Row], path: Path) -> int:
    """One flat record per line (the Parquet export's columns and nulls). `rows` is read twice,
    streamed (see `batches`)."""
    cols = score_columns(rows)
    n = 0
    with _atomic(path) as f:
        for r in rows:
            f.write(jsonl_line(flat(r, cols)))
            n += 1
    return n


def write_parquet(rows: Collection[Row], path: Path) -> int:
    """The rows as one Parquet file, written a page at a time (see `batches`)."""
    import pyarrow.parquet as pq

    sch, parts = batches(rows)
    n = 0
    with _atomic(path, "wb") as f, pq.ParquetWriter(f, sch) as writer:
        for batch in parts:
            writer.write_batch(batch)
            n += batch.num_rows
    return n


ROOT, ALL = "root", "all"
"""`agent=` choices besides an agent's id: the episode's root agent (the default), every frame."""


class Prompts:
    """Each agent's system message and tools exactly as the runtime sent them to its model:
    `AgentRunner.prepare` (the rendered persona, the registry's tool schemas, the `delegate`
    tool), under the overrides the episode's `started` event recorded. They are rendered from the
    agents file as it is now: edit a persona after a run, and its export shows the edit."""

    def __init__(self, team: TeamConfig):
        self.team = team
        modules, failed = import_tool_modules(team.tool_modules)  # the tools' schemas, as agents saw them
        if failed:
            raise InvalidArgument(f"the rollout's agents: {failed[0][1]}")
        self.registry = REGISTRY.with_modules(modules)
        self._runners: dict[str, AgentRunner] = {}

    def prepare(self, agent: str, overrides: dict[str, Any]) -> Prepared:
        runner = self._runners.get(agent)
        if runner is None:
            runner = self._runners[agent] = AgentRunner(agent, self.team, registry=self.registry)
        return runner.prepare(overrides)


def rollout_team(info: RolloutInfo) -> TeamConfig:
    """The agents a rollout ran with, read again from its spec's `agents` (a file beside the
    spec, or the inline mapping the record keeps)."""
    base = Path(info.spec_path).parent
    agents = info.spec.get("agents", "agents.yaml")
    try:
        if isinstance(agents, str):
            return read_team(base / agents)[0]
        return team_from_mapping(agents, base.resolve(), info.spec_path)
    except InvalidArgument as e:
        raise InvalidArgument(
            f"rollout {info.id}: cannot load its agents, which the chat export renders system "
            f"messages and tools from ({e}); run the export where the rollout ran"
        ) from None


def frames(events: Sequence[Event]) -> list[tuple[Frame, list[Message]]]:
    """Every frame of a branch in the order they opened, each with the messages its agent saw
    and said (as `Transcript` folds them), including the frames that have popped."""
    t, state = Transcript(), INITIAL
    seen: dict[int, tuple[Frame, list[Message]]] = {}
    for e in events:
        after = apply(state, e)
        t.update(state, e, after)
        for frame, messages in zip(after.stack, t.frames, strict=True):
            seen[id(messages)] = (frame, messages)  # (the list object lives on in `seen`)
        state = after
    return list(seen.values())


def trajectories(
    log: EventLog, row: Row, prompts: Prompts, agent: str = ROOT, metadata: bool = False
) -> list[dict[str, Any]]:
    """An episode as OpenAI chat fine-tuning examples, one per frame of `agent` (`ROOT`: the
    root agent's frame; `ALL`: every frame): `{"messages", "tools", "parallel_tool_calls"}`,
    with the agent's system message first and `tools` left out when it has none. With
    `metadata`, a `metadata` object says where each came from (OpenAI's upload may refuse it).
    Redacted again on the way out: events stored before a key was known still hold it."""
    events = log.history(row.conversation, row.branch)
    start = events[0]
    assert isinstance(start, Started)  # (every branch begins with its `started` event)
    out = []
    for frame, messages in frames(events):
        if not _picked(agent, frame):
            continue
        if not messages or messages[-1].role != "assistant":  # (none in a done episode)
            continue
        _, system, tools = prompts.prepare(frame.agent, start.overrides.get(frame.agent, {}))
        example: dict[str, Any] = {"messages": [chat_message(m) for m in (system, *messages)]}
        if tools:
            example["tools"] = [chat_tool(t) for t in tools]
        example["parallel_tool_calls"] = start.limits.max_tool_calls_per_turn > 1
        if metadata:
            example["metadata"] = {
                "rollout": row.rollout,
                "episode": row.episode,
                "variant": row.variant,
                "scenario": row.scenario,
                "score": row.primary,
                "conversation": row.conversation,
                "branch": row.branch,
                "agent": frame.agent,
                "frame_start": frame.start,
            }
        out.append(default_redactor().value(example))
    return out


def _picked(agent: str, frame: Frame) -> bool:
    if agent == ROOT:
        return frame.call_id is None
    return agent == ALL or agent == frame.agent


def write_trajectories(
    log: EventLog,
    rows: Iterable[Row],
    path: Path,
    min_score: float | None = None,
    agent: str = ROOT,
    metadata: bool = False,
) -> int:
    """Done episodes (at or above `min_score` on the primary metric, if given) as OpenAI chat
    fine-tuning JSONL, one example per frame of `agent` (see `trajectories`). Each rollout's
    agents are loaded from its record (`rollout_team`); returns the examples written."""
    n = 0
    prompts: dict[str, Prompts] = {}
    with _atomic(path) as f:
        for row in rows:
            if row.status != "done" or not row.conversation:
                continue
            if min_score is not None and (row.primary is None or row.primary < min_score):
                continue
            if row.rollout not in prompts:
                p = prompts[row.rollout] = Prompts(rollout_team(RolloutStore(log).get(row.rollout)))
                if agent not in (ROOT, ALL):
                    p.team.agent(agent)  # an unknown agent is a mistake, not an empty export
            for example in trajectories(log, row, prompts[row.rollout], agent, metadata):
                f.write(jsonl_line(example))
                n += 1
    return n


def jsonl_line(value: Any) -> str:
    """`value` as one JSON line. Characters that `str.splitlines` takes as line breaks (U+0085,
    U+2028, U+2029) are escaped too, so a model's text cannot split a line for any reader."""
    text = json.dumps(value, ensure_ascii=False)
    return text.translate(_LINE_BREAKS) + "\n"


_LINE_BREAKS = {ord(c): f"\\u{ord(c):04x}" for c in "\x85\u2028\u2029"}


def check_output(path: Path) -> None:
    """Fail, before anything is written, when `path` cannot take an export: it is a directory or
    another non-file (replacing `/dev/null` would be a disaster), or its directory is missing or
    not writable."""
    parent, cannot = path.parent, f"cannot write the export to {path}"
    if path.is_dir():
        raise InvalidArgument(f"{cannot}: it is a directory; give the path of a file (in it, or elsewhere)")
    if path.exists() and not path.is_file():
        raise InvalidArgument(f"{cannot}: it is not a regular file; give the path of a file")
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise InvalidArgument(f"{cannot}: {parent} {what}; create that directory first, or give another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InvalidArgument(f"{cannot}: directory {parent} is not writable; give another path")


class _atomic:
    """Write to `path.tmp`, rename it over `path` only on success: no half-written export, and
    no temporary file left behind whatever fails (an error of the file system is one line)."""

    def __init__(self, path: Path, mode: str = "w"):
        check_output(path)
        self.path = path
        self.mode = mode
        self.tmp = path.with_name(path.name + ".tmp")

    def __enter__(self) -> Any:
        try:
            self.f = self.tmp.open(self.mode)
        except OSError as e:  # e.g. `path.tmp` is a directory: not ours to remove
            raise _write_failed(self.path, e) from e
        return self.f

    def __exit__(self, exc_type: Any, exc: BaseException | None, _tb: Any) -> None:
        try:
            self.f.close()
            if exc is None:
                self.tmp.replace(self.path)
        except OSError as e:
            raise _write_failed(self.path, e) from e
        finally:
            self.tmp.unlink(missing_ok=True)  # gone already when the rename succeeded
        if isinstance(exc, OSError):  # the disk filled up, the directory went away...
            raise _write_failed(self.path, exc) from exc


def _write_failed(path: Path, e: OSError) -> P2EError:
    why = e.strerror or type(e).__name__
    return P2EError(f"could not write the export to {path} ({why}); nothing was written there")
