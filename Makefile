# Two commands on a fresh machine:
#   make demo   - virtualenv + package, then `activity-logging demo` on the embedded SQLite store
#   make test   - dev dependencies, then lint, type checks and the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-versions install install-dev lint typecheck pytest bench clean

# Other interpreters the unit tests run on (`make test-versions`): each one found on PATH, or
# under pyenv, gets its own virtualenv (.venv-3.12, ...). Missing ones are reported, not fatal.
OTHER_PYTHONS ?= 3.12 3.13

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .

install-dev: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'

# The package plus the examples extra (FastAPI, uvicorn, httpx): what the README's next
# command, `.venv/bin/python examples/callcenter_app.py --selftest`, needs.
demo: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[examples]'
	$(BIN)/activity-logging demo

lint: install-dev
	$(BIN)/ruff check activity_logging tests benchmarks examples

typecheck: install-dev
	$(BIN)/mypy

pytest: install-dev
	$(BIN)/python -m pytest

test: lint typecheck pytest

test-versions:
	@set -e; for v in $(OTHER_PYTHONS); do \
	    py=""; \
	    if python$$v -c pass 2>/dev/null; then py=python$$v; fi; \
	    if [ -z "$$py" ]; then \
	        for cand in $${PYENV_ROOT:-$$HOME/.pyenv}/versions/$$v.*/bin/python$$v; do \
	            [ -x "$$cand" ] && py="$$cand"; \
	        done; \
	    fi; \
	    if [ -z "$$py" ]; then echo "python$$v: not installed, skipped"; continue; fi; \
	    echo "== unit tests on $$($$py --version)"; \
	    [ -x .venv-$$v/bin/python ] || $$py -m venv .venv-$$v; \
	    .venv-$$v/bin/python -m pip install --quiet --upgrade pip; \
	    .venv-$$v/bin/python -m pip install --quiet -e '.[dev]'; \
	    .venv-$$v/bin/python -m pytest -q -p no:cacheprovider tests/unit; \
	done

bench: install-dev
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) .venv-3.* build *.egg-info .pytest_cache .mypy_cache .ruff_cache activity_logs.db*
