# The README's quick start: `make quickstart` and `make test`. Both set up .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export WANDB_MODE ?= offline
# the shared GLUE/SuperGLUE files beside the clone when present; otherwise the hub
export PETUNE_DATA_DIR ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),)

.PHONY: setup quickstart test test-slow test-real lint

# One pip command resolves the whole stack (installing pieces later broke transformers; REFERENCE §8).
# torch==2.13.0 first in the same command takes the CPU wheel on disk instead of a CUDA build.
$(BIN)/petune: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0 -e '.[test]'
	touch $@

setup: $(BIN)/petune

quickstart: setup
	$(BIN)/petune fit --config recipes/quickstart.yaml

test: setup
	$(BIN)/python -m pytest -q -n 2

# ruff and mypy on the library and the callbacks (settings in pyproject.toml).
lint: setup
	$(BIN)/ruff check pl_petune callbacks && $(BIN)/mypy pl_petune callbacks

# Slow, CPU-only checks CI also runs: SIGKILL/SIGTERM-and-resume, disk full, run locks, a full parse of every
# run of every sweep file, the real one-host SLURM, the callbacks installed alone in a fresh venv (a test file
# stays on one worker: --dist loadfile).
test-slow: setup
	$(BIN)/python -m pytest -q -rs -n 2 --dist loadfile -m slow --ignore=tests/methods tests

# Every method recipe trained on the real MiniLM and CB (about 3 minutes each on 2 cores; not in CI).
test-real: setup
	$(BIN)/python -m pytest -q -m slow tests/methods
