# Everything a fresh machine needs: `make demo` runs the main job, `make test` the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo

export RAY_USAGE_STATS_ENABLED := 0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export DS_ACCELERATOR ?= cpu
export TORCH_EXTENSIONS_DIR ?= $(HOME)/.cache/modaltune/torch_extensions

.PHONY: install demo test test-fast test-all lint docs bench clean

install: $(STAMP)

# torch first and alone: pinned to the CPU build this machine has; then the project itself.
# Last, DeepSpeed's shared-memory comm op, which it compiles on its first start in a venv
# (~25 s; keyed by the venv's paths): built here once, so the first DeepSpeed runs of the demo
# do not all wait on one compile.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(BIN)/python -c "from deepspeed.accelerator import get_accelerator; get_accelerator().create_op_builder('ShareMemCommBuilder').load()"
	touch $@

# The demo study (sweeps/studies/demo.yaml) on an embedded Ray; it generates its synthetic
# cohort under runs/cohorts/ on first use and ends by printing the headline table and paths.
demo: install
	rm -rf $(DEMO_DIR)
	$(BIN)/python sweeps/ablation.py --study sweeps/studies/demo.yaml --storage $(DEMO_DIR)

# Three tiers (pytest markers, pyproject.toml). test: what CI runs, every real seam at least once
# (real studies, Ray Train runs, the fault and cluster tests, the calibration simulations); the
# slowest are listed at the end, so its budget stays visible. test-fast: no Ray, no study, no
# long simulation: the unit tests, a contributor's loop (under 5 minutes). test-all: test and
# the further variations of seams test exercises (marked exhaustive, each naming where).
# TEST_WORKERS: pytest-xdist processes, a test file each at a time (--dist loadfile: a file's
# module fixtures, such as the smoke study every test of tests/sweeps/test_study.py reads, run
# once); 0, the default, runs the tests in this process. Two on 2 cores ran make test in 25
# minutes instead of 34 (a study test leaves a core idle for much of its run: its processes start
# and import torch one after another), but under two studies' load an embedded Ray once failed to
# start (Ray gives its raylet a fixed 30 s to register), so CI runs one until that start is retried.
TEST_WORKERS ?= 0
test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15 -m "not exhaustive" tests

test-fast: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=10 -m "not slow and not exhaustive" tests

test-all: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=25 tests

# ruff (its defaults plus line length, import order and bug-risk rules; pinned in pyproject.toml)
# over everything, and mypy over the library (modaltune/; settings in pyproject.toml). CI runs it first.
lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

# The documentation site (docs/, mkdocs.yml) into site/; --strict fails on a broken link or anchor.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# On demand only, never in CI: each benchmark prints its ratios and a `BENCH name ...` line.
# The GPU one is separate: bash benchmarks/bench_gpu.sh on a single-GPU machine.
bench: install
	$(BIN)/python benchmarks/bench_io.py
	$(BIN)/python benchmarks/bench_step.py
	$(BIN)/python benchmarks/bench_sweep.py
	$(BIN)/python benchmarks/bench_demo_engine.py
	$(BIN)/python benchmarks/bench_results.py
	$(BIN)/python benchmarks/bench_driver.py

clean:
	rm -rf $(VENV) runs
