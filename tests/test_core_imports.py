"""The core (`p2e.machine`, `p2e.store`, `p2e.events`) needs none of the heavy dependencies.

Ray, rerun and dazl are required by the package as a whole (the rollouts, the viewer, the Canton
ledger), but the pure machine and the store must stay usable, and importable by a lint or a
notebook, without them. The proof is a bare venv holding only the core's own dependencies, as
pyproject.toml declares them, with the repository on PYTHONPATH instead of an installed p2e.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
CORE_DEPENDENCIES = {"pydantic", "redis"}  # redis[hiredis] brings hiredis; pydantic its own
HEAVY = ("ray", "rerun", "dazl")

SCRIPT = f"""
import importlib, importlib.util, json, pkgutil, sys

import p2e.events, p2e.machine, p2e.store
for package in (p2e.machine, p2e.store):
    for module in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        importlib.import_module(module.name)

from p2e.events import Started, UserMessage, encode, event_adapter
from p2e.machine import INITIAL, CallAgent, handle

state, _ = handle(INITIAL, Started(root="boss", team={{"boss": ()}}))
message = event_adapter.validate_json(encode(UserMessage(text="hi")))
state, commands = handle(state, message)
heavy = {HEAVY!r}
print(json.dumps({{
    "commands": [type(c).__name__ for c in commands],
    "calls": [c.frame.agent for c in commands if isinstance(c, CallAgent)],
    "status": state.status,
    "installed": [name for name in heavy if importlib.util.find_spec(name) is not None],
    "loaded": sorted(m for m in sys.modules if m.split(".")[0] in heavy),
    "p2e": p2e.__file__,
}}))
"""


def core_requirements() -> list[str]:
    """The core's dependencies with the bounds pyproject.toml gives them."""
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    picked = [d for d in dependencies if Requirement(d).name in CORE_DEPENDENCIES]
    assert {Requirement(d).name for d in picked} == CORE_DEPENDENCIES, dependencies
    return picked


def test_the_core_imports_and_runs_without_ray_rerun_or_dazl(tmp_path: Path) -> None:
    env_dir = tmp_path / "bare"
    venv.create(env_dir, with_pip=False)  # this venv's pip installs into it (`pip --python`)
    python = env_dir / "bin" / "python"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", *core_requirements()],
        capture_output=True,
        text=True,
    )
    assert pip.returncode == 0, f"pip could not install the core's dependencies:\n{pip.stderr}"

    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([python, "-c", SCRIPT], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen["p2e"] == str(ROOT / "p2e" / "__init__.py")  # the repository's p2e, not an installed one
    assert (seen["commands"], seen["calls"], seen["status"]) == (["CallAgent"], ["boss"], "running")
    assert seen["installed"] == [] and seen["loaded"] == []
