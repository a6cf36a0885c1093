"""The trained model as an MLflow model: logged with its run, registered, promoted.

    runs:/<run_id>/model            the model of one training run (mlflow.keras flavour)
    models:/<name>/<version>        a registered version (tracking.registered_model, default crackxai)
    models:/<name>@champion         the version `python -m crackxai.compare --promote METRIC` chose

The logged model holds the same portable .keras file as models/model.keras (standard Keras layers
only), so `mlflow.pyfunc.load_model(uri).predict(x)` and `mlflow.keras.load_model(uri)` work
without crackxai; x is float32 (N, S, S, 3) raw 0-255 RGB, the output (N, classes) probabilities.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from crackxai.core.errors import CrackxaiError
from crackxai.models.sources import is_model_uri
from crackxai.tracking.runs import redact

logger = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"
CHAMPION_ALIAS = "champion"
# Run tags copied onto every registered version: which DVC experiment, code and data made it.
VERSION_TAGS = ("dvc.experiment", "git.commit", "data.manifest_sha256")
# Metric names containing one of these are better when lower (for --promote).
LOWER_IS_BETTER = ("loss", "ece", "error", "deletion")


def pip_requirements() -> list[str]:
    """Pinned, not inferred: MLflow's inference would reload the model in a subprocess (slow)."""
    import keras
    import tensorflow as tf

    return [f"keras=={keras.__version__}", f"tensorflow=={tf.__version__}"]


class _KerasFlavor:
    """mlflow.keras, but with the model folder created before the input example is written:
    mlflow.keras.save_model writes input_example.json before it creates the folder and fails
    with FileNotFoundError (https://github.com/mlflow/mlflow/issues/16183, open in MLflow 3.x).
    The MLmodel file still names mlflow.keras as the loader, so nothing of crackxai is needed
    to load the model."""

    __name__ = "mlflow.keras"

    @staticmethod
    def save_model(path: str, **kwargs: Any) -> None:
        import mlflow.keras

        os.makedirs(path, exist_ok=True)
        mlflow.keras.save_model(path=path, **kwargs)


def version_tags(run_tags: dict[str, str]) -> dict[str, str]:
    return {k: run_tags[k] for k in VERSION_TAGS if run_tags.get(k)}


def log_model(model: Any, example: np.ndarray, registered_model: str | None) -> dict[str, Any]:
    """Log `model` into the active run as `runs:/<run_id>/model` and register it under
    `registered_model` (unless None) with VERSION_TAGS. Returns the model URI, logged model id
    and registered version (None when not registered)."""
    import mlflow

    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("log_model needs an active MLflow run")
    example = np.asarray(example, dtype=np.float32)[:1]  # the model's input dtype (see module doc)
    signature = mlflow.models.infer_signature(example, model.predict(example, verbose=0))
    client = mlflow.MlflowClient()
    tags = version_tags(client.get_run(run.info.run_id).data.tags)
    # Model.log with the keras flavour is what mlflow.keras.log_model calls; see _KerasFlavor.
    info = mlflow.models.Model.log(
        artifact_path=None, name=MODEL_ARTIFACT, flavor=_KerasFlavor, model=model,
        signature=signature, input_example=example, pip_requirements=pip_requirements(),
        tags=tags)
    out = {"model_uri": f"runs:/{run.info.run_id}/{MODEL_ARTIFACT}", "model_id": info.model_id,
           "version": None}
    if registered_model:
        out["version"] = register(info.model_uri, registered_model, tags)
    return out


def register(model_uri: str, name: str, tags: dict[str, str]) -> str:
    """A new version of registered model `name` (created on first use) for `model_uri`."""
    import mlflow

    try:
        version = mlflow.register_model(model_uri, name, tags=tags)
    except Exception as exc:  # MlflowException, or a server without a Model Registry
        reason = " ".join(str(exc).split())[:300]
        raise CrackxaiError(
            f"Cannot register the model as '{name}' in '{redact(mlflow.get_tracking_uri())}' "
            f"({reason}). Use a store with a Model Registry (the local SQLite default has one), "
            "or set tracking.registered_model=null to log the model with its run only."
        ) from None
    return str(version.version)


def lower_is_better(metric: str) -> bool:
    leaf = metric.rsplit("/", 1)[-1].lower()
    return any(word in leaf for word in LOWER_IS_BETTER)


def registered_versions(client: Any, name: str) -> dict[str, Any]:
    """run id -> the newest version of `name` registered from that run."""
    versions: dict[str, Any] = {}
    page_token = None
    while True:
        page = client.search_model_versions(f"name = '{name}'", page_token=page_token)
        for v in page:
            if v.run_id and (v.run_id not in versions or
                             int(v.version) > int(versions[v.run_id].version)):
                versions[v.run_id] = v
        page_token = page.token
        if not page_token:
            return versions


def promote_best(client: Any, runs: list[Any], metric: str, name: str,
                 alias: str = CHAMPION_ALIAS) -> tuple[Any, Any]:
    """Set `alias` on the registered version of the best of `runs` by `metric` (lower is better
    for losses and errors, else higher); returns (run, version)."""
    versions = registered_versions(client, name)
    registered = [r for r in runs if r.info.run_id in versions]
    if not registered:
        raise CrackxaiError(
            f"--promote: none of the {len(runs)} compared run(s) has a version of registered model "
            f"'{name}' (the registry has {len(versions)} version(s) with a run). Train with "
            "tracking.registered_model set (the default, crackxai), compare more runs with "
            "--last N, or name the model with --registered-model NAME."
        )
    scored = [r for r in registered if metric in r.data.metrics]
    if not scored:
        available = sorted({k for r in registered for k in r.data.metrics})
        raise CrackxaiError(
            f"--promote {metric}: none of the {len(registered)} run(s) with a registered version "
            f"has that metric (they have: {', '.join(available) or 'none'}). Run the evaluate "
            "stage on them, or pick one of those metrics."
        )
    pick = min if lower_is_better(metric) else max
    best = pick(scored, key=lambda r: r.data.metrics[metric])
    version = versions[best.info.run_id]
    client.set_registered_model_alias(name, alias, version.version)
    return best, version


KERAS_FILE_IN_MODEL = "data/model.keras"  # where mlflow.keras.save_model puts the .keras file


def model_file(spec: str | os.PathLike[str], tracking_uri: str | None = None) -> str:
    """A local .keras file for `spec`: a path (returned as is) or an MLflow model URI
    (`runs:/<run_id>/model`, `models:/<name>/<version>`, `models:/<name>@<alias>`), whose .keras
    file is downloaded from the store at `tracking_uri` (default: MLflow's current one)."""
    if not is_model_uri(spec):
        return str(spec)
    import mlflow

    uri = str(spec).rstrip("/")
    store = tracking_uri or mlflow.get_tracking_uri()
    try:
        return mlflow.artifacts.download_artifacts(artifact_uri=f"{uri}/{KERAS_FILE_IN_MODEL}",
                                                   tracking_uri=store)
    except Exception as exc:  # MlflowException, or an OSError from the artifact store
        reason = " ".join(str(exc).split())[:300]
        raise CrackxaiError(
            f"Cannot fetch the model '{uri}' from the MLflow store '{redact(store)}' ({reason}). "
            "Check the run id or the registered name and version/alias (`mlflow models` or the "
            "MLflow UI's Models page), that the store is the one the model was logged to "
            "(MLFLOW_TRACKING_URI or tracking.uri), and that the run logged an MLflow model "
            "(crackxai's train stage logs it as runs:/<run_id>/model)."
        ) from None
