# ardiff-scale: `make demo` and `make test` work on a fresh machine; both create .venv first.
# GPU users: put a CUDA build of torch into .venv before the first `make` (see README.md).

PYTHON ?= python3
VENV := .venv
VENV_PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Extra flags: make demo DEMO_ARGS="--minutes 2 train.lr=5e-4"; make test PYTEST_ARGS="-k timesteps";
# make bench BENCH_ARGS=--quick
DEMO_ARGS ?=
PYTEST_ARGS ?=
BENCH_ARGS ?=

# DeepSpeed picks its CPU accelerator without probing for CUDA; Ray stays on loopback.
export DS_ACCELERATOR := cpu
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0

.DEFAULT_GOAL := help
.PHONY: help venv .venv demo test bench reproduce clean distclean

help:
	@echo "make demo       train the tiny model on data/demo for a few minutes on CPU and print samples"
	@echo "make test       run the test suite (pytest)"
	@echo "make bench      model throughput benchmark (benchmarks/bench_model.py)"
	@echo "make reproduce  the paper's claims at CPU scale: train 3 systems on 2 tasks, sweep M and k (~75 min;"
	@echo "                report in eval/results/full); REPRODUCE_ARGS=--smoke for a few minutes' version"
	@echo "make venv       create .venv and install the pinned dependencies (done by every target above)"
	@echo "make clean      remove build artefacts and runs/; distclean also removes .venv"

venv .venv: $(STAMP)

$(VENV_PYTHON):
	$(PYTHON) -m venv $(VENV)

# The lock goes in first: it pins torch to the CPU build, so the editable install finds torch satisfied
# instead of pulling a multi-GB CUDA wheel.
$(STAMP): pyproject.toml requirements-lock.txt | $(VENV_PYTHON)
	$(VENV_PYTHON) -m pip install --upgrade pip
	$(VENV_PYTHON) -m pip install -r requirements-lock.txt
	$(VENV_PYTHON) -m pip install -e '.[dev]'
	touch $@

demo: $(STAMP)
	$(VENV)/bin/ardiff demo $(DEMO_ARGS)

test: $(STAMP)
	$(VENV_PYTHON) -m pytest -q -p no:cacheprovider --timeout=900 tests $(PYTEST_ARGS)

bench: $(STAMP)
	$(VENV_PYTHON) benchmarks/bench_model.py $(BENCH_ARGS)

reproduce: $(STAMP)
	$(VENV)/bin/ardiff reproduce $(REPRODUCE_ARGS)

clean:
	rm -rf build dist *.egg-info .pytest_cache runs mlruns mlflow.db
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
