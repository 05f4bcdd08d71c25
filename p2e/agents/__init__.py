"""Agents as data: declarations from YAML, personas from Jinja templates."""

from p2e.agents.persona import render_persona
from p2e.agents.spec import AgentSpec, EvaluatorConfig, TeamConfig, load_team

__all__ = ["AgentSpec", "EvaluatorConfig", "TeamConfig", "load_team", "render_persona"]
