"""The whole pipeline in one process, as a Hydra app: quick local sweeps without DVC.

    python -m crackxai.pipeline train.lr=1e-4 experiment=smoke          # one run
    python -m crackxai.pipeline -m train.lr=1e-3,1e-4 train.batch_size=32,64   # a grid, one job each

Each job validates its configuration, then runs download -> preprocess -> train -> evaluate ->
explain by calling each stage's `main(cfg)`, inside the job's own Hydra output folder
(outputs/<date>/<time>/ or multirun/<date>/<time>/<job>/), so jobs never overwrite each other or the
project's DVC outputs. All jobs log into the project's MLflow store; compare them with
`python -m crackxai.compare`. For tracked, cached, reproducible runs use `dvc exp run` instead.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from omegaconf import DictConfig

from crackxai.config import Config, find_conf_dir, validate
from crackxai.core.entry import fail, log
from crackxai.core.errors import CrackxaiError
from crackxai.tracking.runs import resolve_tracking_uri

STAGE = "pipeline"
STAGES = ("download", "preprocess", "train", "evaluate", "explain")


@contextlib.contextmanager
def _env(name: str, value: str | None) -> Iterator[None]:
    old = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def run_pipeline(cfg: Config, workdir: str | Path, stages: tuple[str, ...] = STAGES) -> None:
    """Run `stages` in order inside `workdir`, logging into the store of the *calling* project."""
    # Resolve everything relative to the project before leaving it: the default SQLite store and a
    # relative data.path would otherwise point into the job folder.
    store = None if cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") \
        else resolve_tracking_uri()
    if cfg.data.path and not Path(cfg.data.path).is_absolute():
        cfg = replace(cfg, data=replace(cfg.data, path=str(Path(cfg.data.path).resolve())))
    if "keras" in sys.modules:  # an earlier job in this process: start from a clean Keras state
        sys.modules["keras"].backend.clear_session()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with _env("MLFLOW_TRACKING_URI", store), contextlib.chdir(workdir):
        for name in stages:
            log(STAGE, f"{name} (in {workdir})")
            importlib.import_module(f"crackxai.stages.{name}").main(cfg)


def job(raw: DictConfig) -> None:
    """One Hydra job: validate, then run every stage in the job's output folder."""
    from hydra.core.hydra_config import HydraConfig

    try:
        cfg = validate(raw, source="configuration")
        run_pipeline(cfg, HydraConfig.get().runtime.output_dir)
    except CrackxaiError as exc:
        fail(STAGE, str(exc))


def main() -> None:
    import hydra

    try:
        conf_dir = find_conf_dir()
    except CrackxaiError as exc:
        fail(STAGE, str(exc))
    hydra.main(config_path=str(conf_dir.resolve()), config_name="config", version_base="1.3")(job)()


if __name__ == "__main__":
    sys.exit(main())
