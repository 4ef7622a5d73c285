# The README's two commands: `make run` and `make test`. Both set up what they need.
PYTHON ?= python3
VENV := .venv
TASKS_VENV := .venv-tasks
BIN := $(VENV)/bin
# Python 3.13 from pyenv, for the second pass CI runs (requires-python promises 3.11 to 3.13).
PYTHON313 ?= $(lastword $(sort $(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python3)))
VENV313 := .venv-313

.PHONY: venv run test test-py313 lint browser bench clean

# Every venv installs from locks with hashes (locks/compile.sh makes them from the pins): pip first.
$(VENV)/.installed: locks/pip.txt locks/dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes -r locks/pip.txt
	$(BIN)/pip install --quiet --require-hashes -r locks/dev.txt
	touch $@

$(TASKS_VENV)/.installed: locks/pip.txt locks/tasks-emulator.txt
	$(PYTHON) -m venv $(TASKS_VENV)
	$(TASKS_VENV)/bin/pip install --quiet --require-hashes -r locks/pip.txt
	$(TASKS_VENV)/bin/pip install --quiet --require-hashes -r locks/tasks-emulator.txt
	touch $@

$(VENV313)/.installed: locks/pip.txt locks/dev.txt
	@test -n "$(PYTHON313)" || { echo "error: no Python 3.13 under ~/.pyenv/versions (set PYTHON313=...)" >&2; exit 1; }
	$(PYTHON313) -m venv $(VENV313)
	$(VENV313)/bin/pip install --quiet --require-hashes -r locks/pip.txt
	$(VENV313)/bin/pip install --quiet --require-hashes -r locks/dev.txt
	touch $@

venv: $(VENV)/.installed $(TASKS_VENV)/.installed

run: venv
	$(BIN)/python -m devstack $(if $(ONCE),--once,)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy session_core main.py devstack

# The browser tests need Debian's chromium and chromium-driver: installed here when we are root.
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing chromium and chromium-driver for the browser tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else \
	    echo "note: chromium/chromedriver are missing and we are not root: the browser tests will skip (CI=true fails them)"; \
	  fi; \
	fi

test: lint browser
	$(BIN)/python -m pytest

# The fast part of the suite (no fault, load or whole-stack tests) under Python 3.13.
test-py313: $(VENV313)/.installed $(TASKS_VENV)/.installed browser
	$(VENV313)/bin/python -m pytest -m "not slow"

bench: venv
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(TASKS_VENV) $(VENV313) .mypy_cache .pytest_cache .ruff_cache build dist
