"""Rich views shared by the CLI commands and the demo: events, stacks, branch trees.

Every view here is safe on any console: data goes into `DataTable` cells and `styled` lines,
never into markup (see `p2e.cli.terminal`). `summary`, `state_line` and `clip` return data.
"""

from __future__ import annotations

import datetime as dt

from rich.text import Text
from rich.tree import Tree

from p2e.cli.terminal import DataTable, styled, visible
from p2e.events import AgentReply, Critique, Event, Failed, Finished, Started, ToolResult, UserMessage
from p2e.machine import State, trace
from p2e.runtime.guided_search import Node
from p2e.store import BranchInfo, ConversationInfo

KIND_STYLE = {
    "started": "dim",
    "user_message": "bold cyan",
    "agent_reply": "green",
    "tool_result": "yellow",
    "critique": "magenta",
    "failed": "bold red",
    "finished": "bold blue",
}


def when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def clip(text: str, width: int = 80) -> str:
    """`text` on one line (control characters shown, see `visible`), cut to `width`."""
    text = " ".join(visible(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def summary(event: Event) -> str:
    """One line saying what an event is."""
    if isinstance(event, Started):
        team = ", ".join(f"{a}->{'|'.join(t)}" if t else a for a, t in event.team.items())
        return f"root {event.root}; team {team}"
    if isinstance(event, UserMessage):
        return clip(event.text)
    if isinstance(event, AgentReply):
        calls = []
        for c in event.tool_calls:
            if c.is_delegation:
                calls.append(
                    f"delegate -> {c.arguments.get('agent')}: {clip(str(c.arguments.get('task')), 40)}"
                )
            else:
                args = ", ".join(f"{k}={v!r}" for k, v in c.arguments.items())
                calls.append(f"{c.name}({clip(args, 40)})")
        parts = [clip(event.text)] if event.text else []
        return " ; ".join(parts + calls) or "(empty reply)"
    if isinstance(event, ToolResult):
        mark = "error " if event.is_error else ""
        return f"{event.name} {mark}-> {clip(event.output, 60)}"
    if isinstance(event, Critique):
        return f"review by {event.critic}: {clip(event.text)}" if event.critic else "self-review"
    if isinstance(event, Failed):
        return f"{event.code}: {event.message}"
    if isinstance(event, Finished):
        return event.reason
    return ""  # pragma: no cover


def events_table(events: list[Event], title: str = "", start: int = 0) -> DataTable:
    """Events from seq `start` on, with the depth of the frame each belongs to, so delegations
    read as indentation (`events` must begin at seq 0 for the depths to be right)."""
    table = DataTable(title=title or None, show_lines=False, expand=False)
    table.add_column("seq", justify="right")
    table.add_column("kind")
    table.add_column("agent")
    table.add_column("what", overflow="fold")
    for event, before in trace(events):
        if (event.seq or 0) < start:
            continue
        depth = max(before.depth, 1)
        agent = getattr(event, "agent", "") or ""
        table.add_row(
            str(event.seq),
            Text(event.kind, style=KIND_STYLE.get(event.kind, "")),
            ("  " * (depth - 1)) + agent,
            summary(event),
        )
    return table


def stack_table(state: State, title: str = "") -> DataTable:
    table = DataTable(title=title or None)
    table.add_column("depth", justify="right")
    table.add_column("agent")
    table.add_column("waits for")
    table.add_column("task / pending", overflow="fold")
    for i, frame in reversed(list(enumerate(state.stack, 1))):
        detail = clip(frame.task, 60) if frame.task else ""
        if frame.waiting:
            detail += f" [calls {', '.join(frame.waiting)}]"
        if frame.queue:
            detail += f" [then delegate to {', '.join(str(c.arguments.get('agent')) for c in frame.queue)}]"
        table.add_row(str(i), frame.agent, frame.phase, detail.strip())
    return table


def state_line(state: State) -> str:
    line = f"status {state.status}, {state.length} events, {state.steps} steps, depth {state.depth}"
    if state.violation:
        line += f", must fail: {state.violation.message}"
    if state.error:
        line += f", failed: {state.error.code}: {state.error.message}"
    return line


def branch_tree(conv: ConversationInfo, branches: list[BranchInfo]) -> Tree:
    """Branches as a tree of forks: each child shows where it left its parent."""
    tree = Tree(styled((conv.name, "bold"), f" ({conv.id}) root agent {conv.root}"))
    nodes: dict[str, Tree] = {}
    children: dict[str | None, list[BranchInfo]] = {}
    for b in branches:
        children.setdefault(b.parent, []).append(b)

    def label(b: BranchInfo) -> Text:
        star = (" *checked out", "bold magenta") if b.name == conv.active else ""
        fork = f", forked at {b.fork_at}" if b.parent else ""
        return styled((b.name, "bold"), f" {b.length} events ({b.length - b.fork_at} own{fork})", star)

    def add(parent_node: Tree, parent: str | None) -> None:
        for b in children.get(parent, []):
            nodes[b.name] = parent_node.add(label(b))
            add(nodes[b.name], b.name)

    add(tree, None)
    return tree


def search_tree(conv: ConversationInfo, nodes: list[Node]) -> Tree:
    """Guided-search nodes as a tree under the branches they were forked from: label, value,
    visits, and the path the conversation continued on."""
    tree = Tree(styled((conv.name, "bold"), f" ({conv.id}): guided search, {len(nodes)} nodes"))
    children: dict[str, list[Node]] = {}
    for n in nodes:
        children.setdefault(n.parent, []).append(n)
    placed = {n.branch for n in nodes}

    def label(n: Node) -> Text:
        value = (
            styled(f"{n.value:.3f}")
            if n.value is not None
            else styled(("no value", "red"), f" ({clip(n.error or '', 50)})")
        )
        chosen = (" chosen", "bold green") if n.chosen else ""
        end = " (frame over)" if n.terminal else ""
        return styled(
            (n.branch, "bold"),
            f" {n.agent} [{n.label}] value ",
            value,
            f", visits {n.visits}, {n.tokens} tokens{end}",
            chosen,
        )

    def add(node: Tree, parent: str) -> None:
        for n in children.get(parent, []):
            add(node.add(label(n)), n.branch)

    for root in sorted({n.parent for n in nodes} - placed):
        first = children[root][0]
        add(tree.add(styled((root, "bold"), f" at seq {first.fork_at}")), root)
    return tree
