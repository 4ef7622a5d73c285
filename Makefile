# The README's two commands: `make run` and `make test`. Both set up what they need.
PYTHON ?= python3
VENV := .venv
TASKS_VENV := .venv-tasks
BIN := $(VENV)/bin

.PHONY: venv run test lint bench clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

$(TASKS_VENV)/.installed: requirements-tasks-emulator.txt
	$(PYTHON) -m venv $(TASKS_VENV)
	$(TASKS_VENV)/bin/pip install --quiet -r requirements-tasks-emulator.txt
	touch $@

venv: $(VENV)/.installed $(TASKS_VENV)/.installed

run: venv
	$(BIN)/python -m session_core stack $(if $(ONCE),--once,)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy session_core

test: lint
	$(BIN)/python -m pytest

bench: venv
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(TASKS_VENV) .mypy_cache .pytest_cache .ruff_cache
