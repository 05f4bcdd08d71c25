"""A conversation as a driver hosts it: its open branch, what its agents have seen, its lock.

Shared by the driver and the turn policies it calls (`p2e.runtime.turns`), so neither imports
the other.
"""

from __future__ import annotations

import asyncio
from typing import Any

from p2e.conversation import Conversation
from p2e.events import Event
from p2e.transcript import Transcript


class Hosted:
    def __init__(self, conv: Conversation, transcript: Transcript, overrides: dict[str, dict[str, Any]]):
        self.conv = conv
        self.transcript = transcript
        self.overrides = overrides
        self.lock = asyncio.Lock()
        self.answer: str | None = None
        self.reference: str | None = None
        """The scenario's expected answer (a rollout episode), for policies that value a branch."""
        self.record: list[Event] | None = None
        """The branch's events as stored (seqs set), kept by an episode that is scored where it
        ran, so scoring reads nothing back; None when not kept (or no longer complete)."""
        self.episode = ""
        """`rollout:episode` when this is a rollout episode (see `ToolContext.episode`)."""

    def fork(self, conv: Conversation, overrides: dict[str, dict[str, Any]]) -> Hosted:
        """A child on `conv` (a fresh fork of this branch at its current length), run with
        `overrides`; it keeps its own copy of the events kept so far."""
        child = Hosted(conv, self.transcript.copy(), overrides)
        child.reference, child.episode = self.reference, self.episode
        child.record = None if self.record is None else list(self.record)
        return child

    def adopt(self, child: Hosted) -> None:
        """Continue on a child's branch (a policy chose it)."""
        self.conv, self.transcript, self.answer = child.conv, child.transcript, child.answer
        self.record = child.record
