"""The runtime in one process, without Ray: the same Driver, agents as plain runners.

Used by `p2e conversation replay`, by `p2e chat --local`, and by tests of the driving logic.
"""

from __future__ import annotations

from p2e.agents import TeamConfig
from p2e.runtime.agent_step import AgentRunner
from p2e.runtime.driver import Driver
from p2e.runtime.guided_search import GuidedSearch
from p2e.store import EventLog
from p2e.store.aio import GroupCommit
from p2e.streaming import Listener


def local_driver(
    log: EventLog, team: TeamConfig, listener: Listener | None = None, *, search: bool = True
) -> Driver:
    """A Driver whose agents run in this process (create it inside the event loop that uses it);
    `listener` is told of every step's partial reply as it streams (`p2e.streaming`). `search`:
    run guided searches where an agent's `guide` asks for one (a replay does not: the recording
    holds the steps a search chose)."""
    runners: dict[str, AgentRunner] = {}

    def agent(agent_id: str) -> AgentRunner:
        if agent_id not in runners:
            runners[agent_id] = AgentRunner(agent_id, team, store=log, listener=listener)
        return runners[agent_id]

    policy = GuidedSearch(team) if search else None
    return Driver(log, GroupCommit(log.url, log.keys.ns), agent, team=team, policy=policy)
