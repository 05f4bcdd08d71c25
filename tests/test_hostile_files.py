"""Hostile files: every file p2e reads from a user (specs, agents files, scenario files in JSONL,
CSV and Parquet, rubrics, judge and persona templates, mock rules) is refused on one line naming
it, with a non-zero exit: no traceback, no hang, no unbounded memory, nothing written.

The small files are in tests/hostile/; the large ones (a "billion laughs", deep nesting, a file
over the size limit) and the special ones (a directory, a FIFO) are made here."""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from conftest import Cli

from p2e.errors import InvalidArgument
from p2e.llm.mock import MockProvider
from p2e.textfile import MAX_BYTES

ROOT = Path(__file__).resolve().parent.parent
HOSTILE = Path(__file__).resolve().parent / "hostile"
AGENTS = ROOT / "experiments" / "agents.yaml"
RUBRIC = ROOT / "experiments" / "rubrics" / "helpful.yaml"


# --- hostile contents: each writes itself at a path -----------------------------------------------


def _bytes(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


def _corpus(name: str) -> Callable[[Path], None]:
    return lambda path: path.write_bytes((HOSTILE / name).read_bytes())


def _laughs() -> bytes:
    """Nine "lol"s, each level nine aliases of the one before: 9**9 values once expanded."""
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, cur in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{cur}: &{cur} [{', '.join([f'*{prev}'] * 9)}]")
    return ("\n".join(lines) + "\n").encode()


def _huge(path: Path) -> None:
    with path.open("wb") as f:
        f.truncate(MAX_BYTES + 1)  # sparse: no disk used


TEXT = {  # hostile to any text file
    "binary": (_corpus("binary.bin"), "not UTF-8 text"),
    "utf16": (_corpus("utf16.yaml"), "UTF-16"),
    "nul": (_corpus("nul.txt"), "NUL byte"),
    "huge": (_huge, "too large"),
    "directory": (lambda path: path.mkdir(), "is a directory"),
    "fifo": (os.mkfifo, "not a regular file"),
}
YAML = {  # hostile to a YAML file
    "laughs": (_bytes(_laughs()), "billion laughs"),
    "deep_list": (_bytes(b"[" * 10_000 + b"]" * 10_000), "nest"),
    "deep_mapping": (
        _bytes("".join("  " * i + "k:\n" for i in range(150)).encode()),
        "nested more than 100 deep",
    ),
    "duplicate": (_corpus("duplicate.yaml"), "key 'name' is given twice in one mapping (lines 2 and 6)"),
    "recursive": (_corpus("recursive.yaml"), "the alias *a at line 2 is inside the value it names"),
    "not_mapping": (_corpus("not_mapping.yaml"), "mapping"),
}
JINJA = {"deep_template": (_bytes(b"{{ " + b"(" * 5000 + b"1" + b")" * 5000 + b" }}"), "too deep")}
JSONL = {
    "deep_list": (_bytes(b"[" * 10_000 + b"]" * 10_000), "recursion limit"),
    "empty": (_bytes(b""), "no scenarios in it"),
}
CSV = {  # hostile to a CSV scenario file (a header row: id, message, ...)
    "empty": (_bytes(b""), "no scenarios in it"),
    "header_only": (_bytes(b"id,message\n"), "no scenarios in it"),
    "no_message_column": (_bytes(b"id,question\na,hi\n"), "line 1: no 'message' column"),
    "duplicate_ids": (_bytes(b"id,message\na,hi\na,again\n"), "line 3: scenario id 'a' is repeated"),
    "ragged_row": (_bytes(b"id,message\na,hi\nb,hi, there\n"), "line 3: 3 values, but the header has 2"),
    "latin1": (_bytes("id,message\na,caf\xe9\n".encode("latin-1")), "not UTF-8 text (byte 0xe9 at line 2"),
}


def _parquet(columns: dict[str, Any]) -> Callable[[Path], None]:
    return lambda path: pq.write_table(pa.table(columns), path)


def _truncated(path: Path) -> None:
    """A Parquet file cut short, its end marker put back."""
    _parquet({"id": ["a"], "message": ["hi"]})(path)
    path.write_bytes(path.read_bytes()[:-20] + b"PAR1")


NOT_PARQUET = "not a Parquet file"
PARQUET = {  # hostile to a Parquet scenario file; as text files, they are not Parquet
    **{kind: (write, NOT_PARQUET) for kind, (write, _) in TEXT.items() if kind in {"binary", "utf16", "nul"}},
    "text": (_bytes(b'{"id": "a", "message": "hi"}\n'), NOT_PARQUET),
    "truncated": (_truncated, NOT_PARQUET),
    "empty": (_bytes(b""), "no scenarios in it"),
    "no_rows": (
        _parquet({"id": pa.array([], pa.string()), "message": pa.array([], pa.string())}),
        "no scenarios",
    ),
    "int_messages": (_parquet({"id": ["a"], "message": [1]}), "column 'message' holds int64, not text"),
    "null_id": (_parquet({"id": ["a", None], "message": ["hi", "ho"]}), "row 2, field 'id'"),
    # 2 GB of one repeated value once decoded, in a file of a few kB
    "decoded_bomb": (
        _parquet(
            {
                "id": [f"s{i}" for i in range(2048)],
                "message": pa.DictionaryArray.from_arrays(pa.array([0] * 2048), pa.array(["x" * 2**20])),
            }
        ),
        "too large",
    ),
}


RISKY = {
    "laughs",
    "fifo",
    "decoded_bomb",
}  # a regression would eat the machine or hang: run in a bounded subprocess


# --- file kinds: each places the hostile file and says how to read it -----------------------------


def _spec(tmp: Path, **fields: str) -> Path:
    spec = {
        "name": "t",
        "agents": str(AGENTS),
        "teams": "[{id: desk, root: planner}]",
        "scenarios": "[{id: paris, message: weather in Paris?}]",
        **fields,
    }
    path = tmp / "spec.yaml"
    path.write_text("".join(f"{k}: {v}\n" for k, v in spec.items()))
    return path


def _persona_agents(tmp: Path) -> Path:
    (tmp / "personas").mkdir()
    path = tmp / "persona-agents.yaml"
    path.write_text("agents: {boss: {model: mock/default, persona: hostile}}\n")
    return path


JUDGE = "[{id: judge, params: {model: mock/judge, rubric: rubric.yaml}}]"
TEMPLATE = f"[{{id: judge, params: {{model: mock/judge, rubric: {RUBRIC}, template: judge.j2}}}}]"
Place = Callable[[Path], tuple[Path, list[str]]]  # tmp -> (where the hostile file goes, argv)
KINDS: dict[str, tuple[Place, dict]] = {
    "rollout spec": (lambda t: (t / "spec.yaml", ["rollout", "validate", str(t / "spec.yaml")]), YAML),
    "agents file (agent list)": (
        lambda t: (t / "a.yaml", ["agent", "list", "--agents", str(t / "a.yaml")]),
        YAML,
    ),
    "agents file (ledger init)": (
        lambda t: (t / "a.yaml", ["ledger", "init", "--agents", str(t / "a.yaml")]),
        YAML,
    ),
    "scenario file": (
        lambda t: (
            t / "more.jsonl",
            ["rollout", "validate", str(_spec(t, scenarios="[{file: more.jsonl}]"))],
        ),
        JSONL,
    ),
    "scenario file (csv)": (
        lambda t: (t / "more.csv", ["rollout", "validate", str(_spec(t, scenarios="[{file: more.csv}]"))]),
        CSV,
    ),
    "scenario file (parquet)": (
        lambda t: (
            t / "more.parquet",
            ["rollout", "validate", str(_spec(t, scenarios="[{file: more.parquet}]"))],
        ),
        PARQUET,
    ),
    "rubric": (lambda t: (t / "rubric.yaml", ["rollout", "validate", str(_spec(t, evaluators=JUDGE))]), YAML),
    "judge template": (
        lambda t: (t / "judge.j2", ["rollout", "validate", str(_spec(t, evaluators=TEMPLATE))]),
        JINJA,
    ),
    "persona template": (
        lambda t: (
            t / "personas" / "hostile.j2",
            ["agent", "show", "boss", "--agents", str(_persona_agents(t))],
        ),
        JINJA,
    ),
    "mock rules": (lambda t: (t / "mock" / "hostile.yaml", ["mock", str(t / "mock")]), YAML),
}
MOCK_FOUND_NOTHING = {
    "directory",
    "fifo",
}  # the mock provider looks for a regular file: it says none is there

CASES = [
    pytest.param(kind, content, id=f"{kind}-{content}")
    for kind, (_, extra) in KINDS.items()
    for content in [*TEXT, *extra]
]

MOCK = """import sys
from p2e.errors import P2EError
from p2e.llm.mock import MockProvider
try:
    MockProvider({"rules_dirs": [sys.argv[1]]}).rules_for("mock/hostile")
except P2EError as e:
    sys.exit(f"error: {e}")
"""


def _bounded() -> None:
    two_gb = 2 * 2**30
    resource.setrlimit(resource.RLIMIT_AS, (two_gb, two_gb))


def _run_bounded(argv: list[str]) -> tuple[int, str, str]:
    """In a subprocess of at most 2 GB of address space, and 30 s (a hang guard)."""
    cmd = (
        [sys.executable, "-c", MOCK, argv[1]]
        if argv[0] == "mock"
        else [sys.executable, "-m", "p2e.cli", *argv]
    )
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=30, preexec_fn=_bounded, cwd=ROOT)
    return p.returncode, p.stdout, p.stderr


def _run_here(cli: Cli, argv: list[str]) -> tuple[int, str, str]:
    if argv[0] != "mock":
        return cli(*argv)
    with pytest.raises(InvalidArgument) as e:
        MockProvider({"rules_dirs": [argv[1]]}).rules_for("mock/hostile")
    return 2, "", f"error: {e.value}\n"


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize(("kind", "content"), CASES)
def test_a_hostile_file_is_refused_on_one_line_naming_it(
    kind: str,
    content: str,
    tmp_path: Path,
    cli: Cli,
    store_env: dict[str, str],
    store_url: str,
    namespace: str,
) -> None:
    place, extra = KINDS[kind]
    path, argv = place(tmp_path)
    path.parent.mkdir(exist_ok=True)
    write, expected = {**TEXT, **extra}[content]
    write(path)
    if kind == "mock rules" and content in MOCK_FOUND_NOTHING:
        expected = "no mock rules set 'hostile'"
    before = _tree(tmp_path)

    code, out, err = _run_bounded(argv) if content in RISKY else _run_here(cli, argv)

    assert code != 0
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert str(path) in lines[0] or str(path.resolve()) in lines[0], lines[0]
    assert re.search(re.escape(expected), lines[0]), lines[0]
    assert _tree(tmp_path) == before
    assert not redis.Redis.from_url(store_url).keys(f"{namespace}:*")  # (ledger init wrote nothing)


def test_anchors_aliases_and_merge_keys_still_read(tmp_path: Path, cli: Cli) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"""name: t
agents: {AGENTS}
teams: [{{id: desk, root: planner}}]
scenarios:
  - &paris {{id: paris, message: "What is the weather in Paris?", reference: snow}}
  - <<: *paris
    id: paris-again
variants:
  - name: baseline
  - name: terse
    overrides: {{writer: &terse {{model: mock/terse}}}}
  - name: terse-too
    overrides: {{writer: *terse, researcher: *terse}}
"""
    )
    code, out, err = cli("rollout", "validate", str(spec))
    assert code == 0, err
    assert "6 episodes (3 variants)" in out


def test_a_param_value_is_bounded_like_a_file() -> None:
    bomb = _laughs().decode().replace("\n", ", ")
    argv = ["eval", "run", "demo", "-e", "contains", "-p", f"contains.x={{{bomb}}}"]
    code, out, err = _run_bounded(argv)
    assert code != 0 and "Traceback" not in out + err
    assert len(err.strip().splitlines()) == 1 and "--param contains.x" in err and "billion laughs" in err
    code, _, err = _run_bounded(["eval", "run", "demo", "-e", "contains", "-p", "contains.x={a: 1, a: 2}"])
    assert code != 0 and "--param contains.x: key 'a' is given twice" in err


TEMPLATE_BOMBS = {  # each would hang or allocate gigabytes outside Jinja's sandbox
    "range": ("{{ range(10**9) | list | length }}", "`range` of 1,000,000,000 items"),
    "repeat": ("{{ 'lol' * 10**9 }}", "`*` would build 3,000,000,000 items"),
    "power": ("{{ 7 ** 1000000000 }}", "too large to compute"),
    "width": ("{{ '' | center(10**9) }}", "wider than the limit"),
    "dunder": ("{{ ''.__class__.__mro__ }}", "unsafe"),
}


@pytest.mark.parametrize("bomb", TEMPLATE_BOMBS)
def test_a_template_that_would_hang_or_eat_memory_is_refused_when_rendered(bomb: str, tmp_path: Path) -> None:
    source, expected = TEMPLATE_BOMBS[bomb]
    agents = _persona_agents(tmp_path)
    persona = tmp_path / "personas" / "hostile.j2"
    persona.write_text(source + "\n")
    code, out, err = _run_bounded(["agent", "show", "boss", "--agents", str(agents)])
    assert code != 0 and "Traceback" not in out + err
    (line,) = err.strip().splitlines()
    assert str(persona) in line and expected in line, line


def test_a_mock_rule_template_bomb_fails_the_reply_not_the_machine(tmp_path: Path) -> None:
    (tmp_path / "hostile.yaml").write_text('default: "{{ range(10**9) | list | length }}"\n')
    script = (
        "import asyncio, sys\n"
        "from p2e.errors import P2EError\n"
        "from p2e.llm.base import Message, ModelRequest\n"
        "from p2e.llm.mock import MockProvider\n"
        "p = MockProvider({'rules_dirs': [sys.argv[1]]})\n"
        "req = ModelRequest(model='mock/hostile', messages=[Message(role='user', content='hi')])\n"
        "try:\n"
        "    asyncio.run(p.complete(req))\n"
        "except P2EError as e:\n"
        "    sys.exit(f'error: {e}')\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        preexec_fn=_bounded,
        cwd=ROOT,
    )
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr
    assert "`range` of 1,000,000,000 items" in p.stderr
