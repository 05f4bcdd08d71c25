# Two commands a newcomer needs: `make demo` and `make test`. Both create or refresh .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo demo-branching test test-store lint format bench clean venv

venv: $(STAMP)

# Re-install whenever pyproject.toml changes; editable, so code edits need no reinstall.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# The main job: a rollout of the quickstart spec on local Ray and the embedded store (offline).
demo: $(STAMP)
	$(BIN)/p2e rollout run experiments/quickstart.yaml

# One conversation, scripted, through the machine: branching, rewind and diff on the store.
demo-branching: $(STAMP)
	$(BIN)/python experiments/branching_demo.py

test: $(STAMP)
	$(BIN)/python -m pytest

# The store-backed tests alone; CI runs them again against stock Redis with P2E_TEST_REDIS_URL set.
test-store: $(STAMP)
	$(BIN)/python -m pytest -m store

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python bench/store_bench.py
	$(BIN)/python bench/runtime_bench.py
	$(BIN)/python bench/eval_bench.py
	$(BIN)/python bench/rollout_bench.py
	$(BIN)/python bench/obs_bench.py
	$(BIN)/python bench/ledger_bench.py
	$(BIN)/python bench/guided_bench.py
	$(BIN)/python bench/halving_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
