"""Tracking for parallel and shared work: concurrent writers to the default SQLite store, queued DVC
experiments (store resolved against DVC_ROOT), and a real `mlflow server` read back over REST."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import requests

from crackxai.config import default_config
from crackxai.core.paths import project_root
from crackxai.tracking import runs as tracking
from tests.conftest import free_ports

VENV_BIN = Path(sys.executable).parent
N_WRITERS = 3
STEPS = 20

# One writer = one pipeline run: start_model_run, step metrics, a test metric, an artifact, end.
# Heavy imports happen before the barrier so that the store writes really overlap.
WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import keras, mlflow, tensorflow  # noqa: F401
    from crackxai.config import default_config
    from crackxai.tracking import runs as tracking

    i, go, steps = int(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    cfg = default_config({"train": {"lr": 10.0 ** -(i + 1)}})
    Path(f"ready{i}").touch()
    while not go.exists():
        time.sleep(0.01)
    run = tracking.start_model_run(cfg, Path.cwd())
    for step in range(steps):
        mlflow.log_metrics({"train/loss": 1.0 / (step + 1), "val/accuracy": step / 100}, step=step)
    mlflow.log_metric("test/accuracy", 0.5 + i / 10)
    Path(f"art{i}.txt").write_text(str(i))
    mlflow.log_artifact(f"art{i}.txt")
    mlflow.end_run()
""")


def test_parallel_writers_to_default_sqlite_store(project: Path) -> None:
    """N processes starting at the same moment on a fresh default store: N complete runs."""
    script = project / "writer.py"
    script.write_text(WRITER)
    go = project / "go"
    procs = [subprocess.Popen([sys.executable, str(script), str(i), str(go), str(STEPS)], cwd=project,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(N_WRITERS)]
    try:
        deadline = time.monotonic() + 480  # 2 shared cores: TF imports are slow
        while not all((project / f"ready{i}").exists() for i in range(N_WRITERS)):
            assert all(p.poll() is None for p in procs), [p.communicate()[0] for p in procs]
            assert time.monotonic() < deadline, "writers did not start"
            time.sleep(0.1)
        go.touch()  # all at once: schema creation, experiment creation and run writes collide
        outputs = [p.communicate(timeout=480)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out
        assert "database is locked" not in out, out

    # The default store is <project>/mlflow.db, artifacts beside it.
    uri = tracking.resolve_tracking_uri(None, project)
    assert uri == f"sqlite:///{project}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    assert len(client.search_experiments()) == 2  # Default + crackxai, created once
    exp = client.get_experiment_by_name("crackxai")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == N_WRITERS
    assert sorted(float(r.data.params["train.lr"]) for r in runs) == \
        sorted(10.0 ** -(i + 1) for i in range(N_WRITERS))
    for r in runs:
        assert r.info.status == "FINISHED"
        assert len(r.data.params) > 50  # the whole flattened config
        assert len(client.get_metric_history(r.info.run_id, "train/loss")) == STEPS
        assert "test/accuracy" in r.data.metrics
        assert [a.path for a in client.list_artifacts(r.info.run_id)] == \
            [f"art{round(r.data.metrics['test/accuracy'] * 10) - 5}.txt"]
        assert r.info.artifact_uri.startswith((project / "mlartifacts").as_uri())


def test_store_resolves_to_dvc_root_for_queued_experiments(project: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A queued experiment runs in <repo>/.dvc/tmp/exps/<tmp>/; the store stays in <repo>."""
    copy = project / ".dvc" / "tmp" / "exps" / "tmpabc123"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    # Without DVC_ROOT (e.g. a stage run by hand inside the copy) the path tells.
    assert project_root() == project
    assert tracking.resolve_tracking_uri(None, project_root()) == f"sqlite:///{project}/mlflow.db"
    # DVC sets DVC_ROOT to the parent repo for queued runs; it wins.
    monkeypatch.setenv("DVC_ROOT", str(project))
    assert project_root() == project
    root = project_root()
    assert tracking.resolve_tracking_uri("sqlite:///runs/m.db", root) == \
        f"sqlite:///{project}/runs/m.db"
    assert tracking.resolve_tracking_uri("mlruns", root) == (project / "mlruns").as_uri()
    assert tracking.resolve_tracking_uri("http://127.0.0.1:5000", root) == "http://127.0.0.1:5000"
    # The library itself never looks at the working directory: the root is an argument.
    assert tracking.resolve_tracking_uri(None, "/elsewhere") == "sqlite:////elsewhere/mlflow.db"


def test_nested_run_stays_in_model_experiment(project: Path) -> None:
    """evaluate/explain reopen the model's run from models/mlflow_run.json; the explain child run
    hangs under it in the same experiment (MLflow would otherwise put it in 'Default')."""
    cfg = default_config({"tracking": {"experiment": "crackxai"}})
    run = tracking.start_model_run(cfg, project)
    tracking.write_run_file(run, project / "run.json")
    mlflow.end_run()
    with tracking.resume_model_run(cfg, project / "run.json", project,
                                   nested_name="explain") as child:
        mlflow.log_metric("explain/gradcam/deletion_auc", 0.25)
    client = mlflow.MlflowClient(tracking.resolve_tracking_uri(None, project))
    got = client.get_run(child.info.run_id)
    assert got.info.experiment_id == run.info.experiment_id
    assert got.data.tags["mlflow.parentRunId"] == run.info.run_id
    assert got.data.metrics == {"explain/gradcam/deletion_auc": 0.25}
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    assert sorted(e.name for e in client.search_experiments()) == ["Default", "crackxai"]
    assert client.search_runs(["0"]) == []  # nothing in Default


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real `mlflow server` (SQLite backend, proxied artifacts in a folder); killed afterwards."""
    (port,) = free_ports()
    uri = f"http://127.0.0.1:{port}"
    art = tmp_path / "art"
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed in the finalizer
    proc = subprocess.Popen(
        [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp_path}/srv.db",
         "--artifacts-destination", str(art), "--serve-artifacts", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if requests.get(f"{uri}/health", timeout=5).ok:
                    break
            except requests.RequestException:  # not up yet, or too busy to answer
                pass
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.5)
        yield uri, art
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its workers: our own group
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_run_logged_to_tracking_server(project: Path, mlflow_server: tuple[str, Path],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    uri, art = mlflow_server
    monkeypatch.setenv("DVC_EXP_NAME", "shared-lr-1e-4")
    cfg = default_config({"train": {"lr": 1e-4}, "tracking": {"uri": uri, "experiment": "team"}})
    run = tracking.start_model_run(cfg, project)
    try:
        mlflow.log_metrics({"train/loss": 0.4, "test/accuracy": 0.875})
        (project / "note.txt").write_text("hello")
        mlflow.log_artifact(str(project / "note.txt"), "evaluate")
    finally:
        mlflow.end_run()
    assert not (project / "mlflow.db").exists()  # nothing went to the local default

    # Read it back the way any other client would: MLflow's REST API.
    got = requests.get(f"{uri}/api/2.0/mlflow/runs/get", params={"run_id": run.info.run_id},
                       timeout=10)
    assert got.ok, got.text
    data = got.json()["run"]
    assert data["info"]["run_name"] == "shared-lr-1e-4"
    assert data["info"]["status"] == "FINISHED"
    params = {p["key"]: p["value"] for p in data["data"]["params"]}
    metrics = {m["key"]: m["value"] for m in data["data"]["metrics"]}
    tags = {t["key"]: t["value"] for t in data["data"]["tags"]}
    assert params["train.lr"] == "0.0001" and params["tracking.experiment"] == "team"
    assert metrics == {"train/loss": 0.4, "test/accuracy": 0.875}
    assert tags["dvc.experiment"] == "shared-lr-1e-4" and tags["crackxai.stage"] == "train"
    listed = requests.get(f"{uri}/api/2.0/mlflow/artifacts/list",
                          params={"run_id": run.info.run_id, "path": "evaluate"}, timeout=10)
    assert [f["path"] for f in listed.json()["files"]] == ["evaluate/note.txt"]
    # The server proxied the upload into its artifact destination.
    assert [p.read_text() for p in art.rglob("note.txt")] == ["hello"]


@pytest.mark.slow
def test_smoke_pipeline_against_tracking_server(project: Path,
                                                mlflow_server: tuple[str, Path]) -> None:
    """The whole smoke pipeline with tracking=server: the model run and its nested explain run
    land on the server (read back over REST), nothing in a local store."""
    uri, art = mlflow_server
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    done = subprocess.run(
        [sys.executable, "-m", "crackxai.pipeline", "experiment=smoke", "tracking=server",
         f"tracking.uri={uri}", "hydra.run.dir=outputs/server"],
        cwd=project, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert not list(project.rglob("mlflow.db"))

    found = requests.get(f"{uri}/api/2.0/mlflow/experiments/get-by-name",
                         params={"experiment_name": "crackxai"}, timeout=10)
    assert found.ok, found.text
    exp_id = found.json()["experiment"]["experiment_id"]
    runs = requests.post(f"{uri}/api/2.0/mlflow/runs/search",
                         json={"experiment_ids": [exp_id]}, timeout=10).json()["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"]["tags"]} for r in runs]
    parents = [r for r, t in zip(runs, tags, strict=True) if "mlflow.parentRunId" not in t]
    children = [t for t in tags if "mlflow.parentRunId" in t]
    assert len(parents) == 1 and len(children) == 1
    parent = parents[0]
    assert children[0]["mlflow.parentRunId"] == parent["info"]["run_id"]
    metrics = {m["key"] for m in parent["data"]["metrics"]}
    assert {"train/loss", "val/accuracy", "test/accuracy"} <= metrics
    assert any(p.name == "model.keras" for p in art.rglob("*"))  # uploaded through the server
