# Set-up is part of every target: a fresh machine needs nothing but Python 3.10+.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_DEFAULT := torch==2.13.0
# torch and the packages only its build decides stay out of constraints.txt
UNPINNED := torch|triton|sympy|mpmath|networkx|nvidia-[a-z0-9-]*

.PHONY: train test lint install pins

train: $(STAMP)
	$(BIN)/gobig train $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU machines: install the CPU torch before anything that depends on torch
	# (an unpinned torch would pull a multi-GB CUDA build). GPU machines set
	# TORCH_SPEC to their CUDA build, or an empty string to keep what is there.
	$(BIN)/python -m pip install -q "$${TORCH_SPEC-$(TORCH_DEFAULT)}"
	# everything else at the versions CI tested (constraints.txt; `make pins`)
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

# Move the pins forward: resolve the newest versions pyproject.toml allows in a
# throwaway venv (no constraints) and write them to constraints.txt, keeping its
# header. Then `make test` and commit constraints.txt. .venv is not touched.
pins:
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/python" -m pip install -q --upgrade pip; \
	"$$tmp/venv/bin/python" -m pip install -q "$${TORCH_SPEC:-$(TORCH_DEFAULT)}"; \
	"$$tmp/venv/bin/python" -m pip install -q -e ".[dev]"; \
	"$$tmp/venv/bin/python" -m pip check; \
	grep '^#' constraints.txt > "$$tmp/constraints.txt"; \
	"$$tmp/venv/bin/python" -m pip freeze --exclude-editable \
	  | grep -viE '^($(UNPINNED))==' >> "$$tmp/constraints.txt"; \
	mv "$$tmp/constraints.txt" constraints.txt; \
	echo "constraints.txt: $$(grep -vc '^#' constraints.txt) pins; now run make test and commit it"
