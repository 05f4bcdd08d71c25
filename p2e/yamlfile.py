"""Reading the YAML files users write (agents, rubrics, mock rules), with errors they can act on:
the file and what is wrong, and for a schema problem the field, as `a.b[0].c`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from p2e.errors import InvalidArgument


def read_yaml(path: str | Path, what: str) -> Any:
    """The parsed file; `InvalidArgument` naming `what` ("agents file", ...) and the path."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise InvalidArgument(f"no such {what}: {path} (not found)") from None
    except OSError as e:
        raise InvalidArgument(f"cannot read {what} {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise InvalidArgument(f"{what} {path}: not valid YAML: {e}") from None


Lines = dict[tuple[Any, ...], int]
"""Where each value of a YAML document starts: field path (as pydantic's `loc`) -> 1-based line."""


def read_yaml_lines(path: str | Path, what: str) -> tuple[Any, Lines]:
    """`read_yaml`, plus the line of every mapping value and list item, so schema errors can
    point at the line to fix."""
    data = read_yaml(path, what)
    lines: Lines = {}

    def walk(node: yaml.Node, at: tuple[Any, ...]) -> None:
        lines[at] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                lines[(*at, k.value)] = k.start_mark.line + 1
                walk(v, (*at, k.value))
                lines[(*at, k.value)] = k.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, (*at, i))

    root = yaml.compose(Path(path).read_text(), Loader=yaml.SafeLoader)
    if root is not None:
        walk(root, ())
    return data, lines


def line_of(lines: Lines | None, loc: tuple[Any, ...]) -> int | None:
    """The line of the deepest part of `loc` the document has (an unknown key's own line)."""
    if not lines:
        return None
    for n in range(len(loc), 0, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


def field_problems(e: ValidationError, lines: Lines | None = None) -> str:
    """Every problem of a validation error on one line: `field 'a.b[0]' (line 7): message; ...`."""

    def loc(parts: tuple[Any, ...]) -> str:
        out = ""
        for p in parts:
            out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
        return out or "(top level)"

    def msg(err: Any) -> str:
        return "unknown field (check its spelling)" if err["type"] == "extra_forbidden" else err["msg"]

    def where(err: Any) -> str:
        line = line_of(lines, tuple(err["loc"]))
        return f" (line {line})" if line else ""

    return "; ".join(f"field {loc(err['loc'])!r}{where(err)}: {msg(err)}" for err in e.errors())
