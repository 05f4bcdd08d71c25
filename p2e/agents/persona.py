"""Personas: Jinja templates that become an agent's system message.

`persona: planner` names `planner.j2` in the personas directory; any other text is used as an
inline template. Templates see `agent` (its spec), `delegates` (specs of the agents it may
delegate to) and `tools` (the tool specs it may call). Undefined variables are errors, so a typo
in a template fails loudly instead of rendering an empty string.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import jinja2

from p2e.agents.spec import AgentSpec
from p2e.errors import InvalidArgument
from p2e.llm.base import ToolSpec
from p2e.store.keys import NAME_RE


@lru_cache(maxsize=32)
def _env(directory: str) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(directory),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
        autoescape=False,
    )


def render_persona(
    agent: AgentSpec, delegates: list[AgentSpec], tools: list[ToolSpec], personas_dir: str | Path
) -> str:
    directory = str(Path(personas_dir).resolve())
    env = _env(directory)
    try:
        if NAME_RE.fullmatch(agent.persona):
            template = env.get_template(f"{agent.persona}.j2")
        else:
            template = env.from_string(agent.persona)
        return template.render(agent=agent, delegates=delegates, tools=tools).strip()
    except jinja2.TemplateNotFound:
        raise InvalidArgument(
            f"agent {agent.id!r}: field 'persona': no template {agent.persona}.j2 in {directory}"
        ) from None
    except jinja2.TemplateError as e:
        raise InvalidArgument(f"agent {agent.id!r}: field 'persona': the template fails: {e}") from None
