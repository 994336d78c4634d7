# Two commands for a new user: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.cvrl_tf_installed
DEMO_DIR ?= runs/demo
DETECTION_DEMO_DIR ?= runs/demo_detection
# Two processes, a file each at a time (tests/conftest.py orders the longest files first).
PYTEST_ARGS ?= -n 2 --dist loadfile --no-loadscope-reorder

.PHONY: demo demo-detection test test-scenarios bench clean venv

venv: $(STAMP)

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m cvrl_tf.demo --output_dir $(DEMO_DIR)

demo-detection: $(STAMP)  # reuses $(DEMO_DIR)/pretrain when `make demo` left one
	$(BIN)/python -m cvrl_tf.demo_detection --output_dir $(DETECTION_DEMO_DIR) \
		--pretrain_dir $(DEMO_DIR)/pretrain

test: $(STAMP)  # every test but the whole-command scenarios (tests marked scenario)
	$(BIN)/python -m pytest $(PYTEST_ARGS) -m "not scenario"

test-scenarios: $(STAMP)  # multi-worker, preempt-kill-resume, demo, findings, bench, processes
	$(BIN)/python -m pytest $(PYTEST_ARGS) -m scenario

bench: $(STAMP)  # side-by-side against the Model Garden (docs/BENCHMARKS.md); minutes each
	nice -n 10 $(BIN)/python -m bench.input_pipeline
	nice -n 10 $(BIN)/python -m bench.train_step

clean:
	rm -rf runs .pytest_cache
