"""Bad input to every `p2e` command gives a clear answer, never a traceback.

The commands are found by walking the Typer app, so a new command is fuzzed without a change
here. Each parameter in turn gets hostile values (unknown ids, markup, control characters, NUL,
very long text, negative and huge numbers, missing files, a directory for a file, empty text,
bad choices) while the others keep values that work on a real store holding a conversation, a
rollout and wallets; then the command must end with an exit code and no Traceback, and a
non-zero exit must say why.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer

from p2e.cli import app, main
from p2e.conversation import Conversation
from p2e.events import AgentReply, ToolCall, UserMessage
from p2e.rollouts.store import RolloutInfo, RolloutStore, Row
from p2e.scripted import ScriptedTeam
from p2e.store import EventLog

ROOT = Path(__file__).resolve().parents[1]
AGENTS = str(ROOT / "experiments" / "agents.yaml")
SPEC = str(ROOT / "experiments" / "quickstart.yaml")
RID = "fuzz-0a1b2c"

SKIPPED = {
    ("chat",): "starts Ray and reads stdin; its own tests cover it",
    ("observe",): "records until stopped; cases below that fail before starting",
    ("view",): "opens a viewer; cases below that fail before starting",
    ("rollout", "run"): "starts Ray; cases below that fail before starting",
}

TEXT = [
    "nope",
    "",
    "[/note]",
    "[bold]x[link=http://e]y",
    "a\nb",
    "a\x00b",
    "\x1b]0;owned\x07\x1b[2J",
    "é" * 4000,
    "demo/main/99999999999999999999999",
    "demo/main/-1",
    "demo/main/²",
    "demo/[/x]/1",
    "//",
]
INTEGERS = ["-1", "-99999999999999999999999", "99999999999999999999999", "abc", "", "1.5"]
FLOATS = ["-1", "nan", "inf", "-inf", "1e999", "abc", ""]

VALID: dict[str, str | list[str]] = {
    "conv": "demo",
    "seq": "2",
    "ref": "demo/main/2",
    "agent": "alice",
    "payer": "alice",
    "payee": "bob",
    "to": "alice",
    "amount": "1",
    "reason": "fuzz",
    "rollout_id": RID,
    "spec": SPEC,
    "agents": AGENTS,
    "evaluator": ["max_steps"],
}
"""Values that work, for the parameters that need one (the others are left out)."""

PER_COMMAND: dict[tuple[str, ...], dict[str, str | list[str]]] = {
    ("conversation", "checkout"): {"branch": "main"},
    ("conversation", "watch"): {"once": "--once"},
    ("artifact", "diff"): {"a": "demo/main/1", "b": "demo/main/2"},
    ("eval", "diff"): {"a": "demo/main", "b": "demo/main/2"},
    ("eval", "run"): {"on": "episode"},
    ("agent", "show"): {"agent": "planner"},
}

BEFORE_STARTING: list[list[str]] = [
    ["rollout", "run", "{missing}"],
    ["rollout", "run", "{dir}"],
    ["rollout", "run", "{binary}"],
    ["rollout", "run", ""],
    ["rollout", "run", SPEC, "--resume", "[/nope]\x1b[2J"],
    ["view", "[/nope]", "--out", "{tmp}/x.rrd"],
    ["view", "demo", "--out", "{tmp}/x.txt"],
    ["view", "demo", "--out", "{dir}"],
    ["view", "{binary}", "--out", "{tmp}/y.rrd"],
    ["observe", "[/nope]"],
    ["observe", "demo", "--rollout", RID, "--rerun-save", "{tmp}/o.rrd"],
    ["observe", "--until-done", "--rerun-save", "{tmp}/o.rrd"],
    ["observe", "--rollout", "[/nope]\x00", "--rerun-save", "{tmp}/o.rrd"],
    ["chat", "resume"],
    ["conversation", "watch", "demo", "--interval", "nan"],
    ["conversation", "watch", "demo", "--interval", "inf"],
]
"""Commands that would start something, with inputs that must fail before they do."""


@dataclass
class Param:
    name: str
    opts: list[str]
    kind: str
    """str, int, float, bool, Path."""
    argument: bool
    required: bool
    multiple: bool
    flag: bool


def _commands() -> Iterator[tuple[tuple[str, ...], list[Param]]]:
    def walk(cmd: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], list[Param]]]:
        if hasattr(cmd, "commands"):
            for name, sub in sorted(cmd.commands.items()):
                yield from walk(sub, (*path, name))
            return
        params = [
            Param(
                name=p.name,
                opts=list(p.opts),
                kind=p.bare_type(),
                argument=p.param_type_name == "argument",
                required=p.required,
                multiple=bool(p.multiple or p.nargs == -1),
                flag=bool(getattr(p, "is_flag", False)),
            )
            for p in cmd.params
        ]
        yield path, params

    return walk(typer.main.get_command(app), ())


COMMANDS = dict(_commands())


@dataclass
class Files:
    tmp: Path
    missing: str
    dir: str
    binary: str

    def fill(self, arg: str) -> str:
        return arg.format(tmp=self.tmp, missing=self.missing, dir=self.dir, binary=self.binary)


@pytest.fixture
def files(tmp_path: Path) -> Files:
    (tmp_path / "adir").mkdir()
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x01" * 64)
    return Files(tmp_path, str(tmp_path / "missing" / "file.yaml"), str(tmp_path / "adir"), str(binary))


def _hostile(p: Param, files: Files) -> list[str]:
    if p.kind == "int":
        return INTEGERS
    if p.kind == "float":
        return FLOATS
    paths = [files.missing, files.dir, files.binary, ""]
    if p.kind == "Path" or p.name in ("agents", "rubric", "spec", "out"):
        return paths
    return TEXT


@pytest.fixture
def world(
    log: EventLog, store_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> EventLog:
    """A store with a conversation `demo`, a rollout `RID` and the wallets alice and bob; the
    working directory is a temporary one (an export writes there)."""
    monkeypatch.setenv("COLUMNS", "120")
    monkeypatch.chdir(tmp_path)
    conv = Conversation.create(log, "boss", {"boss": ["helper"], "helper": []}, name="demo")
    replies = {
        "boss": [
            AgentReply(
                agent="boss",
                tool_calls=(ToolCall(id="d1", name="delegate", arguments={"agent": "helper", "task": "t"}),),
            ),
            AgentReply(agent="boss", text="done [/note]"),
        ],
        "helper": [AgentReply(agent="helper", text="sunny")],
    }
    ScriptedTeam(replies, {}).run(conv, conv.submit(UserMessage(text="weather?")))
    store = RolloutStore(log)
    now = time.time()
    spec = {"name": "fuzz", "variants": [{"name": "base"}, {"name": "more"}]}
    store.create(
        RolloutInfo(id=RID, name="fuzz", spec_path=SPEC, spec=spec, created=now, updated=now, status="done")
    )
    for i, variant in enumerate(("base", "more", "base", "more")):
        store.put_row(
            Row(
                rollout=RID,
                episode=f"e{i}",
                team="t",
                variant=variant,
                scenario=f"s{i // 2}",
                repeat=0,
                seed=0,
                status="done",
                primary=0.5,
                conversation="demo",
            )
        )
    code, _, err = _run(["ledger", "init", "--agents", AGENTS, "--balance", "10", "-w", "alice", "-w", "bob"])
    assert code == 0, err
    return log


Outcome = tuple[int, str, str, BaseException | None]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Callable[[list[str]], Outcome]:
    def go(argv: list[str]) -> Outcome:
        code, error = 0, None
        try:
            main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except Exception as e:  # what the test looks for
            code, error = -1, e
        out, err = capsys.readouterr()
        return code, out, err, error

    return go


def _run(argv: list[str]) -> tuple[int, str, str]:
    """For the fixture: run a command that must work (output not captured here)."""
    try:
        main(argv)
    except SystemExit as e:
        return int(e.code or 0), "", ""
    return 0, "", ""


def _argv(path: tuple[str, ...], params: list[Param], values: dict[str, str | list[str] | None]) -> list[str]:
    """Options first, then `--` and the arguments, so an argument may start with a dash."""
    options: list[str] = []
    arguments: list[str] = []
    for p in params:
        v = values.get(p.name)
        if v is None:
            continue
        items = v if isinstance(v, list) else [v]
        if p.argument:
            arguments += items
        elif p.flag:
            options.append(p.opts[0])
        else:
            long = next(o for o in p.opts if o.startswith("--"))
            options += [f"{long}={item}" for item in items]
    return [*path, *options, "--", *arguments]


def _cases(path: tuple[str, ...], params: list[Param], files: Files) -> Iterator[list[str]]:
    base: dict[str, str | list[str] | None] = {}
    for p in params:
        v = PER_COMMAND.get(path, {}).get(p.name, VALID.get(p.name))
        if v is not None and (p.required or p.name in PER_COMMAND.get(path, {}) or p.name in VALID):
            base[p.name] = v
    yield _argv(path, params, base)
    for p in params:
        if p.flag:
            continue
        if p.required:
            yield _argv(path, params, {**base, p.name: None})  # missing
        for bad in _hostile(p, files):
            value: str | list[str] = [bad] if p.multiple else bad
            yield _argv(path, params, {**base, p.name: value})


def _problem(argv: list[str], outcome: Outcome) -> str | None:
    code, out, err, error = outcome
    shown = [a[:40] for a in argv]
    if error is not None:
        return f"{shown}: uncaught {type(error).__name__}: {str(error)[:200]}"
    if "Traceback" in out + err:
        return f"{shown}: a traceback:\n{(out + err)[-1500:]}"
    if code != 0 and not (out + err).strip():
        return f"{shown}: exit {code} without saying why"
    return None


@pytest.mark.parametrize(
    "path",
    [p for p in COMMANDS if p not in SKIPPED],
    ids=lambda p: " ".join(p) if isinstance(p, tuple) else p,
)
def test_bad_input_never_gives_a_traceback(
    path: tuple[str, ...], world: EventLog, files: Files, run: Callable[[list[str]], Outcome]
) -> None:
    problems = [p for argv in _cases(path, COMMANDS[path], files) if (p := _problem(argv, run(argv)))]
    assert not problems, "\n".join(problems)


def test_commands_that_start_things_fail_first_on_bad_input(
    world: EventLog, files: Files, run: Callable[[list[str]], Outcome]
) -> None:
    problems = []
    for case in BEFORE_STARTING:
        argv = [files.fill(a) for a in case]
        outcome = run(argv)
        assert outcome[0] != 0, f"{argv} did not fail"
        if p := _problem(argv, outcome):
            problems.append(p)
    assert not problems, "\n".join(problems)


def test_every_command_is_fuzzed_or_has_a_reason_not_to_be() -> None:
    assert set(SKIPPED) <= set(COMMANDS)
    assert len(COMMANDS) > 30  # the walk found the subcommands
