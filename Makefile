# The two commands of the README: `make serve` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
HOST ?= 127.0.0.1
PORT ?= 8000
# processes that run the test suite (pytest-xdist): CI's 2 cores; 0 runs it in one process
TEST_WORKERS ?= 2
# worker processes of `make serve` (uvicorn's --workers); 1 by default: see the README, Scaling out
WEB_CONCURRENCY ?= 1
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# numba keeps the compiled kernels here, so a server process starts in about a second instead of compiling them
# for several (amortized/compiled.py: a subfolder per version of the sources); unset it to compile in memory only
export NUMBA_CACHE_DIR ?= $(abspath $(VENV))/numba-cache

.PHONY: serve test lint compile report bench-compile bench-serve clean-venv

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[service,client,test]'
	touch $@

serve: $(STAMP)  ## serve the committed artifacts on $(HOST):$(PORT) with $(WEB_CONCURRENCY) worker processes
	WEB_CONCURRENCY=$(WEB_CONCURRENCY) $(BIN)/python -m service --host $(HOST) --port $(PORT)

test: $(STAMP)  ## run the test suite on $(TEST_WORKERS) processes (pytest-xdist; TEST_WORKERS=0 runs it in this one)
	$(BIN)/python -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist worksteal)

lint: $(STAMP)  ## ruff (lint and format check) and mypy, as configured in pyproject.toml
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

compile: $(STAMP)  ## recompile the four default variants and the example ones (examples/variants/) into artifacts/
	$(BIN)/python -m trainer compile --all --spec examples/variants

report: $(STAMP)  ## print the evaluation table of the committed artifacts
	$(BIN)/python -m trainer report

clean-venv:
	rm -rf $(VENV)
