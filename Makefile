# Two commands: `make run` (demo daemon + bundled emulator) and `make test` (the whole suite,
# as CI runs it, on pytest-xdist workers: docs/testing.md). While developing, `make check`
# is the fast tier: the tests that neither start a process nor wait a second or more in real
# time (-m "not process and not slow"), then ruff.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# `make run` installs only what the demo needs (syncd and its runtime dependencies);
# `make test` adds the test and dev extras. One stamp each.
# make test's pytest-xdist workers: its tests mostly wait on the daemon they start, so four
# keep two cores busy (make TEST_WORKERS=1 test runs it serially; docs/testing.md).
TEST_WORKERS ?= 4
RUN_STAMP  := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test check lint bench constraints clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "syncd needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(TEST_STAMP): pyproject.toml $(RUN_STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	$(BIN)/python -m pip install --quiet --upgrade --no-deps --target $(VENV)/vendor/wriftai-0.34 wriftai==0.34.0
	touch $@

run: $(RUN_STAMP)
	$(BIN)/python -m syncd.demo

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

check: $(TEST_STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile -m "not process and not slow" -q
	$(BIN)/ruff check syncd syncd_emulator tests bench
	$(BIN)/ruff format --check syncd syncd_emulator tests bench

lint: $(TEST_STAMP)
	$(BIN)/ruff check syncd syncd_emulator tests bench
	$(BIN)/ruff format --check syncd syncd_emulator tests bench
	$(BIN)/mypy

bench: $(TEST_STAMP)
	$(BIN)/python bench/run_all.py

# constraints.txt: the pins of syncd's runtime dependencies, from this venv (tested).
constraints: $(TEST_STAMP)
	$(BIN)/python scripts/constraints.py > constraints.txt

clean:
	rm -rf $(VENV) demo .pytest_cache
