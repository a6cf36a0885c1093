"""Where each stage reads and writes: a layout under a root, the folder a stage runs in.

DVC runs every stage from the project root, the pipeline tool runs them from each job's folder;
either way a stage works relative to its working directory, so the module constants below are
relative paths (`Layout()`). Only stages and tools resolve paths: library code (data, models,
evaluation, xai, tracking) takes them as arguments and never reads these constants itself.
A tool that looks at another folder's outputs uses `Layout(root)`, e.g.
`Layout(job_dir).metrics` for a pipeline job's reports/metrics.json.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

OOD_SUFFIX = ".ood.npz"  # models/model.keras -> models/model.ood.npz


def ood_file_for(model_file: str | Path) -> Path:
    """The out-of-distribution detector saved beside a model file (crackxai.models.ood)."""
    path = Path(model_file)
    return path.with_name(path.name.removesuffix(".keras") + OOD_SUFFIX)


@dataclass(frozen=True)
class Layout:
    """The pipeline's files under `root` (default: relative to the working directory)."""

    root: Path = Path()

    @property
    def raw_dir(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def manifest(self) -> Path:
        return self.root / "data" / "manifest.csv"

    @property
    def processed_dir(self) -> Path:
        return self.root / "data" / "processed"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def model_file(self) -> Path:
        return self.models_dir / "model.keras"

    @property
    def ood_file(self) -> Path:
        return ood_file_for(self.model_file)  # the model's out-of-distribution detector

    @property
    def run_file(self) -> Path:
        return self.models_dir / "mlflow_run.json"

    @property
    def train_state_dir(self) -> Path:
        return self.models_dir / ".train_state"  # BackupAndRestore + checkpoints (not a DVC output)

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def config_dir(self) -> Path:
        return self.reports_dir / "config"  # validate's resolved sections, the stages' deps

    @property
    def data_quality(self) -> Path:
        return self.reports_dir / "data_quality.json"

    @property
    def train_history(self) -> Path:
        return self.reports_dir / "train_history.csv"

    @property
    def metrics(self) -> Path:
        return self.reports_dir / "metrics.json"

    @property
    def plots_dir(self) -> Path:
        return self.reports_dir / "plots"

    @property
    def explain_dir(self) -> Path:
        return self.reports_dir / "explain"

    @property
    def explain_metrics(self) -> Path:
        return self.explain_dir / "metrics.json"


_HERE = Layout()
RAW_DIR = _HERE.raw_dir
MANIFEST = _HERE.manifest
PROCESSED_DIR = _HERE.processed_dir
MODELS_DIR = _HERE.models_dir
MODEL_FILE = _HERE.model_file
OOD_FILE = _HERE.ood_file
RUN_FILE = _HERE.run_file
TRAIN_STATE_DIR = _HERE.train_state_dir
REPORTS_DIR = _HERE.reports_dir
CONFIG_DIR = _HERE.config_dir
DATA_QUALITY = _HERE.data_quality
TRAIN_HISTORY = _HERE.train_history
METRICS = _HERE.metrics
PLOTS_DIR = _HERE.plots_dir
EXPLAIN_DIR = _HERE.explain_dir


EXPS_TMP_MARKER = os.sep + os.path.join(".dvc", "tmp", "exps") + os.sep


def project_root() -> Path:
    """The user's project: DVC_ROOT (set by DVC for every stage, the parent repo for queued
    experiments), else the part of the working directory above .dvc/tmp/exps, else the cwd.

    For stages and tools only: they pass it on (e.g. to resolve the MLflow store or a relative
    data.path); library code gets it as an argument."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    cwd = str(Path.cwd().resolve())
    if EXPS_TMP_MARKER in cwd + os.sep:
        return Path((cwd + os.sep).split(EXPS_TMP_MARKER, 1)[0])
    return Path(cwd)
