# Two commands on a fresh machine:  `make run` (whole pipeline, embedded default)  and  `make test`.
PYTHON ?= python3
UV_VERSION := 0.13.8
UV := $(shell command -v uv 2>/dev/null || echo $(PYTHON) -m uv)

# Byte-compiled caches matter here: every stage and many tests start a fresh Python that imports
# TensorFlow, Keras and SHAP, and without .pyc files each start recompiles them (tens of seconds).
unexport PYTHONDONTWRITEBYTECODE

# TensorFlow build: TF=cpu (default, the `cpu` dependency group: tensorflow-cpu) or TF=gpu (the `gpu`
# group: tensorflow[and-cuda], with CUDA and cuDNN from pip). `make setup-gpu` records the choice in
# .venv, so later `make run` / `make test` keep the GPU build instead of syncing back to the CPU one;
# `make setup TF=cpu` switches back.
# Both wheels write the same `tensorflow/` files: if the other build got installed on top (a plain
# `uv run` after `make setup-gpu` adds tensorflow-cpu), removing it deletes shared files, so the
# wanted build is then reinstalled too.
TF_GPU_MARK := .venv/.crackxai-tf-gpu
TF_SITE := .venv/lib/python3.11/site-packages
TF ?= $(if $(wildcard $(TF_GPU_MARK)),gpu,cpu)
ifeq ($(TF),gpu)
UV_GROUPS := --no-group cpu --group gpu
TF_REPAIR := $(if $(wildcard $(TF_SITE)/tensorflow_cpu-*.dist-info),--reinstall-package tensorflow)
else ifeq ($(TF),cpu)
UV_GROUPS :=
TF_REPAIR := $(if $(wildcard $(TF_SITE)/tensorflow-*.dist-info),--reinstall-package tensorflow-cpu)
else
$(error TF must be cpu or gpu, not '$(TF)')
endif

# Optional dependency groups: RAY=1 adds `ray` (explain.runner=ray). The test targets always add
# it, so `make test` and CI exercise the Ray runner; `make setup` / `make run` stay lean.
EXTRA_GROUPS := $(if $(filter 1,$(RAY)),--group ray)
TEST_GROUPS := --group ray

.PHONY: setup setup-gpu run test test-slow lint params bench clean readme-scorecard restore

setup:  ## install the locked environment into .venv (TF=gpu: the CUDA build of TensorFlow)
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 || $(PYTHON) -m pip install -q "uv==$(UV_VERSION)"
	$(UV) sync --frozen --compile-bytecode --python 3.11 $(UV_GROUPS) $(EXTRA_GROUPS)$(if $(TF_REPAIR), $(TF_REPAIR))
	@$(if $(filter gpu,$(TF)),touch $(TF_GPU_MARK),rm -f $(TF_GPU_MARK))

setup-gpu:  ## install the locked environment with tensorflow[and-cuda] instead of tensorflow-cpu
	$(MAKE) setup TF=gpu

run: setup  ## download -> preprocess -> train -> evaluate -> explain on the embedded synthetic data
	$(UV) run --frozen $(UV_GROUPS) dvc repro

test: setup  ## the default (fast) test suite (adds the optional ray group)
	$(UV) sync --frozen --inexact --compile-bytecode --python 3.11 $(UV_GROUPS) $(TEST_GROUPS)
	$(UV) run --frozen $(UV_GROUPS) $(TEST_GROUPS) pytest

test-slow: setup  ## the slow, end-to-end tests (real-data sample, full sweeps)
	$(UV) sync --frozen --inexact --compile-bytecode --python 3.11 $(UV_GROUPS) $(TEST_GROUPS)
	$(UV) run --frozen $(UV_GROUPS) $(TEST_GROUPS) pytest -m slow

lint: setup
	$(UV) run --frozen $(UV_GROUPS) ruff check src tests benchmarks

params: setup  ## regenerate params.yaml from conf/ (as `dvc exp run` does)
	$(UV) run --frozen $(UV_GROUPS) python -m crackxai.params

# The README's explanation tables, generated: the default model on the real masked photos beside the
# checkout (all 244; CPU-heavy, e.g. SCORECARD_ARGS="--n 200 explain.methods=[gradcam,lime]") and the
# scorecard of the last explain stage run (reports/explain).
SCORECARD_ARGS ?=
readme-scorecard: setup  ## regenerate the README's explanation tables (python -m crackxai.scorecard)
	$(UV) run --frozen $(UV_GROUPS) python -m crackxai.scorecard --model models/model.keras --data ../shared/real-masks $(SCORECARD_ARGS) --readme README.md --block real-masks
	$(UV) run --frozen $(UV_GROUPS) python -m crackxai.scorecard --from-report reports/explain --readme README.md --block synthetic

# After a failed or killed `dvc repro` / `dvc exp run`: params.yaml and dvc.lock from the last
# commit, every output from DVC's cache. `touch` first: a failed `dvc exp run` can leave
# params.yaml changed behind a git index that calls it unchanged (same size and time), and
# `git checkout` would then skip it (README "Why validate comes first").
restore:  ## put back the last committed state after a failed or killed run
	touch -c params.yaml dvc.lock
	git checkout HEAD -- params.yaml dvc.lock
	$(UV) run --frozen $(UV_GROUPS) dvc checkout

clean:
	rm -rf data/raw data/processed data/manifest.csv models/model.keras models/.train_state reports
