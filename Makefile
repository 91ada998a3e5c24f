# Two commands for a fresh machine:  `make demo` (the whole chain on a built-in dataset) and `make test`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
EXTRAS ?= offline,service,dev
BIN := $(VENV)/bin

.PHONY: install demo test lint bench clean

$(BIN)/mcmfh: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, so pip does not pull a multi-GB CUDA build as a dependency
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	touch $(BIN)/mcmfh

install: $(BIN)/mcmfh

demo: install
	$(BIN)/mcmfh demo

test: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
