"""`p2e rollout export --out PATH` to a path it cannot use fails on one line before writing,
and an export that fails half-way leaves nothing behind."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Cli
from test_rollouts import SPEC, _row, write_spec

from p2e.errors import P2EError
from p2e.rollouts.export import write_jsonl, write_parquet, write_trajectories
from p2e.rollouts.run import plan
from p2e.rollouts.spec import load_spec
from p2e.rollouts.store import RolloutStore, Row
from p2e.store import EventLog

FORMATS = ["jsonl", "parquet", "chat"]


@pytest.fixture
def rollout(tmp_path: Path, log: EventLog, store_env: dict[str, str]) -> str:
    """A rollout in the test store with a done row (its conversation is not in the store)."""
    store = RolloutStore(log)
    info, todo = plan(load_spec(write_spec(tmp_path, SPEC)), store, None)
    row = _row("baseline", "paris", 1.0).model_copy(
        update={"rollout": info.id, "episode": todo[0].id, "conversation": "gone"}
    )
    store.put_row(row)
    return info.id


def _bad_paths(root: Path) -> Iterator[tuple[str, Path, str]]:
    (root / "a-dir").mkdir()
    yield "a directory", root / "a-dir", "it is a directory"
    yield "a missing directory", root / "missing" / "out.x", "missing does not exist"
    (root / "a-file").write_text("keep me")
    yield "a file as directory", root / "a-file" / "out.x", "a-file is not a directory"
    os.mkfifo(root / "a-fifo")
    yield "a fifo", root / "a-fifo", "it is not a regular file"


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_unusable_out_path_is_one_line_and_writes_nothing(
    fmt: str, rollout: str, tmp_path: Path, cli: Cli
) -> None:
    root = tmp_path / "out"
    root.mkdir()
    for what, path, why in list(_bad_paths(root)):
        before = sorted(p.name for p in root.rglob("*"))
        code, _, err = cli("rollout", "export", rollout, "--format", fmt, "--out", str(path))
        line = " ".join(err.split())  # (the console may wrap a long line)
        assert code == 2 and "Traceback" not in err, (what, err)
        assert f"cannot write the export to {path}: " in line and why in line, (what, err)
        assert sorted(p.name for p in root.rglob("*")) == before, what
    assert (root / "a-file").read_text() == "keep me" and (root / "a-fifo").is_fifo()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into any directory")
@pytest.mark.parametrize("fmt", FORMATS)
def test_an_unwritable_directory_is_refused(fmt: str, rollout: str, tmp_path: Path, cli: Cli) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code, _, err = cli("rollout", "export", rollout, "--format", fmt, "--out", str(locked / "x"))
    assert code == 2 and "is not writable" in err and not list(locked.iterdir())


def test_a_chat_export_that_fails_half_way_leaves_no_file(rollout: str, tmp_path: Path, cli: Cli) -> None:
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = cli("rollout", "export", rollout, "--format", "chat", "--out", str(out / "c.jsonl"))
    assert code == 2 and "gone" in err and "Traceback" not in err  # its conversation is not in the store
    assert not list(out.iterdir())


def _rows_then_a_full_disk() -> Iterator[Row]:
    yield _row("a", "s1", 1.0)  # (no conversation: skipped, the log is not read)
    raise OSError(28, "No space left on device")


def test_a_write_error_half_way_is_one_line_and_keeps_the_old_file(tmp_path: Path) -> None:
    old = tmp_path / "old.jsonl"
    old.write_text("before")
    with pytest.raises(P2EError) as info:
        write_trajectories(None, _rows_then_a_full_disk(), old, None)  # type: ignore[arg-type]
    assert str(info.value) == (
        f"could not write the export to {old} (No space left on device); nothing was written there"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["old.jsonl"] and old.read_text() == "before"


def test_a_good_path_still_exports_every_format(tmp_path: Path) -> None:
    rows = [_row("a", "s1", 1.0)]
    assert write_jsonl(rows, tmp_path / "r.jsonl") == 1 and write_parquet(rows, tmp_path / "r.parquet") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl", "r.parquet"]
