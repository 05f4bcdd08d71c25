"""`p2e agent list | show`: the agents declared in the agents file."""

from __future__ import annotations

import typer

from p2e.agents import load_team, render_persona
from p2e.cli._common import AGENTS, console
from p2e.cli.terminal import DataTable, styled
from p2e.tools import REGISTRY

app = typer.Typer(
    help="The agents declared in the agents file (experiments/agents.yaml).", no_args_is_help=True
)


@app.command("list")
def list_(agents: str = AGENTS) -> None:
    """List agents: model, tools, who each may delegate to."""
    team = load_team(agents)
    table = DataTable(title=agents)
    for col in ("agent", "model", "tools", "delegates to", "replicas", "description"):
        table.add_column(col, overflow="fold")
    for a in team.agents.values():
        table.add_row(
            a.id, a.model, ", ".join(a.tools), ", ".join(a.can_delegate_to), str(a.replicas), a.description
        )
    console.print(table)


@app.command()
def show(agent: str = typer.Argument(..., metavar="AGENT", help="agent id"), agents: str = AGENTS) -> None:
    """Show one agent's settings and its rendered persona (the system message its model gets)."""
    team = load_team(agents)
    spec = team.agent(agent)
    delegates = [team.agent(d) for d in spec.can_delegate_to]
    console.print_json(spec.model_dump_json())
    console.print(styled(("persona", "bold"), ":"))
    console.print(render_persona(spec, delegates, list(REGISTRY.specs(spec.tools)), team.personas_path))
