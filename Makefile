# Everything from a fresh clone: `make demo` (the main job) and `make test` (the test suite).
# Both create the local virtual environment .venv on first use (about 2 minutes, ~6 GB: torch
# is a CUDA build) and reinstall when setup.py changes.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lavit-installed

.PHONY: demo test test-slow test-all eval-shapes lint clean

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,eval]'
	touch $(STAMP)

# Main job: the shipped model (checkpoints/lavit-shapes-tiny) on held-out scenes ->
# outputs/demo/index.html (captions, VQA, text-to-image through both decoders, multimodal
# synthesis, reconstruction) and a printed summary.
demo: $(STAMP)
	$(BIN)/lavit demo --out outputs/demo

# Default tier: fast CPU tests (< 5 minutes on 2 cores).
test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

# Long checks (training runs, full evaluations); exit code 5 (no slow tests yet) is not a failure.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow; rc=$$?; [ $$rc -eq 5 ] && exit 0 || exit $$rc

test-all: test test-slow

# The ShapesWorld report of a pipeline (default: the shipped one): caption, VQA, text to image
# and reconstruction through both decoders -> outputs/eval/shapes/*/report.json + report.md.
MODEL ?= checkpoints/lavit-shapes-tiny
EVAL := outputs/eval/shapes
eval-shapes: $(STAMP)
	$(BIN)/python eval/caption.py --config configs/eval/shapes_caption.yaml model=$(MODEL) out_dir=$(EVAL)/caption
	$(BIN)/python eval/vqa.py --config configs/eval/shapes_vqa.yaml model=$(MODEL) out_dir=$(EVAL)/vqa
	for d in diffusion var; do \
	  $(BIN)/python eval/text2image.py --config configs/eval/shapes_text2image.yaml model=$(MODEL) decoder=$$d out_dir=$(EVAL)/text2image_$$d || exit 1; \
	  $(BIN)/python eval/text2image.py --config configs/eval/shapes_text2image_best8.yaml model=$(MODEL) decoder=$$d out_dir=$(EVAL)/text2image_best8_$$d || exit 1; \
	  $(BIN)/python eval/reconstruct.py --config configs/eval/shapes_reconstruct.yaml model=$(MODEL) decoder=$$d out_dir=$(EVAL)/reconstruct_$$d || exit 1; \
	done
	$(BIN)/python eval/report.py $(EVAL)/*/report.json | tee $(EVAL)/report.md

lint: $(STAMP)
	$(BIN)/ruff check lavit tokenizer detokenizer eval benchmarks tests

clean:
	rm -rf $(VENV) outputs .pytest_cache
