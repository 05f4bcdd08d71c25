"""Personas: Jinja templates that become an agent's system message.

`persona: planner` names `planner.j2` in the personas directory; any other text is used as an
inline template. Templates see `agent` (its spec), `delegates` (specs of the agents it may
delegate to) and `tools` (the tool specs it may call). Undefined variables are errors, so a typo
in a template fails loudly instead of rendering an empty string.

An agent that names no persona gets `default`: `default.j2` in the personas directory if there
is one, else the built-in `p2e/agents/personas/default.j2`, so a minimal agents file runs as it
is. Errors say what is wrong with the persona, not whose it is: the caller names the agent.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import lru_cache
from importlib import resources
from pathlib import Path

import jinja2
from jinja2.loaders import split_template_path

from p2e.agents.spec import AgentSpec
from p2e.errors import InvalidArgument
from p2e.llm.base import ToolSpec
from p2e.store.keys import NAME_RE
from p2e.templates import environment
from p2e.textfile import read_text


class _Personas(jinja2.BaseLoader):
    """The templates of one directory, read as every user file is (`read_text`): a binary, huge
    or special file fails on one line, not with a traceback or a hang."""

    def __init__(self, directory: str):
        self.directory = directory

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        path = Path(self.directory, *split_template_path(template))  # (no `..` out of it)
        if not os.path.exists(path):
            raise jinja2.TemplateNotFound(template)
        text, mtime = read_text(path, "persona template"), _mtime(path)
        return text, str(path), lambda: _mtime(path) == mtime


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


@lru_cache(maxsize=32)
def _env(directory: str) -> jinja2.Environment:
    return environment(_Personas(directory))


DEFAULT = "default"
"""The persona of an agent that names none."""


@lru_cache(maxsize=1)
def _builtin() -> jinja2.Template:
    text = resources.files("p2e.agents").joinpath("personas", f"{DEFAULT}.j2").read_text()
    return environment().from_string(text)


def render_persona(
    agent: AgentSpec, delegates: list[AgentSpec], tools: list[ToolSpec], personas_dir: str | Path
) -> str:
    directory = str(Path(personas_dir).resolve())
    env = _env(directory)
    context = {"agent": agent, "delegates": delegates, "tools": tools}
    named = NAME_RE.fullmatch(agent.persona)
    which = f"the persona template {Path(directory, agent.persona)}.j2" if named else "the inline persona"
    try:
        template = env.get_template(f"{agent.persona}.j2") if named else env.from_string(agent.persona)
        return template.render(context).strip()
    except jinja2.TemplateNotFound as e:
        if agent.persona == DEFAULT and e.name == f"{DEFAULT}.j2":  # none beside the agents file
            return _builtin().render(context).strip()
        raise InvalidArgument(f"no persona template {e.name} in {directory}") from None
    except jinja2.TemplateError as e:
        line = f": line {e.lineno}" if isinstance(e, jinja2.TemplateSyntaxError) else ""
        raise InvalidArgument(f"{which}{line}: {e.message or e}") from None
    except RecursionError:  # Jinja parses and renders recursively
        raise InvalidArgument(f"{which} nests too deep (or recurses without end)") from None
