# Two commands for a new user: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.cvrl_tf_installed
DEMO_DIR ?= runs/demo
PYTEST_ARGS ?=

.PHONY: demo test bench clean venv

venv: $(STAMP)

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m cvrl_tf.demo --output_dir $(DEMO_DIR)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)  # side-by-side ratios against the Model Garden; minutes, not part of the suite
	$(BIN)/python -m bench.bench_model
	$(BIN)/python -m bench.bench_input

clean:
	rm -rf runs .pytest_cache
