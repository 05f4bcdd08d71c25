"""What reaches the terminal: data is never read as Rich markup, and its control characters show.

Model replies, names, errors and file paths are data. Printed as Rich markup, a reply holding
`[/note]` crashes a view and `[bold]` vanishes; written raw, an ANSI escape in it can move the
cursor or retitle the terminal. So every piece of data goes through `visible` (control characters
written out, e.g. `\\x1b`) and into a `Text` that is never parsed: `styled` builds lines,
`DataTable` takes str cells as data, and the CLI's `DataConsole` reads no markup in any str it
prints, so a view that forgets still shows the data as it is.
"""

from __future__ import annotations

import re
from typing import Any

from rich.console import Console, RenderableType
from rich.style import Style
from rich.table import Table
from rich.text import Text

_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
"""C0 controls but newline and tab, DEL, C1 controls, and lone surrogates (which no terminal
encoding can write)."""

Part = str | Text | tuple[str, str | Style]


def _escape(m: re.Match[str]) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str) -> str:
    """`text` with every control character but newline and tab, and every lone surrogate,
    written out as an escape (ESC as `\\x1b`); a CRLF line ending becomes a newline."""
    return _UNPRINTABLE.sub(_escape, text.replace("\r\n", "\n"))


def styled(*parts: Part, style: str | Style = "") -> Text:
    """A line from parts: a str is data, shown as it is; `(str, style)` is data in a style;
    a `Text` is taken as built. Nothing is parsed as markup; tabs become spaces."""
    out = Text(style=style)
    for part in parts:
        if isinstance(part, Text):
            out.append_text(part)
        elif isinstance(part, tuple):
            out.append(visible(part[0]), part[1])
        else:
            out.append(visible(part))
    out.expand_tabs()  # now, not when drawn: a table measures its cells before (a tab counts 0 wide)
    return out


def _cell(value: RenderableType | None) -> RenderableType | None:
    return styled(value) if isinstance(value, str) else value


class DataTable(Table):
    """A table whose str title, headers and cells are data (see `styled`), whatever console prints it."""

    def __init__(self, *headers: Any, title: str | Text | None = None, **kwargs: Any):
        if isinstance(title, str):
            title = styled(title, style="table.title")
        super().__init__(*headers, title=title, **kwargs)

    def add_column(self, header: RenderableType = "", *args: Any, **kwargs: Any) -> None:
        super().add_column(_cell(header) or "", *args, **kwargs)

    def add_row(self, *renderables: RenderableType | None, **kwargs: Any) -> None:
        super().add_row(*(_cell(r) for r in renderables), **kwargs)


class DataConsole(Console):
    """A console for which every str is data: no markup, no emoji codes, control characters
    shown (`visible`). Styles come from `Text` objects (`styled`)."""

    def __init__(self, **kwargs: Any):
        super().__init__(markup=False, emoji=False, highlight=False, **kwargs)

    def render_str(self, text: str, **kwargs: Any) -> Text:
        out = super().render_str(visible(text), **{**kwargs, "markup": False, "emoji": False})
        out.expand_tabs()
        return out
