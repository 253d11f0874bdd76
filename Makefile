# vlfusion: `make demo` and `make test` do everything on a fresh machine (see README).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install demo test lint bench clean

install: $(STAMP)

# Re-runs only when the dependency list or the set-up scripts change.
$(STAMP): pyproject.toml constraints.txt .ci/setup-system.sh .ci/build-pillow-simd.sh .ci/fetch-java-deps.sh curation/portable_runner.py
	bash .ci/setup-system.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test,dask]'
	bash .ci/build-pillow-simd.sh $(PY)
	bash .ci/fetch-java-deps.sh $(PY)
	$(PY) -m curation.portable_runner install
	touch $(STAMP)

demo: install
	bash .ci/demo.sh

test: install
	$(PY) -m pytest -q tests

lint: install
	$(VENV)/bin/ruff check curation shards training eval tests

bench: install
	$(PY) tests/benchmarks/run_all.py

clean:
	rm -rf $(VENV) demo build .pytest_cache
