"""Tables that fit the terminal (80 columns too) without cutting an id or breaking a name.

Rich shrinks a table that is too wide by narrowing its widest columns, so an id came out as
`e386…` and a variant name broke mid-word. Here a column says what it holds: an `id` or a `name`
is never cut or wrapped (a name folds only when nothing else is left to drop), a `num` stays on
one line, `text` wraps at spaces and ends in an ellipsis when a word is too long. When the
columns do not fit, the least useful (highest `drop`) go first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.text import Text

from p2e.cli.terminal import DataTable, styled

Kind = Literal["id", "name", "num", "text"]
TEXT_MIN = 16
"""The narrowest a text column is made (it wraps within it)."""


@dataclass(frozen=True)
class Col:
    header: str
    kind: Kind = "name"
    drop: int = 0
    """0: always shown; otherwise dropped, highest first, while the table is too wide."""
    justify: Literal["left", "right"] = "left"


Cell = str | Text


def _width(cell: Cell) -> int:
    text = cell if isinstance(cell, Text) else styled(cell)
    return max((cell_len(line) for line in text.plain.split("\n")), default=0)


def _need(col: Col, cells: list[Cell]) -> int:
    """The width the column asks for: its widest cell (text: up to `TEXT_MIN`), and at least
    its longest header word (a header wraps at its spaces)."""
    header = max((cell_len(w) for w in col.header.split()), default=1)
    widest = max((_width(c) for c in cells), default=1)
    return max(header, min(widest, TEXT_MIN) if col.kind == "text" else widest)


class FitTable:
    """A table of `rows` under `cols`, laid out when it is printed: as wide as the console (or
    the panel it is in) allows, dropping columns, highest `drop` first, until every id, name
    and number fits whole."""

    def __init__(self, cols: Sequence[Col], rows: Sequence[Sequence[Cell]], title: str | None = None):
        self.cols, self.rows, self.title = list(cols), [list(r) for r in rows], title

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.table(options.max_width)

    def table(self, width: int) -> DataTable:
        cols = self.cols
        keep = list(range(len(cols)))
        needs = [_need(c, [r[i] for r in self.rows]) for i, c in enumerate(cols)]

        def total() -> int:  # cells, their padding of one each side, and n + 1 rules
            return sum(needs[i] + 3 for i in keep) + 1

        while total() > width:
            droppable = [i for i in keep if cols[i].drop]
            if not droppable:
                break
            keep.remove(max(reversed(droppable), key=lambda i: cols[i].drop))
        crowded = total() > width  # only names can give way now: they fold
        whole_headers = [max(needs[i], cell_len(c.header)) for i, c in enumerate(cols)]
        if sum(whole_headers[i] + 3 for i in keep) + 1 <= width:  # room for headers on one line
            needs = whole_headers
        table = DataTable(title=self.title)
        for i in keep:
            col = cols[i]
            whole = col.kind in ("id", "num") or (col.kind == "name" and not crowded)
            table.add_column(
                Text(col.header, no_wrap=False, overflow="fold"),
                justify=col.justify,
                no_wrap=whole,
                min_width=needs[i] if whole else min(needs[i], TEXT_MIN),
                max_width=needs[i] if whole else None,
                overflow="fold" if col.kind == "name" else "ellipsis",
            )
        for row in self.rows:
            table.add_row(*(row[i] for i in keep))
        return table
