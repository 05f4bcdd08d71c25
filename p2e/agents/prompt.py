"""What an agent's model is shown before a step: its system message (the persona rendered with
its tools and delegates) and the schemas of its tools. Pure, no I/O: the agent's step
(`p2e.runtime.agent_step`) runs it, and the pre-run check (`p2e.agents.check`) renders it to
find a persona that would fail."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from p2e.agents.persona import render_persona
from p2e.agents.spec import AgentSpec, TeamConfig
from p2e.events import DELEGATE
from p2e.llm import Message, ToolSpec
from p2e.tools import Registry


def delegate_spec(targets: Sequence[AgentSpec]) -> ToolSpec:
    """The `delegate` tool as this agent's model sees it: only its own delegates are offered."""
    names = [t.id for t in targets]
    listing = "; ".join(f"{t.id}: {t.description}" if t.description else t.id for t in targets)
    return ToolSpec(
        name=DELEGATE,
        description=f"Hand a task to another agent and get its answer back. Agents: {listing}",
        parameters={
            "type": "object",
            "properties": {
                "agent": {"type": "string", "enum": names, "description": "who does the task"},
                "task": {"type": "string", "description": "what to do, with everything the agent needs"},
            },
            "required": ["agent", "task"],
        },
    )


class Prepared(NamedTuple):
    spec: AgentSpec
    system: Message
    tools: tuple[ToolSpec, ...]


def prepare_agent(
    spec: AgentSpec, team: TeamConfig, registry: Registry, tools: Sequence[str] | None = None
) -> Prepared:
    """`spec` as it runs a step: its tools' schemas (`tools`, default all it names), `delegate`
    when it may delegate, and its persona rendered with both."""
    delegates = [team.agent(a) for a in spec.can_delegate_to]
    specs = list(registry.specs(spec.tools if tools is None else tools, agent=spec.id))
    if delegates:
        specs.append(delegate_spec(delegates))
    system = render_persona(spec, delegates, specs, team.personas_path)
    return Prepared(spec, Message(role="system", content=system), tuple(specs))
