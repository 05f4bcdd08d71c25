"""Re-run a recorded branch: every model call is answered from the recording (the `replay`
provider), tools run again, and the new history is compared with the old one event by event."""

from __future__ import annotations

from pydantic import BaseModel

from p2e.agents import TeamConfig
from p2e.errors import InvalidArgument
from p2e.events import Event, Started, ToolResult, UserMessage
from p2e.runtime.local import local_driver
from p2e.store import EventLog


class Difference(BaseModel):
    seq: int
    recorded: str
    replayed: str


class ReplayReport(BaseModel):
    source: str
    replay: str
    """Name of the new conversation holding the re-run."""
    events: int
    matched: bool
    """Every step is the same: the same agents, replies and tool calls, in the same order."""
    differences: list[Difference]
    tool_outputs: list[Difference]
    """Tools run again during a replay; outputs that changed (a clock, say) are listed here and do
    not by themselves make the replay a mismatch."""


def _essence(e: Event) -> str:
    """What must be equal for two events to count as the same step (no timestamps, no usage)."""
    return e.model_dump_json(exclude={"seq", "ts", "usage", "model"})


async def replay_branch(
    log: EventLog, team: TeamConfig, conv: str, branch: str | None = None
) -> ReplayReport:
    info = log.conversation(conv)
    b = log.branch(info.id, branch)
    recorded = log.read(b)
    if not recorded or not isinstance(recorded[0], Started):
        raise InvalidArgument(f"{info.name}/{b.name} has no recorded conversation to replay")
    start = recorded[0]
    models = {a: {**start.overrides.get(a, {}), "model": "replay/recorded"} for a in start.team}
    providers = {
        **team.providers,
        "replay": {
            "url": log.url,
            "namespace": log.keys.ns,
            "source": {"conversation": info.id, "branch": b.name},
        },
    }
    replay_team = team.model_copy(update={"providers": providers})
    driver = local_driver(log, replay_team, search=False)  # follow the recorded choices
    name = log.free_name(f"{info.name}-replay")
    cid = await driver.create(start.root, start.team, start.limits, name, overrides=models)
    for e in recorded[1:]:
        if isinstance(e, UserMessage):
            await driver.send(cid, e.text)
    await driver.writer.close()
    again = log.history(cid)
    diffs: list[Difference] = []
    tools: list[Difference] = []
    for i, (r, n) in enumerate(zip(recorded[1:], again[1:], strict=False), start=1):
        if _essence(r) == _essence(n):
            continue
        d = Difference(seq=i, recorded=_essence(r), replayed=_essence(n))
        same_call = isinstance(r, ToolResult) and isinstance(n, ToolResult) and r.call_id == n.call_id
        (tools if same_call else diffs).append(d)
    if len(again) != len(recorded):
        diffs.append(
            Difference(
                seq=min(len(again), len(recorded)),
                recorded=f"{len(recorded)} events",
                replayed=f"{len(again)} events",
            )
        )
    return ReplayReport(
        source=f"{info.name}/{b.name}",
        replay=name,
        events=len(recorded),
        matched=not diffs,
        differences=diffs,
        tool_outputs=tools,
    )
