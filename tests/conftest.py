"""Shared fixtures: every test runs in its own throw-away project folder (stages write relative
to the working directory, as under DVC)."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_SAMPLE = REPO.parent / "shared" / "crack-sample"
SHARED_MASKS = REPO.parent / "shared" / "real-masks"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")



def free_ports(n: int = 1) -> list[int]:
    """`n` distinct loopback ports nothing listens on now (all bound at once, then released)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports

@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temp project: conf/ and params.yaml copied in, cwd set there, no DVC/MLflow env leaking
    in from the caller (the default MLflow store is then <tmp>/mlflow.db)."""
    shutil.copytree(REPO / "conf", tmp_path / "conf")
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    for var in ("DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV",
                "MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME",
                "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def crack_sample() -> Path:
    """The real-image sample beside the checkout (../shared/crack-sample); skip when absent."""
    if not (SHARED_SAMPLE / "Positive").is_dir():
        pytest.skip(f"real-image sample not found at {SHARED_SAMPLE} (only present in the "
                    "project's own workplace; never copied into the repo)")
    return SHARED_SAMPLE


@pytest.fixture
def real_masks() -> Path:
    """244 real crack photos with human masks beside the checkout (../shared/real-masks: images/
    and masks/, same stem); skip when absent."""
    if not (SHARED_MASKS / "images").is_dir() or not (SHARED_MASKS / "masks").is_dir():
        pytest.skip(f"real masked images not found at {SHARED_MASKS} (only present in the "
                    "project's own workplace; never copied into the repo)")
    return SHARED_MASKS


@pytest.fixture(scope="session")
def fault_log(tmp_path_factory: pytest.TempPathFactory):
    """The fault suite's record (tests/faults_support.py): one JSON line per fault case tried;
    `python tests/fault_table.py <file>` prints the README "Reliability" table from it."""
    from tests.fault_record import FaultLog, fault_log_path

    return FaultLog(fault_log_path(tmp_path_factory.getbasetemp()))


def pytest_sessionfinish(session) -> None:
    """The hypothesis examples counted by tests/fault_record.counted go into the record."""
    import sys

    record = sys.modules.get("tests.fault_record")
    factory = getattr(session.config, "_tmp_path_factory", None)
    if record is not None and record.EXAMPLES and factory is not None:
        record.record_examples(record.FaultLog(record.fault_log_path(factory.getbasetemp())))


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Where the fault suite's record went (only when a fault test ran)."""
    base = getattr(getattr(config, "_tmp_path_factory", None), "_basetemp", None)
    env = os.environ.get("CRACKXAI_FAULT_LOG")  # tests/fault_record.LOG_ENV
    path = Path(env) if env else (Path(base) / "fault_cases.jsonl" if base else None)
    if path is not None and path.is_file():
        terminalreporter.write_line(f"fault cases recorded in {path} "
                                    f"(table: python tests/fault_table.py {path})")
