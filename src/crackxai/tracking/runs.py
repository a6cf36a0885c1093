"""MLflow plumbing shared by train, evaluate and explain: one run per trained model.

The store is `tracking.uri`, else `MLFLOW_TRACKING_URI`, else a SQLite database in the *user's*
project (`<root>/mlflow.db`, artifacts in `<root>/mlartifacts`). The caller passes that project
root (stages: crackxai.core.paths.project_root(), i.e. DVC_ROOT when DVC runs the stage: queued
experiments run in copies under .dvc/tmp/exps, and a store relative to that copy would be thrown
away with it), and the run file's path: nothing here depends on the working directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import platform
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from crackxai.config import Config, flatten, to_dict
from crackxai.core.errors import CrackxaiError
from crackxai.core.io import write_json


def resolve_tracking_uri(uri: str | None, root: str | Path) -> str:
    """`uri`, else MLFLOW_TRACKING_URI, else sqlite:///<root>/mlflow.db; relative SQLite and
    file paths are made absolute against `root`, the user's project."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    root = Path(root)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(root / uri[len("sqlite:///"):])
    if "://" not in uri:  # a plain folder: MLflow's file store
        return (root / uri).resolve().as_uri()
    return uri


def default_artifact_location(tracking_uri: str) -> str | None:
    """Local stores keep artifacts beside the database; a server decides for itself."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
    return None


@contextlib.contextmanager
def _store_lock(tracking_uri: str) -> Iterator[None]:
    """Serialise SQLite schema creation and experiment creation across parallel runs."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    lock_path = Path(tracking_uri[len("sqlite:///"):] + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def connect(tracking_uri: str, experiment: str) -> str:
    """Point MLflow at the store, failing fast and clearly if it is unreachable; returns the
    experiment id (created on first use)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    try:
        with _store_lock(tracking_uri):
            client = mlflow.MlflowClient(tracking_uri)
            exp = client.get_experiment_by_name(experiment)
            if exp is not None:
                return exp.experiment_id
            try:
                return client.create_experiment(
                    experiment, artifact_location=default_artifact_location(tracking_uri)
                )
            except Exception:
                # A parallel run (e.g. `dvc queue start -j 4` on a fresh server, which our file
                # lock cannot serialise) created it first.
                exp = client.get_experiment_by_name(experiment)
                if exp is None:
                    raise
                return exp.experiment_id
    except Exception as exc:  # MLflow raises many types for a bad store
        reason = " ".join(str(exc).split())[:300]
        if "database is locked" in reason:  # reachable, but another writer kept it too long
            raise CrackxaiError(
                f"MLflow tracking store '{redact(tracking_uri)}' is locked by another process "
                f"({reason}). Let that writer finish (or stop it), then rerun."
            ) from None
        raise CrackxaiError(
            f"MLflow tracking store '{redact(tracking_uri)}' is not reachable ({reason}). Start the "
            "server (see docs/workflow.md 'Shared tracking server'), fix tracking.uri / "
            "MLFLOW_TRACKING_URI, or use the local default: tracking=local."
        ) from None


def redact(uri: str) -> str:
    """Hide credentials in URIs such as postgresql://user:password@host/db."""
    if "@" in uri and "://" in uri:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return uri


def _git(*args: str) -> str | None:
    # In the working directory on purpose: in a queued DVC experiment that is the copy at the
    # experiment's own commit (DVC_ROOT, the project root, is the baseline's checkout).
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                             cwd=Path.cwd())
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def run_tags(stage: str) -> dict[str, str]:
    """Provenance tags: git commit and dirty flag, DVC stage and experiment, library versions."""
    import keras
    import mlflow
    import tensorflow as tf

    tags = {
        "crackxai.stage": stage,
        "dvc.stage": os.environ.get("DVC_STAGE", ""),
        "keras.backend": keras.backend.backend(),
        "version.keras": keras.__version__,
        "version.tensorflow": tf.__version__,
        "version.mlflow": mlflow.__version__,
        "version.python": platform.python_version(),
    }
    commit = _git("rev-parse", "HEAD")
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["git.commit"] = commit
        tags["git.dirty"] = str(bool(_git("status", "--porcelain", "--untracked-files=no")))
    exp_name = os.environ.get("DVC_EXP_NAME")
    if exp_name:
        tags["dvc.experiment"] = exp_name
        tags["dvc.baseline_rev"] = os.environ.get("DVC_EXP_BASELINE_REV", "")
    return {k: v for k, v in tags.items() if v != ""}


def config_params(cfg: Config) -> dict[str, str]:
    """Every resolved config value as an MLflow param, dotted keys (params are strings)."""
    return {k: json.dumps(v) if isinstance(v, list | dict) else str(v)
            for k, v in flatten(to_dict(cfg)).items()}


def start_model_run(cfg: Config, root: str | Path, stage: str = "train",
                    extra_tags: dict[str, str] | None = None, run_id: str | None = None):
    """Start the model's MLflow run (named after the DVC experiment when there is one) in the
    store of `cfg.tracking` (relative paths against the project `root`).

    With `run_id` (an interrupted training being resumed) that run is reopened instead, if it is
    still in the store."""
    import mlflow

    uri = resolve_tracking_uri(cfg.tracking.uri, root)
    experiment_id = connect(uri, cfg.tracking.experiment)
    tags = {**run_tags(stage), **(extra_tags or {})}
    if run_id is not None and _run_exists(run_id, experiment_id):
        run = mlflow.start_run(run_id=run_id)
        mlflow.set_tags(tags)
    else:
        # MLflow draws a run's generated name from the global `random`, which training has
        # seeded: every run would get the same name. Draw it unseeded, then put the state back.
        seeded = random.getstate()
        random.seed()
        try:
            run = mlflow.start_run(experiment_id=experiment_id,
                                   run_name=os.environ.get("DVC_EXP_NAME") or None, tags=tags)
        finally:
            random.setstate(seeded)
    mlflow.log_params(config_params(cfg))
    return run


ATTEMPT_TAG = "crackxai.attempt"


def find_attempt_run(experiment_id: str, attempt: str) -> str | None:
    """The run tagged ATTEMPT_TAG=`attempt`: a training killed after creating its run but
    before it could record the run's id still left the tag's value in its train state."""
    import mlflow

    runs = mlflow.MlflowClient().search_runs(
        [experiment_id], filter_string=f"tags.`{ATTEMPT_TAG}` = '{attempt}'", max_results=1)
    return runs[0].info.run_id if runs else None


def _run_exists(run_id: str, experiment_id: str) -> bool:
    import mlflow

    try:
        run = mlflow.MlflowClient().get_run(run_id)
    except Exception:  # MlflowException: not in this store
        return False
    return run.info.experiment_id == experiment_id and run.info.lifecycle_stage == "active"


def write_run_file(run: Any, path: str | Path) -> None:
    info = run.info
    write_json(path, {"run_id": info.run_id, "experiment_id": info.experiment_id,
                      "run_name": info.run_name, "tracking_uri": redact(_current_uri())})


def _current_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


def read_run_file(path: str | Path) -> dict[str, str]:
    path = Path(path)
    if not path.is_file():
        raise CrackxaiError(
            f"'{path}' not found: it names the model's MLflow run. Run the train stage first "
            "(`dvc repro train`)."
        )
    return json.loads(path.read_text())


@contextlib.contextmanager
def resume_model_run(cfg: Config, path: str | Path, root: str | Path,
                     nested_name: str | None = None):
    """Reopen the model's run (from the run file at `path`) so a later stage logs into it; with
    `nested_name`, also open a child run under it and yield that. The store: `cfg.tracking.uri`
    or MLFLOW_TRACKING_URI when set, else the run file's (relative paths against `root`)."""
    import mlflow

    info = read_run_file(path)
    uri = resolve_tracking_uri(cfg.tracking.uri, root) if cfg.tracking.uri or \
        os.environ.get("MLFLOW_TRACKING_URI") else \
        info.get("tracking_uri") or resolve_tracking_uri(None, root)
    connect(uri, cfg.tracking.experiment)
    stage = nested_name or os.environ.get("DVC_STAGE") or "evaluate"  # for the error message
    with tracking_errors(uri, stage), \
            mlflow.start_run(run_id=info["run_id"]) as parent:
        if nested_name is None:
            yield parent
            return
        close_stale_children(info["run_id"], nested_name)
        # A nested run does not inherit its parent's experiment: without experiment_id it lands
        # in "Default".
        with mlflow.start_run(run_name=nested_name, nested=True,
                              experiment_id=parent.info.experiment_id,
                              tags={**run_tags(nested_name), "crackxai.parent_run": info["run_id"]}
                              ) as child:
            yield child


def close_stale_children(parent_id: str, name: str) -> list[str]:
    """Mark as KILLED the `name` child runs of `parent_id` still RUNNING: left by a killed stage
    (SIGKILL, power loss), which could not end its run. Only children of this model's run with
    this stage's name: a parallel experiment's runs have other parents. Returns their ids."""
    import mlflow

    client = mlflow.MlflowClient()
    parent = client.get_run(parent_id)
    stale = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_id}' and attributes.status = 'RUNNING'")
    ids = [r.info.run_id for r in stale if r.info.run_name == name]
    for run_id in ids:
        client.set_terminated(run_id, status="KILLED")
    if ids:
        logging.getLogger(__name__).info(
            f"marked {len(ids)} interrupted '{name}' run(s) of {parent_id} KILLED: {ids}")
    return ids


# Exceptions of these packages, raised while talking to the store, mean the store failed (server
# down, SQLite locked, ...), not the stage's own work.
_TRACKING_PACKAGES = ("mlflow", "requests", "urllib3", "sqlalchemy", "sqlite3")


@contextlib.contextmanager
def tracking_errors(tracking_uri: str, stage: str) -> Iterator[None]:
    """Turn a failure of the tracking store in the middle of a stage into one paragraph (a
    CrackxaiError) that says what is kept and how to continue, instead of a traceback."""
    try:
        yield
    except CrackxaiError:
        raise
    except Exception as exc:
        if type(exc).__module__.split(".")[0] not in _TRACKING_PACKAGES:
            raise
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        locked = "database is locked" in reason
        fix = ("another process holds a write lock on the SQLite store: let it finish (or stop "
               "it), then rerun" if locked else
               "check that the server is up (docs/workflow.md 'Shared tracking server') and rerun")
        raise CrackxaiError(
            f"The MLflow tracking store '{redact(tracking_uri)}' failed during the {stage} stage "
            f"({reason}). Outputs already written are complete (they are written atomically) and "
            f"an interrupted training resumes from models/.train_state: {fix} (`dvc repro`)."
        ) from None


def terminate_run(run_id: str, status: str = "KILLED") -> None:
    """Mark a run that will never finish (e.g. an abandoned, interrupted training) as ended."""
    import mlflow

    with contextlib.suppress(Exception):  # a run in another store or deleted: nothing to close
        mlflow.MlflowClient().set_terminated(run_id, status=status)
