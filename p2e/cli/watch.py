"""`p2e conversation watch CONV`: follow a live conversation in the terminal.

It reads the store like any observer (a poll every `--interval` seconds), so it can watch a
conversation hosted anywhere: on this machine, in a Ray cluster, in a rollout. The step running
now shows its reply so far, as its model writes it (`p2e.streaming`).
"""

from __future__ import annotations

import time

from rich.console import Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.text import Text

from p2e.cli._common import console
from p2e.cli.render import KIND_STYLE, clip, stack_table, state_line, summary
from p2e.cli.terminal import DataTable, styled
from p2e.obs.follow import StoreFollower
from p2e.obs.watch import WatchView
from p2e.store import EventLog
from p2e.streaming import PartialReply, read_partial

STATUS_STYLE = {"finished": "bold blue", "failed": "bold red", "running": "bold green", "idle": "cyan"}


def render(view: WatchView, note: str = "") -> RenderableType:
    """One frame: the header, the stack, the last events (tool calls included), the scores."""
    st = view.state
    title = styled(
        (f"{view.conversation.name} / {view.branch}", "bold"),
        "  ",
        (st.status, STATUS_STYLE.get(st.status, "")),
    )
    usage = f"{view.tool_calls} tool calls, {view.tokens} tokens, ${view.cost_usd:.4f}"
    parts: list[RenderableType] = [styled(f"{state_line(st)}; {usage}", style="dim")]
    if st.stack:
        parts.append(stack_table(st, "interaction stack (top first)"))
    events = DataTable(title=f"last {len(view.recent)} events", expand=True)
    events.add_column("seq", justify="right")
    events.add_column("kind")
    events.add_column("agent")
    events.add_column("what", overflow="fold", ratio=1)
    for step in view.recent:
        e = step.event
        depth = max(step.before.depth, 1)
        events.add_row(
            str(e.seq),
            Text(e.kind, style=KIND_STYLE.get(e.kind, "")),
            "  " * (depth - 1) + (getattr(e, "agent", "") or ""),
            summary(e),
        )
    parts.append(events)
    running = view.running_reply()
    if running is not None:
        parts.append(partial_view(running))
    scores = view.sorted_scores()
    if scores:
        t = DataTable(title="scores", expand=True)
        for col in ("target", "evaluator", "score", "rationale / error"):
            t.add_column(col, overflow="fold")
        for s in scores[-12:]:
            value = f"{s.value:.2f}" if s.value is not None else s.status
            t.add_row(s.target.ref, s.evaluator, value, clip(s.error or s.rationale, 100))
        parts.append(t)
    if note:
        parts.append(styled(note, style="dim"))
    return Panel(Group(*parts), title=title, title_align="left")


def partial_view(p: PartialReply) -> RenderableType:
    """The running step's reply so far: its text and the tool calls begun (arguments as sent)."""
    lines: list[RenderableType] = []
    if p.text:
        lines.append(styled(p.text))
    lines += [styled((c.name, "bold"), f"({c.arguments}") for c in p.tool_calls]
    title = styled(f"seq {p.seq}: {p.agent} is writing", " (retried)" if p.attempt else "")
    return Panel(Group(*lines), title=title, title_align="left", border_style="yellow")


def watch(
    log: EventLog,
    conv: str,
    branch: str | None = None,
    *,
    once: bool = False,
    last: int = 12,
    interval: float = 0.25,
    until_idle: bool = False,
) -> int:
    """Follow until the conversation finishes or fails (or, with `until_idle`, until the root
    agent has answered), or Ctrl-C. Returns the exit code: 0, or 1 when it failed."""
    info = log.conversation(conv)
    name = branch or log.branch(info.id).name
    follower = StoreFollower(log, [info.id], branch=name)
    view = WatchView(info, name, keep=last)
    view.apply(follower.poll())
    view.see_partial(read_partial(log, info.id, name))
    if once:
        console.print(render(view))
        return 1 if view.state.status == "failed" else 0

    def finished() -> bool:
        return view.done or (until_idle and view.state.status == "idle" and view.state.steps > 0)

    hint = "watching; Ctrl-C to stop"
    try:
        with Live(render(view, hint), console=console, refresh_per_second=8, transient=False) as live:
            while not finished():
                time.sleep(interval)
                changed = view.apply(follower.poll())
                if view.see_partial(read_partial(log, info.id, name)) or changed:
                    live.update(render(view, hint))
            live.update(render(view))
    except KeyboardInterrupt:
        console.print(
            f"stopped watching {info.name}/{name} ({view.state.status}, {view.state.length} events)"
        )
        return 0
    return 1 if view.state.status == "failed" else 0
