# Two entry points on a fresh machine: `make demo` and `make test`. Each sets itself up.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: venv demo demo-secure test unit lint docs bench up clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m demo

demo-secure: venv
	$(PY) -m demo --secure

# The suite mostly waits on real processes (workers, beat, Valkey, agents), so it runs on
# TEST_WORKERS pytest-xdist workers; tests marked with one xdist_group share a worker
# (docs/development.md). TEST_WORKERS=0 runs it in this process, one test at a time.
TEST_WORKERS ?= 3

test: venv lint docs
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadgroup

unit: venv
	$(PY) -m pytest -q tests/unit

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# The pages under docs/, built strictly into site/ (git-ignored): a broken link, a missing
# anchor or a page left out of the nav fails the build (mkdocs.yml, validation).
docs: venv
	$(VENV)/bin/mkdocs build --strict

bench: venv
	$(PY) -m bench.all

up: venv
	$(VENV)/bin/sokovan up

clean:
	rm -rf var site .pytest_cache .mypy_cache .ruff_cache
