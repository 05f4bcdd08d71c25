"""What `p2e conversation watch` shows, kept up to date from a follower's updates.

Pure state, no terminal: the CLI renders it (`p2e/cli/watch.py`), tests read it directly.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from p2e.evals.score import Score
from p2e.events import AgentReply
from p2e.machine import INITIAL, State
from p2e.obs.follow import BranchBatch, ScoreBatch, Step, Update
from p2e.store import BranchInfo, ConversationInfo
from p2e.streaming import PartialReply


class WatchView:
    """One branch of one conversation: the stack, the last events, usage totals and scores."""

    def __init__(self, conversation: ConversationInfo, branch: str, keep: int = 12):
        self.conversation = conversation
        self.branch = branch
        self.info: BranchInfo | None = None
        self.state: State = INITIAL
        self.recent: deque[Step] = deque(maxlen=keep)
        self.scores: dict[tuple[str, str], Score] = {}
        self.tokens = 0
        self.cost_usd = 0.0
        self.tool_calls = 0
        self.partial: PartialReply | None = None
        """The reply of the running step so far, as last read (`p2e.streaming`)."""

    @property
    def done(self) -> bool:
        """Finished or failed: nothing more will happen on this branch unless someone continues it."""
        return self.state.status in ("finished", "failed")

    def apply(self, updates: Iterable[Update]) -> bool:
        """Take a poll's updates; True when something visible changed."""
        changed = False
        for u in updates:
            if isinstance(u, BranchBatch) and u.branch.name == self.branch:
                self.info = u.branch
                for step in u.steps:
                    self.recent.append(step)
                    self.state = step.after
                    if isinstance(step.event, AgentReply):
                        self.tool_calls += len(step.event.tool_calls)
                        if step.event.usage is not None:
                            usage = step.event.usage
                            self.tokens += usage.prompt_tokens + usage.completion_tokens
                            self.cost_usd += usage.cost_usd
                changed = True
            elif isinstance(u, ScoreBatch):
                for s in u.scores:
                    if self._counts(s):
                        self.scores[s.key] = s
                        changed = True
        return changed

    def see_partial(self, partial: PartialReply | None) -> bool:
        """Take the partial reply just read; True when what `running_reply` shows changed."""
        before = self.running_reply()
        self.partial = partial
        return self.running_reply() != before

    def running_reply(self) -> PartialReply | None:
        """The partial reply of the step running now: none once its seq holds an event (the
        complete reply, or the failure that ended the step)."""
        p = self.partial
        if p is None or self.state.status != "running" or not p.live(self.state.length):
            return None
        return p

    def _counts(self, s: Score) -> bool:
        """Whether a score is about this branch: its episode, or a step of its history."""
        if s.target.seq is None:
            return s.target.branch == self.branch
        if self.info is None:
            return s.target.branch == self.branch
        return any(
            seg.branch == s.target.branch and seg.lo <= s.target.seq < seg.hi for seg in self.info.segments
        )

    def sorted_scores(self) -> list[Score]:
        return sorted(
            self.scores.values(),
            key=lambda s: (-1 if s.target.seq is None else s.target.seq, s.evaluator),
        )
