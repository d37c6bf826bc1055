# The README's two commands: `make demo` (the main job on the embedded data) and `make test`.
# Each creates .venv on first use and installs mixnas with the pinned, CPU-tested versions.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint references clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24" "setuptools>=69" wheel
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,deploy]"
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mixnas run --preset demo --out runs/demo

# Two pytest-xdist workers; the tests that start Ray instances or launchers run in groups (tests/conftest.py).
test: $(STAMP)
	@scripts/ensure-chromium
	$(BIN)/python -m pytest -n 2 --dist loadgroup

# The edit loop: everything but the tests marked slow (CI runs `make test`, the whole suite).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup -m "not slow"

references: $(STAMP)
	$(BIN)/mixnas profile mixnas/configs/reference/*.yaml --max-seconds 3

lint: $(STAMP)
	$(BIN)/ruff check mixnas tests bench

clean:
	rm -rf $(VENV) runs
