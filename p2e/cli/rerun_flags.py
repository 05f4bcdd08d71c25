"""The Rerun flags, for any command that can record: add the three parameters, then
`RerunOptions.from_flags(rerun, rerun_connect, rerun_save)` (see `p2e.obs.observer`).

```python
from p2e.cli.rerun_flags import RERUN, RERUN_CONNECT, RERUN_SAVE

def run(..., rerun: bool = RERUN, rerun_connect: str | None = RERUN_CONNECT,
        rerun_save: Path | None = RERUN_SAVE) -> None:
    opts = RerunOptions.from_flags(rerun, rerun_connect, rerun_save)
    with observe(opts, log, conversations=[...]) as obs: ...
```
"""

from __future__ import annotations

import typer

RERUN = typer.Option(
    False, "--rerun", help="record to Rerun and open the viewer (needs a display)", rich_help_panel="Rerun"
)
RERUN_CONNECT = typer.Option(
    None,
    "--rerun-connect",
    metavar="URL",
    help="record to a viewer running elsewhere: rerun+http://HOST:9876/proxy (or HOST:9876)",
    rich_help_panel="Rerun",
)
RERUN_SAVE = typer.Option(
    None,
    "--rerun-save",
    metavar="FILE.rrd",
    help="record to a file (open it later with `p2e view FILE.rrd` or `rerun FILE.rrd`)",
    rich_help_panel="Rerun",
)
