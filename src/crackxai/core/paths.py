
"""Where each stage reads and writes, relative to the project root (DVC runs stages from there)."""

import os
from pathlib import Path

RAW_DIR = Path("data/raw")
MANIFEST = Path("data/manifest.csv")
PROCESSED_DIR = Path("data/processed")
MODELS_DIR = Path("models")
MODEL_FILE = MODELS_DIR / "model.keras"
RUN_FILE = MODELS_DIR / "mlflow_run.json"
TRAIN_STATE_DIR = Path("models/.train_state")  # BackupAndRestore + checkpoints (not a DVC output)
REPORTS_DIR = Path("reports")
DATA_QUALITY = REPORTS_DIR / "data_quality.json"
TRAIN_HISTORY = REPORTS_DIR / "train_history.csv"
METRICS = REPORTS_DIR / "metrics.json"
PLOTS_DIR = REPORTS_DIR / "plots"
EXPLAIN_DIR = REPORTS_DIR / "explain"


EXPS_TMP_MARKER = os.sep + os.path.join(".dvc", "tmp", "exps") + os.sep


def project_root() -> Path:
    """The user's project: DVC_ROOT (set by DVC for every stage, the parent repo for queued
    experiments), else the part of the working directory above .dvc/tmp/exps, else the cwd."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    cwd = str(Path.cwd().resolve())
    if EXPS_TMP_MARKER in cwd + os.sep:
        return Path((cwd + os.sep).split(EXPS_TMP_MARKER, 1)[0])
    return Path(cwd)
