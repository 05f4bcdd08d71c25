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


def field_problems(e: ValidationError) -> str:
    """Every problem of a validation error on one line: `field 'a.b[0]': message; ...`."""

    def loc(parts: tuple[Any, ...]) -> str:
        out = ""
        for p in parts:
            out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
        return out or "(top level)"

    def msg(err: Any) -> str:
        return "unknown field (check its spelling)" if err["type"] == "extra_forbidden" else err["msg"]

    return "; ".join(f"field {loc(err['loc'])!r}: {msg(err)}" for err in e.errors())
