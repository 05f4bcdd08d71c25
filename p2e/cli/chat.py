"""`p2e chat AGENT` and `p2e chat resume NAME`: talk to an agent, see the team work inline."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Group, RenderableType
from rich.panel import Panel

from p2e.cli import ids
from p2e.cli._common import AGENTS, console, open_log
from p2e.cli.dashboard import announce, wanted
from p2e.cli.render import branch_tree, events_table, state_line
from p2e.cli.terminal import styled
from p2e.conversation import rebuild
from p2e.errors import P2EError

if TYPE_CHECKING:
    from collections.abc import Callable

    from p2e.api import ChatBase
    from p2e.events import Event
    from p2e.runtime.driver import TurnResult
    from p2e.streaming import StreamDelta

HELP = (
    "commands: /rewind SEQ (fork a new branch ending at SEQ) | /resume (let the agents finish) | "
    "/branches | /checkout BRANCH | /history | /stack | /help | /exit"
)
PROMPT = styled(("you>", "bold cyan"), " ")


def chat(
    target: str = typer.Argument(..., metavar="AGENT|resume", help="the root agent, or `resume`"),
    name: str | None = typer.Argument(
        None, metavar="[NAME]", help="with `resume`: the conversation (name, id, or a unique start of one)"
    ),
    conversation: str | None = typer.Option(
        None, "--conversation", "-c", help="name the conversation (continue it if it exists)"
    ),
    agents: str = AGENTS,
    local: bool = typer.Option(False, "--local", help="run the agents in this process instead of on Ray"),
    address: str | None = typer.Option(None, "--address", help="Ray address: 'auto' or ray://host:10001"),
    no_stream: bool = typer.Option(
        False, "--no-stream", help="show the replies when the turn is over, not as the models write them"
    ),
) -> None:
    """Talk to an agent; delegations and tool calls show inline as the team works.

    Examples: p2e chat planner | p2e chat planner -c trip | p2e chat resume trip

    Inside the chat: /rewind SEQ, /branches, /checkout BRANCH, /history, /stack, /exit.
    Sending to a finished branch continues it; after /rewind the next message goes to the new branch.
    The agents' replies show as their models write them (--no-stream: only once the turn is over).
    """
    if target == "resume":
        if not name:
            raise typer.BadParameter("say which conversation to resume: p2e chat resume NAME")
        agent, conversation = None, ids.conversation(open_log(), name)
    else:
        agent = target
    session: ChatBase
    if local:
        from p2e.api import local_chat

        session = local_chat(agent, conversation, agents)
    else:
        from p2e.api import init

        logging.getLogger("ray").setLevel(logging.ERROR)
        # no dashboard unless asked (P2E_DASHBOARD=1): a chat should start fast
        opts: dict[str, Any] = {} if address else {"include_dashboard": wanted(False)}
        with console.status("starting Ray and the agents..."):
            rt = init(address, agents, log_to_driver=False, logging_level=logging.ERROR, **opts)
        announce()
        session = rt.chat(agent, conversation)
    console.print(styled("conversation ", (session.name, "bold"), f" ({session.id}); {HELP}"))
    interactive = sys.stdin.isatty()
    while True:
        try:
            line = console.input(PROMPT) if interactive else sys.stdin.readline()
        except (EOFError, KeyboardInterrupt):
            break
        if not interactive and line == "":
            break
        line = line.strip()
        if not line:
            continue
        if line in ("/exit", "/quit"):
            break
        try:
            if line.startswith("/"):
                _command(session, line, not no_stream)
            else:
                _send(session, line, stream=not no_stream)
        except P2EError as e:  # a bad command inside the chat must not end it
            console.print(styled(("error:", "bold red"), f" {e}"))
    session.close()
    console.print(f"bye; continue with: p2e chat resume {session.name}")


def _send(session: ChatBase, text: str, resume: bool = False, stream: bool = True) -> None:
    before = session.branch().length
    if not resume and rebuild(session.log, session.branch()).status == "running":
        raise P2EError(
            "this branch ends in the middle of a turn (the agents are not waiting for you): "
            "/resume lets them finish it, or /rewind to a point where the root agent had answered"
        )
    with console.status("the agents are working...") as status:
        printer = StreamPrinter(status.stop) if stream else None
        result = session.resume(on_delta=printer) if resume else session.send(text, on_delta=printer)
    if printer is not None:
        printer.end()
    console.print(turn_view(session.history(), before + 1, result))


class StreamPrinter:
    """Prints the replies as they stream, each step on its own line after its agent's name;
    the text is data (`styled`: no markup, control characters shown). A step that starts over
    (its model call was retried) says so and prints its text again from the start."""

    def __init__(self, first: Callable[[], None]):
        self.first: Callable[[], None] | None = first
        self.seq: int | None = None

    def __call__(self, delta: StreamDelta) -> None:
        if self.first is not None:  # the spinner stops: it would draw over the text
            first, self.first = self.first, None
            first()
        if delta.seq != self.seq or delta.restart:
            self.end()
            label = f"{delta.agent} (retried)> " if delta.restart else f"{delta.agent}> "
            console.print(styled((label, "bold magenta")), end="")
            self.seq = delta.seq
        console.print(styled(delta.text), end="", soft_wrap=True)

    def end(self) -> None:
        """End the line being written, if any."""
        if self.seq is not None:
            console.print()
            self.seq = None


def turn_view(history: list[Event], start: int, result: TurnResult) -> Group:
    """What a turn shows: its events (from seq `start`), the root's answer, or why it failed."""
    parts: list[RenderableType] = [events_table(history, start=start)]
    if result.answer is not None:
        parts.append(
            Panel(styled(result.answer), title=styled(f"{result.name} answers"), border_style="green")
        )
    if result.error:
        parts.append(styled(("the conversation failed:", "bold red"), f" {result.error}"))
    return Group(*parts)


def _command(session: ChatBase, line: str, stream: bool = True) -> None:
    cmd, _, arg = line.partition(" ")
    arg = arg.strip()
    if cmd == "/rewind":
        if not arg.removeprefix("-").isdecimal():  # what int() reads ("²" is a digit, "--1" is not)
            raise P2EError("usage: /rewind SEQ (see /history for the numbers)")
        branch = session.rewind(int(arg))
        state = rebuild(session.log, session.branch())
        console.print(
            styled("now on branch ", (branch, "bold"), f", ending at seq {arg}: {state_line(state)}")
        )
        if state.status == "running":
            console.print("the agents were mid-turn there: /resume lets them continue from that point")
    elif cmd == "/resume":
        _send(session, "", resume=True, stream=stream)
    elif cmd == "/branches":
        console.print(branch_tree(session.log.conversation(session.id), session.branches()))
    elif cmd == "/checkout":
        if not arg:
            raise P2EError("usage: /checkout BRANCH (see /branches)")
        session.checkout(arg)
        console.print(styled("checked out ", (arg, "bold")))
    elif cmd == "/history":
        console.print(events_table(session.history()))
    elif cmd == "/stack":
        state = rebuild(session.log, session.branch())
        console.print(state_line(state))
    elif cmd == "/help":
        console.print(HELP)
    else:
        raise P2EError(f"unknown command {cmd!r}; {HELP}")
