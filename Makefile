# Two commands set up a fresh machine:  `make demo`  and  `make test`.
# Development and CI pin the CPU torch that lies on disk (constraints.txt);
# users with GPUs install their own CUDA torch, then `pip install -e '.[gpu]'`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= demo-out
PYTEST_ARGS ?=

.PHONY: setup demo test bench clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/skysieve demo --out $(DEMO_OUT)

test: setup
	$(BIN)/python -m pytest -ra $(PYTEST_ARGS)

bench: setup
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
