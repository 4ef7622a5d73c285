# The README's two commands: `make run` and `make test`. Both set up what they need.
# Lanes (markers in pyproject.toml, set by tests/lanes.py): `make check` is ruff, mypy and every test that
# needs no emulator, no process of its own and no long run (no Java); `make test` is everything.
PYTHON ?= python3
VENV := .venv
TASKS_VENV := .venv-tasks
BIN := $(VENV)/bin
# Python 3.13 from pyenv, for the second pass CI runs (requires-python promises 3.11 to 3.13).
PYTHON313 ?= $(lastword $(sort $(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python3)))
VENV313 := .venv-313

# What `make check` runs: no emulator, no subprocess (functions, stack, gcloud, pip), no long run.
CHECK_LANE := not emulator and not stack and not slow

.PHONY: venv run test check test-py313 lint browser bench docs clean

# Every venv installs from locks with hashes (locks/compile.sh makes them from the pins): pip and uv
# first, with pip; then the venv's lock with uv (seconds instead of pip's minutes; the same hashes).
# $(call install-lock,VENV_DIR,LOCK)
define install-lock
	$(1)/bin/pip install --quiet --require-hashes -r locks/pip.txt
	$(1)/bin/uv pip install --quiet --python $(1)/bin/python --require-hashes -r $(2)
endef

$(VENV)/.installed: locks/pip.txt locks/dev.txt
	$(PYTHON) -m venv $(VENV)
	$(call install-lock,$(VENV),locks/dev.txt)
	touch $@

$(TASKS_VENV)/.installed: locks/pip.txt locks/tasks-emulator.txt
	$(PYTHON) -m venv $(TASKS_VENV)
	$(call install-lock,$(TASKS_VENV),locks/tasks-emulator.txt)
	touch $@

$(VENV313)/.installed: locks/pip.txt locks/dev.txt
	@test -n "$(PYTHON313)" || { echo "error: no Python 3.13 under ~/.pyenv/versions (set PYTHON313=...)" >&2; exit 1; }
	$(PYTHON313) -m venv $(VENV313)
	$(call install-lock,$(VENV313),locks/dev.txt)
	touch $@

venv: $(VENV)/.installed $(TASKS_VENV)/.installed

run: venv
	$(BIN)/python -m devstack $(if $(ONCE),--once,)

# $(call lint-with,BIN): ruff and mypy --strict from that venv.
define lint-with
	$(1)/ruff check .
	$(1)/ruff format --check .
	$(1)/mypy session_core main.py devstack
endef

# $(call check-with,BIN): lint, then the tests that need nothing but Python (Hypothesis at its check profile).
define check-with
	$(call lint-with,$(1))
	SESSION_CORE_TEST_LANE=check $(1)/python -m pytest -q -m "$(CHECK_LANE)"
endef

lint: venv
	$(call lint-with,$(BIN))

# The fast lane: no Java, no tasks emulator venv; a test that starts a process here fails and says so.
check: $(VENV)/.installed
	$(call check-with,$(BIN))

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

# make test runs the suite on TEST_WORKERS processes (pytest-xdist; a file's tests stay together), then the
# whole-run log check on its own, over what every worker and its subprocesses logged. Files are handed out
# in collection order, which spreads the long ones among short ones: on 2 cores pytest took 464 s so, 504 s
# in pytest-xdist's own order (most tests first) and 483 s with the longest files first (they ran together).
TEST_WORKERS ?= 2

test: lint browser
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --ignore=tests/test_zz_log_hygiene.py
	SESSION_CORE_TEST_WHOLE_RUN=1 $(BIN)/python -m pytest tests/test_zz_log_hygiene.py

# CI's second pass, under Python 3.13: the fast lane, then an emulator smoke of each adapter and each function.
test-py313: $(VENV313)/.installed
	$(call check-with,$(VENV313)/bin)
	$(VENV313)/bin/python -m pytest -q -m smoke

bench: venv
	$(BIN)/python -m bench

# The docs site at http://127.0.0.1:8000, rebuilt on each edit (make test builds it with --strict: tests/test_docs.py).
docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(BIN)/mkdocs serve

clean:
	rm -rf $(VENV) $(TASKS_VENV) $(VENV313) .mypy_cache .pytest_cache .ruff_cache build dist
