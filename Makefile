# Set-up is part of every target: a fresh machine needs nothing but Python 3.10+.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: train test lint install

train: $(STAMP)
	$(BIN)/gobig train $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU machines: install the CPU torch before anything that depends on torch
	# (an unpinned torch would pull a multi-GB CUDA build). GPU machines set
	# TORCH_SPEC to their CUDA build, or an empty string to keep what is there.
	$(BIN)/python -m pip install -q "$${TORCH_SPEC-torch==2.13.0}"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)
