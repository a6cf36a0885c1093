"""`python -m crackxai.compare` on runs logged straight into a real SQLite MLflow store."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.entities import Metric, Param

from crackxai.config import default_config
from crackxai.core.errors import CrackxaiError
from crackxai.tools.compare import compare, differing_params, load_runs, main
from crackxai.tracking.runs import config_params

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def log_model_run(client: mlflow.MlflowClient, exp_id: str, name: str, start: int,
                  overrides: dict, metrics: dict[str, float]) -> str:
    """A model run as the pipeline logs it (all config params, dotted), plus an explain child."""
    cfg = default_config(overrides)
    run = client.create_run(exp_id, start_time=start, run_name=name,
                            tags={"crackxai.stage": "train"})
    rid = run.info.run_id
    client.log_batch(rid, params=[Param(k, v) for k, v in config_params(cfg).items()],
                     metrics=[Metric(k, v, start, 0) for k, v in metrics.items()])
    child = client.create_run(exp_id, start_time=start + 1, run_name="explain",
                              tags={"mlflow.parentRunId": rid})
    client.log_param(child.info.run_id, "explain.method", "gradcam")
    client.log_metric(child.info.run_id, "explain/gradcam/deletion_auc", 0.3)
    client.set_terminated(child.info.run_id)
    client.set_terminated(rid)
    return rid


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Three lr runs (newest last) and their nested explain runs."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    exp_id = client.create_experiment("crackxai")
    t0 = int(time.time() * 1000)
    for i, lr in enumerate([1e-2, 1e-3, 1e-4]):
        log_model_run(client, exp_id, f"exp-lr{i}", t0 + 1000 * i, {"train": {"lr": lr}},
                      {"test/accuracy": 0.7 + 0.1 * i, "test/f1": 0.6 + 0.1 * i,
                       "val/accuracy": 0.8, "train/loss": 0.5})
    return uri


def test_table_shows_only_changed_params_and_top_level_runs(store: str, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "chart.png"
    table = compare(last=10, uri=store, out=out)
    lines = table.splitlines()
    header = lines[0].split()
    assert header[:3] == ["run", "status", "train.lr"]  # the only param that differs
    assert "train.batch_size" not in header and "test/accuracy" in header and "test/f1" in header
    assert len(lines) == 2 + 3  # header, rule, three model runs: the explain children are left out
    assert [line.split()[0] for line in lines[2:]] == ["exp-lr2", "exp-lr1", "exp-lr0"]
    assert "0.0001" in lines[2] and "0.9" in lines[2]
    assert table in capsys.readouterr().out
    assert out.read_bytes()[:8] == PNG_MAGIC and out.stat().st_size > 5000


def test_last_n_and_explicit_param(store: str, tmp_path: Path) -> None:
    runs = load_runs(store, "crackxai", last=2)
    assert [r.info.run_name for r in runs] == ["exp-lr2", "exp-lr1"]
    assert differing_params(runs) == ["train.lr"]
    # A param that does not differ still charts (one x value), categories too.
    out = tmp_path / "by_batch.png"
    compare(last=2, uri=store, param="train.batch_size", metric="test/f1", out=out)
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_clear_errors(store: str, project: Path) -> None:
    with pytest.raises(CrackxaiError, match="No MLflow store at .*mlflow.db"):
        compare()  # the default store of this (empty) project does not exist
    assert not (project / "mlflow.db").exists()  # and compare did not create one
    with pytest.raises(CrackxaiError, match="no experiment 'nope'.*crackxai"):
        compare(uri=store, experiment="nope")
    with pytest.raises(CrackxaiError, match="has metric 'test/auc'.*test/accuracy"):
        compare(uri=store, metric="test/auc", out=project / "x.png")
    with pytest.raises(CrackxaiError, match="--param 'train.nope'.*train.lr"):
        compare(uri=store, param="train.nope")
    mlflow.MlflowClient(store).create_experiment("empty")
    with pytest.raises(CrackxaiError, match="no runs yet"):
        compare(uri=store, experiment="empty")


def test_command_line(store: str, project: Path, capsys: pytest.CaptureFixture) -> None:
    main(["--last", "3", "--uri", store])
    out = capsys.readouterr().out
    assert "train.lr" in out and "exp-lr0" in out
    assert (project / "reports" / "compare.png").is_file()  # the default --out
    # The module entry point turns errors into one line and exit code 2.
    bad = subprocess.run([sys.executable, "-m", "crackxai.compare"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "crackxai.compare: error: No MLflow store" in bad.stderr
    assert "Traceback" not in bad.stderr
