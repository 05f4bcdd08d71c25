"""A conversation's checked-out branch and its machine state, kept in step with the store.

`step` and `submit` keep the write-ahead rule: an event is first offered to the machine (a bad
event is not stored), then appended with the expected length (so a second writer cannot
interleave), and only then does the caller act on the returned commands.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from p2e.errors import CorruptData, EventRejected, InvalidArgument, SequenceOutOfRange
from p2e.events import Event, Limits, Reflection, Started
from p2e.machine import INITIAL, Command, State, fold, handle, handle_all
from p2e.redact import default_redactor
from p2e.settings import settings
from p2e.store import BranchInfo, ConversationInfo, EventLog
from p2e.store.aio import GroupCommit
from p2e.store.log import new_conversation


class Conversation:
    def __init__(self, log: EventLog, info: ConversationInfo, branch: BranchInfo, state: State):
        self.log, self.info, self.branch, self.state = log, info, branch, state
        self.snapshot_every = settings().snapshot_every
        """P2E_SNAPSHOT_EVERY, read once per conversation: `commit` runs on every step."""

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def length(self) -> int:
        return self.state.length

    @classmethod
    def create(
        cls,
        log: EventLog,
        root: str,
        team: Mapping[str, tuple[str, ...] | list[str]],
        limits: Limits | None = None,
        name: str | None = None,
        cid: str | None = None,
        overrides: dict[str, dict[str, Any]] | None = None,
        reflection: dict[str, Reflection] | None = None,
    ) -> Conversation:
        """Create a conversation and record its `started` event (validated before anything is stored)."""
        start, _ = _started(root, team, limits, overrides, reflection)
        info = log.create_conversation(root, name, cid=cid)
        conv = cls(log, info, _main(info), INITIAL)
        conv.submit(start)
        return conv

    @classmethod
    async def acreate(
        cls,
        log: EventLog,
        writer: GroupCommit,
        root: str,
        team: Mapping[str, tuple[str, ...] | list[str]],
        limits: Limits | None = None,
        name: str | None = None,
        cid: str | None = None,
        overrides: dict[str, dict[str, Any]] | None = None,
        reflection: dict[str, Reflection] | None = None,
    ) -> tuple[Conversation, Started]:
        """`create` for async hosts: the conversation and its `started` event in one round trip
        of the group commit, with no thread. Returns the event too (as stored, seq 0)."""
        start, state = _started(root, team, limits, overrides, reflection)
        info = new_conversation(root, name, "main", cid)
        await writer.create(info, [start])
        conv = cls(log, info, _main(info), INITIAL)
        conv.commit(state)
        return conv, start.model_copy(update={"seq": 0})

    @classmethod
    def open(cls, log: EventLog, conv: str, branch: str | None = None) -> Conversation:
        """Rebuild a branch's state from its newest snapshot plus the events after it."""
        info = log.conversation(conv)
        b = log.branch(info.id, branch)
        return cls(log, info, b, rebuild(log, b))

    def submit(self, *events: Event) -> list[Command]:
        """Validate, store, then return the commands due after the last event. Strict, for
        events posted by hand: an event the machine refuses raises `EventRejected` and nothing
        is stored. (Interpreters record the outcome of `p2e.runtime.interpret.advance`.)"""
        states, commands = handle_all(self.state, events)
        return self.record(tuple(events), states, commands)

    def record(
        self, events: Sequence[Event], states: Sequence[State], commands: list[Command]
    ) -> list[Command]:
        """Store `events` as the machine took them from this state (`states[i + 1]` the state
        after `events[i]`), adopt the last state, and return `commands`, now due. Only for the
        machine's outcome: `submit`'s, or an interpreter's write-ahead step,
        `conv.record(*advance(conv.state, events))` (`p2e.runtime.interpret`), where what the
        machine refuses is not stored and ends the conversation with a `failed` event."""
        if events:
            self.log.append_to(self.id, self.branch.name, events, expected=self.state.length)
            state = states[-1]
            snapshot = self.commit(state)
            if snapshot is not None:
                self.log.save_snapshot(self.id, self.branch.name, state.length, snapshot)
        return commands

    def commit(self, state: State) -> bytes | None:
        """Adopt a prepared state once its events are stored; returns a snapshot when one is due."""
        before, self.state = self.state.length, state
        self.branch = self.branch.model_copy(update={"length": state.length})
        every = self.snapshot_every
        if before // every != state.length // every:
            # frames keep model text (a delegation's task): masked as the events it folds are
            return default_redactor().data(state.model_dump_json().encode())
        return None

    def history(self, start: int = 0, end: int | None = None) -> list[Event]:
        return self.log.read(self.branch, start, end)

    def fork(self, at: int, name: str | None = None, checkout: bool = True) -> Conversation:
        """A new branch with the first `at` events of this one; checked out by default."""
        b = self.log.fork(self.id, self.branch.name, at, name or self.free_branch_name(), checkout)
        info = self.log.conversation(self.id)
        return Conversation(self.log, info, b, rebuild(self.log, b))

    def rewind(self, seq: int, name: str | None = None) -> Conversation:
        """Go back to just after event `seq`: a new branch ending with that event, checked out."""
        if not 0 <= seq < self.length:
            raise SequenceOutOfRange(seq, self.length)
        return self.fork(seq + 1, name)

    def free_branch_name(self) -> str:
        taken = {b.name for b in self.log.branches(self.id)}
        n = len(taken)
        while f"b{n}" in taken:
            n += 1
        return f"b{n}"


def _started(
    root: str,
    team: Mapping[str, tuple[str, ...] | list[str]],
    limits: Limits | None,
    overrides: dict[str, dict[str, Any]] | None,
    reflection: dict[str, Reflection] | None,
) -> tuple[Started, State]:
    """The `started` event of a new conversation and the state it leads to, checked by the
    machine (a bad team is refused before anything is stored)."""
    start = Started(
        root=root,
        team={a: tuple(t) for a, t in team.items()},
        limits=limits or Limits(),
        overrides=overrides or {},
        reflection=reflection or {},
    )
    state, _ = handle(INITIAL, start)
    return start, state


def _main(info: ConversationInfo) -> BranchInfo:
    """A new conversation's branch, known without reading it back: empty, no parent, no lineage."""
    return BranchInfo(
        conversation=info.id,
        name=info.active,
        parent=None,
        fork_at=0,
        length=0,
        created=info.created,
        lineage=[],
    )


def rebuild(log: EventLog, branch: BranchInfo, upto: int | None = None) -> State:
    """The machine state after the first `upto` events of a branch (all of them by default)."""
    upto = branch.length if upto is None else upto
    if not 0 <= upto <= branch.length:
        raise InvalidArgument(f"cannot rebuild at {upto}: the branch holds {branch.length} events")
    state, start = INITIAL, 0
    snap = log.load_snapshot(branch, upto)
    if snap is not None:
        try:
            state, start = State.model_validate_json(snap[1]), snap[0]
        except ValueError:
            state, start = INITIAL, 0  # a bad snapshot only costs a longer replay
    try:
        return fold(log.read(branch, start, upto), state)
    except EventRejected as e:
        raise CorruptData(
            log.keys.events(branch.conversation, branch.name), f"stored history does not replay: {e}"
        ) from e
