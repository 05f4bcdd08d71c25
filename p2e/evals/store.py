"""Scores in the store: one hash per conversation, a field per (evaluator, target).

A step's score is filed under the step's canonical ref (the branch that stores the event), so a
fork that inherits the step shares the score instead of copying it, and re-running an evaluation
overwrites its own field (a retried or repeated evaluation is never counted twice).
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import ValidationError

from p2e.errors import CorruptData
from p2e.evals.score import Score, Target
from p2e.redact import default_redactor
from p2e.store import BranchInfo, EventLog


def field(score: Score) -> str:
    return f"{score.evaluator}@{score.target.ref}"


class ScoreStore:
    def __init__(self, log: EventLog):
        self.log = log

    def put(self, scores: Iterable[Score]) -> None:
        writes = self.writes(scores)
        if writes:
            with self.log.guard():
                p = self.log.r.pipeline(transaction=False)
                for key, fields in writes.items():
                    p.hset(key, items=[x for kv in fields.items() for x in kv])
                p.execute()

    def writes(self, scores: Iterable[Score]) -> dict[str, dict[str, bytes]]:
        """The hash fields that store these scores, per key (for callers with their own
        connection, such as a supervisor's group commit)."""
        out: dict[str, dict[str, bytes]] = {}
        mask = default_redactor().data  # a rationale or an error may quote a key the answer had
        for s in scores:
            out.setdefault(self.log.keys.scores(s.target.conversation), {})[field(s)] = mask(
                s.model_dump_json().encode()
            )
        return out

    def all(self, conv: str) -> list[Score]:
        """Every score of a conversation, whatever its branch."""
        cid = self.log.resolve(conv)
        key = self.log.keys.scores(cid)
        raw = self.log.fields(key)
        out = []
        for name, value in raw.items():
            try:
                out.append(Score.model_validate_json(value))
            except ValidationError as e:
                raise CorruptData(key, f"field {name[:60]!r} is not a score ({e.errors()[0]['msg']})") from e
        return sorted(
            out, key=lambda s: (s.target.branch, -1 if s.target.seq is None else s.target.seq, s.evaluator)
        )

    def of_branch(self, info: BranchInfo, scores: list[Score] | None = None) -> list[Score]:
        """The scores that count for a branch: its episode scores and those of every step in its
        history, inherited steps included (they are filed under the branch that stores them)."""
        scores = self.all(info.conversation) if scores is None else scores
        owned = {(s.branch, seq) for s in info.segments for seq in range(s.lo, s.hi)}
        return [
            s
            for s in scores
            if (s.target.seq is None and s.target.branch == info.name)
            or (s.target.seq is not None and (s.target.branch, s.target.seq) in owned)
        ]

    def target_of(self, info: BranchInfo, seq: int | None) -> Target:
        """The canonical target of event `seq` of a branch (None: the branch as an episode)."""
        if seq is None:
            return Target(conversation=info.conversation, branch=info.name)
        return Target(conversation=info.conversation, branch=self.log.owner(info, seq), seq=seq)
