# Two commands on a fresh machine:  `make run` (whole pipeline, embedded default)  and  `make test`.
PYTHON ?= python3
UV_VERSION := 0.13.8
UV := $(shell command -v uv 2>/dev/null || echo $(PYTHON) -m uv)

# Byte-compiled caches matter here: every stage and many tests start a fresh Python that imports
# TensorFlow, Keras and SHAP, and without .pyc files each start recompiles them (tens of seconds).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: setup run test test-slow lint params bench clean

setup:  ## install the locked environment into .venv
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 || $(PYTHON) -m pip install -q "uv==$(UV_VERSION)"
	$(UV) sync --frozen --compile-bytecode --python 3.11

run: setup  ## download -> preprocess -> train -> evaluate -> explain on the embedded synthetic data
	$(UV) run --frozen dvc repro

test: setup  ## the default (fast) test suite
	$(UV) run --frozen pytest

test-slow: setup  ## the slow, end-to-end tests (real-data sample, full sweeps)
	$(UV) run --frozen pytest -m slow

lint: setup
	$(UV) run --frozen ruff check src tests benchmarks

params: setup  ## regenerate params.yaml from conf/ (as `dvc exp run` does)
	$(UV) run --frozen python -m crackxai.params

clean:
	rm -rf data/raw data/processed data/manifest.csv models/model.keras models/.train_state reports
