# gradflow: two commands on a fresh machine: `make figures` and `make test`.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
# JAX's CPU SVD/QR go through OpenBLAS; two threads on two cores slow down >100x when another process
# holds a core. One thread each keeps tests and figures predictable.
export OPENBLAS_NUM_THREADS ?= 1
export MPLBACKEND ?= Agg

.PHONY: setup test figures figures-quick figures-full lint docs docs-check bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[dev,tasks]'
	touch $(STAMP)

# Two pytest worker processes (pytest-xdist), whole files per worker so that module fixtures are built once:
# the suite is bound by XLA compilation, which is single-threaded, so two workers use both cores. Separate
# processes also keep any one process from accumulating every compiled program of the suite (XLA's CPU
# compiler once crashed late in a single-process run). TEST_WORKERS=0 runs in this process. tests/conftest.py
# compiles without XLA's optimization passes (7.3 -> 5.3 min); JAX_DISABLE_MOST_OPTIMIZATIONS=0 make test
# runs the same suite on optimized programs. It also keeps JAX's persistent compilation cache in .cache/jax-tests:
# ~1050 tests took 5.9-6.2 min on fresh clones (three runs) and 2.3 min on the second run (.ci/run, 2 idle
# cores, 2026-12-04; 8.2 and 3.0 min on the slower CPU of an earlier machine).
TEST_WORKERS ?= 2

test: setup
	$(VPY) -m pytest -n $(TEST_WORKERS) --dist loadfile --doctest-modules gradflow tests

figures: setup
	$(VPY) -m analyses $(FIGARGS)

figures-quick: setup
	$(VPY) -m analyses --quick $(FIGARGS)

figures-full: setup
	$(VPY) -m analyses --full $(FIGARGS)

lint: setup
	$(VPY) -m ruff check gradflow analyses tests benchmarks docs

# The API reference docs/reference.md, generated from the docstrings of the public façade (docs/reference.py).
# Both fail, naming each problem, on a broken reference: a name in an __all__ that does not exist, an exported
# function/class/module without a docstring, a `gradflow.x.y` in backticks (docstrings, README.md, docs/*.md)
# that does not resolve; docs-check (CI) writes nothing and also fails when the committed file is stale.
docs: setup
	$(VPY) -m docs.reference

docs-check: setup
	$(VPY) -m docs.reference --check

bench: setup
	$(VPY) -m benchmarks $(BENCHARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .cache figures/.cache figures/.quick
