# Everything from a fresh clone: `make demo` (the main job) and `make test` (the test suite).
# Both create the local virtual environment .venv on first use (about 2 minutes, ~6 GB: torch
# is a CUDA build) and reinstall when setup.py changes.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lavit-installed

.PHONY: demo test test-slow test-all lint clean

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,eval]'
	touch $(STAMP)

# Main job: until `lavit demo` exists, the most complete path: environment report + a
# ShapesWorld sample grid with captions and QA (outputs/demo/shapes.png, shapes.json).
demo: $(STAMP)
	$(BIN)/lavit info
	$(BIN)/lavit shapes --out outputs/demo --num 16

# Default tier: fast CPU tests (< 5 minutes on 2 cores).
test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

# Long checks (training runs, full evaluations); exit code 5 (no slow tests yet) is not a failure.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow; rc=$$?; [ $$rc -eq 5 ] && exit 0 || exit $$rc

test-all: test test-slow

lint: $(STAMP)
	$(BIN)/ruff check lavit tokenizer detokenizer eval benchmarks tests

clean:
	rm -rf $(VENV) outputs .pytest_cache
