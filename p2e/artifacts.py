"""Artifacts: every stored event, addressable as `CONV/BRANCH/SEQ`, with lineage and diffs.

A ref names an event by any branch whose history holds it; it resolves to the branch that
stores it (its canonical ref), so `demo/b1/3` and `demo/main/3` are the same artifact when b1
was forked from main after seq 3.
"""

from __future__ import annotations

import difflib
import json

from pydantic import BaseModel

from p2e.conversation import rebuild
from p2e.errors import NotFound, SequenceOutOfRange, UnknownArtifact
from p2e.events import AgentReply, Event, ToolResult, event_agent
from p2e.store import BranchInfo, EventLog


class Artifact(BaseModel):
    ref: str
    conversation: str
    branch: str
    seq: int
    kind: str
    agent: str | None
    event: Event
    answers: str | None = None
    """Ref of the reply whose call this event answers (a tool result, or a delegate's answer)."""


def parse_ref(ref: str) -> tuple[str, str, int]:
    parts = ref.split("/")
    if len(parts) != 3 or not parts[2].removeprefix("-").isdecimal():  # what int() reads ("²" is a digit)
        raise UnknownArtifact(ref, "artifact refs look like CONVERSATION/BRANCH/SEQ, e.g. demo/main/4")
    return parts[0], parts[1], int(parts[2])


def get(log: EventLog, ref: str) -> Artifact:
    conv, branch, seq = parse_ref(ref)
    try:
        info = log.branch(conv, branch)
        if not 0 <= seq < info.length:
            raise SequenceOutOfRange(seq, info.length)
    except (NotFound, SequenceOutOfRange) as e:
        raise UnknownArtifact(ref, str(e)) from e
    event = log.read(info, seq, seq + 1)[0]
    name = log.conversation(info.conversation).name
    answers = _answers(log, name, info, event)
    return _artifact(name, info.conversation, log.owner(info, seq), event, answers)


def list_artifacts(
    log: EventLog, conv: str, branch: str | None = None, kind: str | None = None, agent: str | None = None
) -> list[Artifact]:
    """A branch's events (inherited ones included) when `branch` is given; else every event of
    the conversation, across its branches, found through the kind/agent index."""
    info = log.conversation(conv)
    if branch is not None or (kind is None and agent is None):
        b = log.branch(info.id, branch)
        return [
            _artifact(info.name, info.id, log.owner(b, e.seq or 0), e)
            for e in log.read(b)
            if (kind is None or e.kind == kind) and (agent is None or event_agent(e) == agent)
        ]
    out = []
    refs = log.indexed(info.id, kind=kind, agent=agent)
    by_branch: dict[str, list[int]] = {}
    for name, seq in refs:
        by_branch.setdefault(name, []).append(seq)
    for name, seqs in by_branch.items():
        bi = log.branch(info.id, name)
        lo, hi = min(seqs), max(seqs) + 1
        events = {e.seq: e for e in log.read(bi, lo, hi)}
        out += [_artifact(info.name, info.id, name, events[s]) for s in seqs if s in events]
    return sorted(out, key=lambda a: (a.event.ts, a.seq))


def _artifact(name: str, cid: str, owner: str, event: Event, answers: str | None = None) -> Artifact:
    seq = event.seq if event.seq is not None else -1
    return Artifact(
        ref=f"{name}/{owner}/{seq}",
        conversation=cid,
        branch=owner,
        seq=seq,
        kind=event.kind,
        agent=event_agent(event),
        event=event,
        answers=answers,
    )


def _answers(log: EventLog, name: str, info: BranchInfo, event: Event) -> str | None:
    """The reply holding the call this event answers: a tool result's call, or for a delegate's
    final reply, the caller's delegate call (found from the stack just before the event)."""
    call_id = None
    if isinstance(event, ToolResult):
        call_id = event.call_id
    elif isinstance(event, AgentReply) and not event.tool_calls and event.seq:
        top = rebuild(log, info, event.seq).top
        call_id = top.call_id if top is not None else None
    if call_id is None or not event.seq:
        return None
    for e in reversed(log.read(info, 0, event.seq)):
        if isinstance(e, AgentReply) and any(c.id == call_id for c in e.tool_calls):
            return f"{name}/{log.owner(info, e.seq or 0)}/{e.seq}"
    return None


def render(event: Event) -> list[str]:
    """An event as lines of `field: value`; text fields keep their own lines, for diffs."""
    lines = []
    for key, value in event.model_dump(mode="json", exclude={"seq", "ts"}).items():
        if isinstance(value, str) and "\n" in value:
            lines.append(f"{key}:")
            lines += [f"  {line}" for line in value.splitlines()]
        else:
            lines.append(f"{key}: {json.dumps(value, sort_keys=True)}")
    return lines


def diff(a: Artifact, b: Artifact) -> str:
    """A unified diff of two artifacts' content (timestamps and seqs left out)."""
    out = difflib.unified_diff(render(a.event), render(b.event), fromfile=a.ref, tofile=b.ref, lineterm="")
    return "\n".join(out)
