"""Reading the YAML files users write (specs, agents, rubrics, mock rules), with errors they can act
on: the file and what is wrong, and for a schema problem the field, as `a.b[0].c`.

Hostile documents are refused on one line instead of exhausting the machine: nesting deeper than
`MAX_DEPTH`, more than `MAX_NODES` values once aliases are expanded (a "billion laughs" is a few
lines whose aliases expand to billions), a recursive alias, and a key given twice in one mapping
(YAML keeps the last silently; it is almost always a mistake). Anchors, aliases and `<<` merges
within those bounds read as usual."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from yaml.composer import Composer
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import AliasEvent, NodeEvent
from yaml.nodes import MappingNode, ScalarNode
from yaml.reader import ReaderError
from yaml.resolver import Resolver

from p2e.errors import InvalidArgument
from p2e.textfile import read_text

MAX_DEPTH = 100
"""The deepest nesting of lists and mappings read; PyYAML composes recursively."""
MAX_NODES = 1_000_000
"""The most values (scalars, lists, mappings, keys included) a document may hold, aliases expanded."""

try:
    from yaml._yaml import CParser as _Parser  # libyaml's: three times as fast as PyYAML's own
except ImportError:  # a PyYAML built without libyaml
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _Parser(Reader, Scanner, Parser):  # type: ignore[no-redef]  # stands in for CParser
        def __init__(self, stream: str) -> None:
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            Parser.__init__(self)


class _Refused(yaml.MarkedYAMLError):
    """Valid YAML that p2e does not load; `problem` is the whole message."""


class _Loader(Composer, _Parser, SafeConstructor, Resolver):
    """PyYAML's safe loader, bounded: it counts values and depth as it composes the document."""

    def __init__(self, text: str) -> None:
        _Parser.__init__(self, text)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self._depth = 0
        self._nodes = 0
        self._sizes: dict[str | None, int] = {}  # anchor -> values in its node, aliases expanded

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        assert isinstance(event, NodeEvent) and event.start_mark  # a node's first event, marked
        line = event.start_mark.line + 1
        if isinstance(event, AliasEvent):
            node = super().compose_node(parent, index)
            size = self._sizes.get(event.anchor)
            if size is None:  # composed already, not finished: the alias is inside it
                raise _Refused(
                    problem=f"the alias *{event.anchor} at line {line} is inside the value it names"
                )
            self._count(size, line, event.anchor)
            return node
        if self._depth == MAX_DEPTH:
            raise _Refused(problem=f"lists and mappings nested more than {MAX_DEPTH} deep (line {line})")
        before = self._nodes
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._count(1, line)
        if event.anchor is not None:
            self._sizes[event.anchor] = self._nodes - before
        return node

    def _count(self, n: int, line: int, alias: str | None = None) -> None:
        self._nodes += n
        if self._nodes <= MAX_NODES:
            return
        if alias is None:
            raise _Refused(
                problem=f"more than {MAX_NODES:,} values (at line {line}); p2e reads no larger documents"
            )
        raise _Refused(
            problem=f"the alias *{alias} at line {line} expands the document past {MAX_NODES:,} values "
            '(nested aliases, a "billion laughs"?); p2e reads no larger documents'
        )

    def compose_mapping_node(self, anchor: Any) -> Any:
        node = super().compose_mapping_node(anchor)
        seen: dict[tuple[str, str], int] = {}
        for key, _ in node.value:
            if isinstance(key, ScalarNode):
                line = key.start_mark.line + 1
                if (key.tag, key.value) in seen:
                    first = seen[(key.tag, key.value)]
                    raise _Refused(
                        problem=f"key {key.value!r} is given twice in one mapping "
                        f"(lines {first} and {line}); keep one"
                    )
                seen[(key.tag, key.value)] = line
        return node

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as e:  # e.g. an int of 5,000 digits, a date 2024-13-45
            value = node.value if isinstance(node.value, str) else ""
            value = value if len(value) <= 40 else value[:40] + "..."
            raise ConstructorError(None, None, f"cannot read {value!r}: {e}", node.start_mark) from None


def _describe(e: yaml.YAMLError) -> str:
    """A YAML error on one line (PyYAML's own span several, with a snippet of the document)."""
    if isinstance(e, _Refused):
        return str(e.problem)
    if isinstance(e, yaml.MarkedYAMLError):

        def at(mark: Any) -> str:
            return f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""

        context = f" ({e.context}{at(e.context_mark)})" if e.context else ""
        return f"not valid YAML{at(e.problem_mark)}: {e.problem}{context}"
    if isinstance(e, ReaderError):
        return f"not valid YAML: character #x{e.character:04x} at offset {e.position}: {e.reason}"
    return "not valid YAML: " + " ".join(str(e).split())


def _load(text: str, where: str) -> tuple[Any, yaml.Node | None]:
    """The document and its node tree (for lines), parsed once."""
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            return (None if node is None else loader.construct_document(node)), node
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        raise InvalidArgument(f"{where}: {_describe(e)}") from None
    except UnicodeEncodeError:  # a command-line value that was not UTF-8 (files are decoded strictly)
        raise InvalidArgument(f"{where}: not UTF-8 text") from None


def parse_yaml(text: str, where: str) -> Any:
    """YAML text given some other way (a command-line value), with the files' bounds."""
    return _load(text, where)[0]


def read_yaml(path: str | Path, what: str) -> Any:
    """The parsed file; `InvalidArgument` naming `what` ("agents file", ...) and the path."""
    return _load(read_text(path, what), f"{what} {path}")[0]


Lines = dict[tuple[Any, ...], int]
"""Where each value of a YAML document starts: field path (as pydantic's `loc`) -> 1-based line."""


def read_yaml_lines(path: str | Path, what: str) -> tuple[Any, Lines]:
    """`read_yaml`, plus the line of every mapping value and list item, so schema errors can
    point at the line to fix."""
    data, root = _load(read_text(path, what), f"{what} {path}")
    lines: Lines = {}

    def walk(node: yaml.Node, at: tuple[Any, ...]) -> None:
        lines[at] = node.start_mark.line + 1
        if isinstance(node, MappingNode):
            for k, v in node.value:
                lines[(*at, k.value)] = k.start_mark.line + 1
                walk(v, (*at, k.value))
                lines[(*at, k.value)] = k.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, (*at, i))

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
