"""Getting results out: rows as JSONL or Parquet, and trajectories as OpenAI chat JSONL.

A trajectory is what the root agent saw and said in an episode (the user's message, its replies
with their tool calls, each tool's and delegate's answer): the shape fine-tuning APIs take.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from p2e.errors import InvalidArgument
from p2e.llm.openai import chat_message
from p2e.rollouts.store import Row
from p2e.store import EventLog
from p2e.transcript import Transcript


def flat(row: Row) -> dict[str, Any]:
    """A row as one flat record: each score becomes its own `score.<evaluator>` column."""
    d = row.model_dump(exclude={"scores", "abandoned", "ledger_deltas"})
    for name, value in sorted(row.scores.items()):
        d[f"score.{name}"] = value
    d["abandoned"] = ",".join(row.abandoned)
    d["ledger_deltas"] = json.dumps(row.ledger_deltas) if row.ledger_deltas else ""
    return d


def write_jsonl(rows: Iterable[Row], path: Path) -> int:
    n = 0
    with _atomic(path) as f:
        for row in rows:
            f.write(row.model_dump_json() + "\n")
            n += 1
    return n


def write_parquet(rows: Sequence[Row], path: Path) -> int:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        raise InvalidArgument("Parquet export needs pyarrow: pip install pyarrow") from None
    records = [flat(r) for r in rows]
    columns = sorted({k for r in records for k in r}, key=lambda k: (k.startswith("score."), k))
    table = pa.table({c: [r.get(c) for r in records] for c in columns})
    with _atomic(path, "wb") as f:
        pq.write_table(table, f)
    return len(records)


def trajectory(log: EventLog, row: Row) -> dict[str, Any]:
    """The root agent's side of an episode as `{"messages": [...]}` plus where it came from."""
    events = log.history(row.conversation, row.branch)
    transcript, _ = Transcript.rebuild(events)
    root = transcript.frames[0] if transcript.frames else []
    return {
        "messages": [chat_message(m) for m in root],
        "metadata": {
            "rollout": row.rollout,
            "episode": row.episode,
            "variant": row.variant,
            "scenario": row.scenario,
            "score": row.primary,
            "conversation": row.conversation,
            "branch": row.branch,
        },
    }


def write_trajectories(log: EventLog, rows: Iterable[Row], path: Path, min_score: float | None) -> int:
    """Done episodes (at or above `min_score` on the primary metric, if given) as chat JSONL."""
    n = 0
    with _atomic(path) as f:
        for row in rows:
            if row.status != "done" or not row.conversation:
                continue
            if min_score is not None and (row.primary is None or row.primary < min_score):
                continue
            f.write(json.dumps(trajectory(log, row), ensure_ascii=False) + "\n")
            n += 1
    return n


class _atomic:
    """Write to `path.tmp`, rename over `path` only on success: no half-written exports."""

    def __init__(self, path: Path, mode: str = "w"):
        self.path = path
        self.mode = mode
        self.tmp = path.with_name(path.name + ".tmp")

    def __enter__(self) -> Any:
        self.f = self.tmp.open(self.mode)
        return self.f

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.f.close()
        if exc_type is None:
            self.tmp.replace(self.path)
        else:
            self.tmp.unlink(missing_ok=True)
