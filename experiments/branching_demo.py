"""`make demo-branching`: a scripted conversation through the interaction-stack machine, on the store.

A planner delegates to a researcher (who calls two tools in one reply), then to a writer, and
answers the user. The demo prints the history, the stack in the middle of the delegation, then
rewinds to before the writer was asked and takes another path on a new branch, and shows the
branch tree and a diff of the two final answers. Nothing here calls a model: each agent's replies
are scripted, and `p2e.scripted.ScriptedTeam` is the interpreter that performs the machine's commands.

Run it with `make demo-branching`, then explore with `p2e conversation show demo`, `p2e conversation
branches demo`, `p2e artifact list demo`.
"""

from __future__ import annotations

from rich.console import Console
from rich.rule import Rule

from p2e import artifacts
from p2e.cli.render import branch_tree, events_table, stack_table, state_line
from p2e.conversation import Conversation, rebuild
from p2e.errors import P2EError
from p2e.events import AgentReply, ToolCall, UserMessage
from p2e.machine import pending
from p2e.scripted import ScriptedTeam
from p2e.store import connect

console = Console(highlight=False)

TEAM = {"planner": ["researcher", "writer"], "researcher": [], "writer": []}

TOOLS = {
    "weather": lambda args: f"{args.get('city', '?')}: sunny, 24C, light wind",
    "clock": lambda args: "2026-11-25 12:00 UTC",
}


def delegate(call_id: str, agent: str, task: str) -> ToolCall:
    return ToolCall(id=call_id, name="delegate", arguments={"agent": agent, "task": task})


def first_path() -> ScriptedTeam:
    planner = [
        AgentReply(agent="planner", tool_calls=(delegate("p1", "researcher", "Weather in Paris tomorrow?"),)),
        AgentReply(
            agent="planner",
            text="Sunny: a picnic works.",
            tool_calls=(delegate("p2", "writer", "Invite friends to a picnic; 24C and sunny."),),
        ),
        AgentReply(agent="planner", text="Done: tomorrow is sunny (24C) and the invitation is ready."),
    ]
    researcher = [
        AgentReply(
            agent="researcher",
            tool_calls=(
                ToolCall(id="r1", name="weather", arguments={"city": "Paris"}),
                ToolCall(id="r2", name="clock", arguments={}),
            ),
        ),
        AgentReply(agent="researcher", text="Tomorrow in Paris: sunny, 24C."),
    ]
    writer = [AgentReply(agent="writer", text="Join us for a sunny picnic by the Seine tomorrow at noon!")]
    return ScriptedTeam({"planner": planner, "researcher": researcher, "writer": writer}, TOOLS)


def second_path() -> ScriptedTeam:
    """After the rewind the planner asks the writer for a haiku instead."""
    planner = [
        AgentReply(
            agent="planner", tool_calls=(delegate("p3", "writer", "A haiku inviting friends to a picnic."),)
        ),
        AgentReply(agent="planner", text="Done: sunny tomorrow, and the invitation is a haiku."),
    ]
    writer = [AgentReply(agent="writer", text="Warm sun on the Seine\nbread, cheese, friends\ncome at noon")]
    return ScriptedTeam({"planner": planner, "writer": writer}, TOOLS)


def main() -> None:
    log = connect()
    console.print(Rule("p2e demo: a scripted delegation conversation"))
    console.print(f"store: {log.url} (namespace {log.keys.ns})")
    name = log.free_name("demo")
    conv = Conversation.create(log, "planner", TEAM, name=name)
    question = "Plan a picnic in Paris tomorrow: check the weather and write an invitation."
    console.print(f"[bold cyan]user[/]: {question}")
    for answer in first_path().run(conv, conv.submit(UserMessage(text=question))):
        console.print(f"[bold green]planner[/] answers: {answer}")

    history = conv.history()
    console.print(events_table(history, f"{name} / main"))
    mid = next(e.seq for e in history if isinstance(e, AgentReply) and e.agent == "researcher")
    assert mid is not None
    console.print(stack_table(rebuild(log, conv.branch, mid + 1), f"the stack just after seq {mid}"))

    # Rewind to just after the researcher's answer popped back to the planner, and go another way.
    popped = next(e.seq for e in history if isinstance(e, AgentReply) and e.text.startswith("Tomorrow"))
    assert popped is not None
    console.print(Rule(f"rewind to seq {popped} and take another path"))
    fork = conv.rewind(popped)
    console.print(f"new branch [bold]{fork.branch.name}[/]: {state_line(fork.state)}")
    for answer in second_path().run(fork, pending(fork.state)):  # pending: what the rewind left to do
        console.print(f"[bold green]planner[/] answers: {answer}")
    console.print(events_table(fork.history(), f"{name} / {fork.branch.name}", start=popped + 1))

    console.print(branch_tree(log.conversation(conv.id), log.branches(conv.id)))
    a = artifacts.get(log, f"{name}/main/{conv.length - 1}")
    b = artifacts.get(log, f"{name}/{fork.branch.name}/{fork.length - 1}")
    console.print(f"diff of the two final answers ({a.ref} vs {b.ref}):")
    console.print(artifacts.diff(a, b))
    console.print(Rule())
    console.print(
        f"explore: p2e conversation show {name} | p2e conversation branches {name} | "
        f"p2e conversation stack {name} --at {mid} | p2e artifact list {name}"
    )


if __name__ == "__main__":
    try:
        main()
    except P2EError as e:
        raise SystemExit(f"error: {e}") from e
