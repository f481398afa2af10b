# The two commands: `make demo` (install, then run the end-to-end demo) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench-ingest compat

$(BIN)/specwatch: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: this wheel is CPU-only; an unpinned torch would pull a multi-GB CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/specwatch
	$(BIN)/specwatch demo

# two workers, each taking whole test files (a file's tests keep their order and module fixtures);
# TEST_WORKERS=0 runs the suite in this process
TEST_WORKERS ?= 2

test: $(BIN)/specwatch
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

lint: $(BIN)/specwatch
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# An independent loader for the engine-format tests: vLLM's `speculators` library in its own venv (it pins
# transformers <= 5.19); its torchvision/torchaudio wheels do not fit the CPU torch (shared/docs/STACK.md).
COMPAT_VENV ?= .venv-compat

compat: $(COMPAT_VENV)/bin/python-speculators

$(COMPAT_VENV)/bin/python-speculators:
	$(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/pip install --quiet torch==2.13.0 speculators==0.9.0
	$(COMPAT_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio
	$(COMPAT_VENV)/bin/python -c "from speculators.models.eagle3 import Eagle3DraftModel"
	ln -sf python $@

bench-ingest: $(BIN)/specwatch
	$(BIN)/python bench/ingest_throughput.py
