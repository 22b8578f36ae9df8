# The two commands: `make demo` and `make test`. Each creates the virtual environment if
# it is missing, installs the project into it, and runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= runs/demo
PYTEST_ARGS ?=

.PHONY: demo test test-slow lint install clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): setup.py | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Train the default toy model, sample it with PC, the ODE and 10-step DPM-Solver++, compute its
# likelihood next to the true density's, and write plots under $(DEMO_DIR).
demo: $(STAMP)
	$(PY) main.py --config configs/default_toy.py --workdir $(DEMO_DIR) --mode demo

# The suite runs in three groups of files, each a fresh pair of pytest-xdist workers: one
# worker process running every module grew past 11 GB (XLA's compiled programs and host
# allocations are not all returned), enough for the 24 GB CI machine to kill it. Each file
# runs whole on one worker (--dist loadfile): its module fixtures (trained models) are built
# once, and its tests share the worker's compiled programs (5 fixture-heavy files, cold
# cache, 2 cores: 219 s wall / 199 s CPU split by test, 198 s / 189 s by file).
test: $(STAMP)
	@set -e; for group in "tests/test_[a-f]*.py" "tests/test_[g-o]*.py" "tests/test_[p-z]*.py"; do \
	  echo "== $$group"; \
	  $(PY) -m pytest -q -n 2 --dist loadfile --durations=10 $(PYTEST_ARGS) $$group; \
	done

# CI also runs these slow tests after `make test`: real multi-process runs (2 processes x 2
# devices: training, sampling, bits/dim, stats, sample quality, reflow pairs and rf_eval
# equal to 1 x 4, kill -9 and exact resume, fsdp,
# restore on any device count), training on the grain pipeline killed and resumed with 2
# workers, a gs:// workdir on a fake object store (train, resume, eval, sample), every mode's
# fixed-seed fingerprints, a NaN model through the CLI, and EDM's slow checks (every sampler
# family on its process, training through main.py, importing a pickle), the notebooks and
# three benchmark smoke tests. The full bad-value
# sweep over every config leaf (tests/test_bad_values.py, ~10,700 runs) is `pytest -m slow`.
# Runs that start processes of their own (multi-process, grain workers, a GCS server) and
# time how their peers stop run one at a time; the others in two workers.
SLOW_PROCESS_TESTS ?= tests/test_multiprocess.py tests/test_multiprocess_modes.py \
  tests/test_grain_pipeline.py tests/test_gcs_workdir.py
SLOW_TESTS ?= tests/test_fingerprints.py tests/test_nonfinite.py \
  tests/test_edm_process.py tests/test_edm_samplers.py \
  tests/test_edm_training.py tests/test_edm_configs.py tests/test_edm_networks.py \
  tests/test_edm_pickle.py tests/test_edm_bench.py tests/test_notebooks.py \
  tests/test_bench.py::test_ncsnpp_cpu_tiny tests/test_bench.py::test_compile_cache_toy \
  tests/test_bench.py::test_fast_samplers_toy_records_paired_chunks
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow --durations=10 $(PYTEST_ARGS) $(SLOW_PROCESS_TESTS)
	$(PY) -m pytest -q -n 2 -m slow --durations=10 $(PYTEST_ARGS) $(SLOW_TESTS)

# The suite runs this too (tests/test_lint.py); here for a quick check while editing.
lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs
