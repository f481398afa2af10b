# The two commands: `make demo` (install, then run the end-to-end demo) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench-ingest

$(BIN)/specwatch: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: this wheel is CPU-only; an unpinned torch would pull a multi-GB CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/specwatch
	$(BIN)/specwatch demo

test: $(BIN)/specwatch
	$(BIN)/python -m pytest -q

lint: $(BIN)/specwatch
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench-ingest: $(BIN)/specwatch
	$(BIN)/python bench/ingest_throughput.py
