"""Every problem of a file a user wrote, reported at once.

A checker adds each problem it finds (with the field and, where the file's lines are known, the
line) and raises one `InvalidFile` at the end, so a spec with three mistakes takes one run of
`p2e rollout validate` to fix, not three. One problem reads as one line; several, as a list:

    3 problems in experiments/sweep.yaml:
      line 7, field 'teams[0].root': unknown agent 'boss'; the agents are: planner, writer
      line 12, variant 'hot', field 'overrides.writer.temprature': unknown field (check its spelling)
      agents.yaml: line 4, agent 'writer', field 'model': unknown model provider 'opena'; ...
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, NamedTuple

from pydantic import ValidationError

from p2e.errors import InvalidArgument
from p2e.yamlfile import Lines, line_of

SHOWN = 50
"""The most problems one message lists; the rest are counted."""


class Problem(NamedTuple):
    where: str
    """The file (or `<spec>` for one given as data)."""
    line: int | None
    subject: str | None
    """What the field belongs to (`agent 'writer'`), when the field's path does not say."""
    field: str | None
    """As `a.b[0].c`."""
    message: str

    def text(self, within: str | None = None) -> str:
        """The problem on one line, without the file when it is `within`."""
        head = [self.where] if self.where != within else []
        at = [f"line {self.line}"] if self.line else []
        at += [self.subject] if self.subject else []
        at += [f"field {self.field!r}"] if self.field else []
        return ": ".join([*head, *([", ".join(at)] if at else []), self.message])


class InvalidFile(InvalidArgument):
    """Every problem found in a file (and in the files it points to), as one error."""

    def __init__(self, where: str, problems: list[Problem]):
        self.where = where
        self.problems = problems
        super().__init__(render(where, problems))


def render(where: str, problems: list[Problem]) -> str:
    if len(problems) == 1:
        return problems[0].text()
    lines = [f"{len(problems)} problems in {where}:", *("  " + p.text(where) for p in problems[:SHOWN])]
    if len(problems) > SHOWN:
        lines.append(f"  ... and {len(problems) - SHOWN} more")
    return "\n".join(lines)


def field_path(loc: tuple[Any, ...]) -> str | None:
    """`("teams", 0, "root")` -> `teams[0].root`."""
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or None


def error_message(err: Any) -> str:
    """A pydantic error's message, for a user (an unknown key says so, not "extra inputs")."""
    return "unknown field (check its spelling)" if err["type"] == "extra_forbidden" else err["msg"]


class Problems:
    """The problems of one file found so far."""

    def __init__(self, where: str, lines: Lines | None = None):
        self.where = where
        self.lines = lines
        self.found: list[Problem] = []
        self.line: int | None = None
        """The line of every problem, when the checker is for one line."""
        self.at: tuple[Any, ...] = ()
        """Where this checker's part of the file starts (`("agents",)`: an inline agents mapping)."""
        self.subject: str | None = None
        self.shown = 0
        """How much of `at` the fields leave out (what `subject` says already)."""

    def under(self, *loc: Any, subject: str | None = None) -> Problems:
        """A checker for a part of the file, with the same list: its locations are relative to
        `loc`; with a `subject` (`agent 'writer'`), its fields are shown relative to `loc` too."""
        sub = Problems(self.where, self.lines)
        sub.found, sub.at = self.found, (*self.at, *loc)
        sub.subject, sub.shown = (subject, len(sub.at)) if subject else (self.subject, self.shown)
        return sub

    def other_file(self, where: str, lines: Lines | None = None, line: int | None = None) -> Problems:
        """A checker for a file this one points to (an agents file; with `line`, one line of a
        JSONL file), with the same list."""
        sub = Problems(where, lines)
        sub.found, sub.line = self.found, line
        return sub

    def problem(self, message: str, *loc: Any) -> Problem:
        full = (*self.at, *loc)
        line = self.line or line_of(self.lines, full)
        return Problem(self.where, line, self.subject, field_path(full[self.shown :]), message)

    def add(self, message: str, *loc: Any) -> None:
        self.found.append(self.problem(message, *loc))

    def fail(self, message: str, *loc: Any) -> InvalidFile:
        """The problem as an error, for checkers that raise (`raise problems.fail(...)`);
        `collect` adds it."""
        return InvalidFile(self.where, [self.problem(message, *loc)])

    def validation(self, e: ValidationError, *loc: Any) -> None:
        """Each error of a pydantic validation, at its own field."""
        for err in e.errors():
            self.add(error_message(err), *loc, *err["loc"])

    def absorb(self, e: InvalidArgument, *loc: Any) -> None:
        """An error raised by other code: its problems as they are, or its message at `loc`."""
        if isinstance(e, InvalidFile):
            self.found.extend(e.problems)
        else:
            self.add(str(e), *loc)

    @contextlib.contextmanager
    def collect(self, *loc: Any) -> Iterator[None]:
        """Run a check that raises at its first problem; the problem is added, not raised."""
        try:
            yield
        except InvalidArgument as e:
            self.absorb(e, *loc)

    def __len__(self) -> int:
        return len(self.found)

    def check(self) -> None:
        """Raise every problem found, each once: this file's by line, then the other files'."""
        if self.found:
            unique = dict.fromkeys(self.found)
            order = sorted(unique, key=lambda p: (p.where != self.where, p.where, p.line or 0))
            raise InvalidFile(self.where, order)
