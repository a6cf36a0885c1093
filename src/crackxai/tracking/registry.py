"""The trained model as an MLflow model: logged with its run, registered, promoted, served.

    runs:/<run_id>/model            the model of one training run
    models:/<name>/<version>        a registered version (tracking.registered_model, default crackxai)
    models:/<name>@champion         the version `python -m crackxai.compare --promote METRIC` chose

The MLflow model is crackxai's served model, an mlflow.pyfunc.PythonModel logged as models from
code (MLflow's recommended way; crackxai.tracking.serving): `mlflow.pyfunc.load_model(uri)` and
`mlflow models serve -m uri` take images of any size and return per image the probability of
each class, the predicted class and, with params {"explain": "gradcam"}, a Grad-CAM map. Its
files: artifacts/model.keras (the same portable .keras file as models/model.keras, stored once;
plain `keras.saving.load_model` reads it), artifacts/crackxai.json (class names, Grad-CAM
settings) and code/crackxai (the package, so it loads where crackxai is not installed).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from crackxai.core.errors import CrackxaiError
from crackxai.core.paths import ood_file_for
from crackxai.models.sources import is_model_uri
from crackxai.tracking.runs import redact

if TYPE_CHECKING:
    from crackxai.config import Config

logger = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"
CHAMPION_ALIAS = "champion"
# Run tags copied onto every registered version: which DVC experiment, code and data made it.
VERSION_TAGS = ("dvc.experiment", "git.commit", "data.manifest_sha256")
# Metric names containing one of these are better when lower (for --promote).
LOWER_IS_BETTER = ("loss", "ece", "error", "deletion")

# The served model's contract, shared by log_model (here) and the model (tracking.serving).
KERAS_ARTIFACT, KERAS_NAME = "keras_model", "model.keras"
META_ARTIFACT, META_NAME = "crackxai", "crackxai.json"
# the out-of-distribution detector the train stage saves beside the model (crackxai.models.ood)
OOD_ARTIFACT = "ood"
IMAGE_COLUMN = "image"
EXPLAIN_PARAM, EXPLAIN_CHOICES = "explain", ("none", "gradcam")
LAYER_PARAM = "layer"  # "" = the layer recorded when the model was logged
PREDICTED_COLUMN, OOD_COLUMN, GRADCAM_COLUMN = "predicted", "out_of_distribution", "gradcam"
RESERVED_COLUMNS = (PREDICTED_COLUMN, OOD_COLUMN, GRADCAM_COLUMN)
SERVED_MODEL_CODE = Path(__file__).with_name("served_model.py")  # set_model(CrackxaiModel())
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # src/crackxai, shipped as code/crackxai


def pip_requirements() -> list[str]:
    """Pinned, not inferred: MLflow's inference would reload the model in a subprocess (slow).
    What the served model imports besides MLflow: Keras on TensorFlow, OpenCV to decode images,
    tf-keras-vis for Grad-CAM, pandas/numpy, tqdm (crackxai.data.decode)."""
    from importlib.metadata import PackageNotFoundError, version

    import keras
    import tensorflow as tf

    pins = [f"keras=={keras.__version__}", f"tensorflow=={tf.__version__}"]
    for dist in ("opencv-python-headless", "opencv-python", "tf-keras-vis", "pandas", "numpy",
                 "tqdm"):
        try:
            pins.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:  # e.g. only one of the two OpenCV builds is installed
            continue
    return pins


def _signature(classes: list[str]) -> Any:
    """No input schema (the model takes encoded files, arrays and lists, which one schema cannot
    describe; it checks them itself), the output columns, and the params."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import Array

    outputs = Schema([ColSpec("double", c) for c in classes] + [
        ColSpec("string", PREDICTED_COLUMN),
        ColSpec("boolean", OOD_COLUMN, required=False),
        ColSpec(Array(Array("double")), GRADCAM_COLUMN, required=False)])
    params = ParamSchema([ParamSpec(EXPLAIN_PARAM, "string", EXPLAIN_CHOICES[0]),
                          ParamSpec(LAYER_PARAM, "string", "")])
    return ModelSignature(outputs=outputs, params=params)


def encode_png(image: np.ndarray) -> str:
    """One RGB uint8 image as base64 PNG text: how a JSON request carries an image file."""
    import cv2

    ok, png = cv2.imencode(".png", cv2.cvtColor(np.asarray(image, np.uint8), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("OpenCV cannot encode the image as PNG")
    return base64.b64encode(png.tobytes()).decode("ascii")


def check_classes(classes: list[str], num_outputs: int | None = None) -> list[str]:
    """The class names as the served model's column names: distinct, none of RESERVED_COLUMNS,
    one per model output (when `num_outputs` is given). The train stage checks before training."""
    names = [str(c) for c in classes]
    clash = sorted(set(names) & set(RESERVED_COLUMNS))
    if clash or len(set(names)) != len(names):
        raise CrackxaiError(
            f"Classes {names}: the served MLflow model returns one column per class beside "
            f"{', '.join(RESERVED_COLUMNS)}, so class names must be distinct and none of those. "
            "Rename the class folders (data.classes) and rerun preprocess.")
    if num_outputs is not None and len(names) != num_outputs:
        raise CrackxaiError(f"{len(names)} class names {names} for a model with {num_outputs} "
                            "outputs: the model and the class list come from different runs.")
    return names


def version_tags(run_tags: dict[str, str]) -> dict[str, str]:
    return {k: run_tags[k] for k in VERSION_TAGS if run_tags.get(k)}


def gradcam_settings(cfg: Config) -> dict[str, Any]:
    """The Grad-CAM settings the served model records when it is logged: the explain stage's
    (explain.layer, explain.cam_min_size, seed), so its maps equal the explain stage's. Recorded
    like the run's params, not a DVC dependency of train: changing them later does not retrain;
    a request can name another layer (params {"layer": ...})."""
    from crackxai.config import explainer_settings

    return {**explainer_settings(cfg, "gradcam"), "layer": cfg.explain.layer}


def log_model(model_file: str | os.PathLike[str], classes: list[str], example: np.ndarray,
              registered_model: str | None, gradcam: dict[str, Any] | None = None,
              num_outputs: int | None = None) -> dict[str, Any]:
    """Log the served model for the .keras file `model_file` into the active run as
    `runs:/<run_id>/model` and register it under `registered_model` (unless None) with
    VERSION_TAGS. `classes`: the output names, in output order; `example`: images whose first
    is the input example (as base64 PNG); `gradcam`: the Grad-CAM settings the served maps use
    (crackxai.xai.registry.create's keywords, layer included); `num_outputs` checks `classes`.
    A detector file beside the model (<stem>.ood.npz) is shipped too. Returns the model URI,
    logged model id and registered version (None when not registered)."""
    import mlflow
    import pandas as pd

    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("log_model needs an active MLflow run")
    classes = check_classes(classes, num_outputs)
    model_file = Path(model_file)
    client = mlflow.MlflowClient()
    tags = version_tags(client.get_run(run.info.run_id).data.tags)
    example_image = np.asarray(example)[0]
    input_example = (pd.DataFrame({IMAGE_COLUMN: [encode_png(example_image)]}),
                     {EXPLAIN_PARAM: EXPLAIN_CHOICES[0]})
    with tempfile.TemporaryDirectory() as tmp:
        keras_file = model_file
        if model_file.name != KERAS_NAME:  # stored under its served name (model_file() reads it)
            keras_file = Path(shutil.copy(model_file, Path(tmp) / KERAS_NAME))
        meta = Path(tmp) / META_NAME
        meta.write_text(json.dumps({"classes": classes, "gradcam": gradcam}, indent=2) + "\n",
                        encoding="utf-8")
        artifacts = {KERAS_ARTIFACT: str(keras_file), META_ARTIFACT: str(meta)}
        ood = ood_file_for(model_file)
        if ood.is_file():
            artifacts[OOD_ARTIFACT] = str(ood)
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT, python_model=str(SERVED_MODEL_CODE), artifacts=artifacts,
            code_paths=[str(PACKAGE_DIR)], signature=_signature(classes),
            input_example=input_example, pip_requirements=pip_requirements(), tags=tags)
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


KERAS_FILE_IN_MODEL = f"artifacts/{KERAS_NAME}"  # where mlflow.pyfunc puts the artifact


def model_file(spec: str | os.PathLike[str], tracking_uri: str | None = None) -> str:
    """A local .keras file for `spec`: a path (returned as is) or an MLflow model URI
    (`runs:/<run_id>/model`, `models:/<name>/<version>`, `models:/<name>@<alias>`), whose .keras
    file is downloaded from the store at `tracking_uri` (default: MLflow's current one)."""
    if not is_model_uri(spec):
        return str(spec)
    import mlflow

    uri = str(spec).rstrip("/")
    store = tracking_uri or mlflow.get_tracking_uri()
    try:  # the whole artifacts folder: the out-of-distribution detector comes beside the model
        folder = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{uri}/{Path(KERAS_FILE_IN_MODEL).parent}", tracking_uri=store)
        path = Path(folder) / KERAS_NAME
        if path.is_file():
            return str(path)
        reason = f"no {KERAS_FILE_IN_MODEL} in it: not a model logged by crackxai"
    except Exception as exc:  # MlflowException, or an OSError from the artifact store
        reason = " ".join(str(exc).split())[:300]
    raise CrackxaiError(
        f"Cannot fetch the model '{uri}' from the MLflow store '{redact(store)}' ({reason}). "
        "Check the run id or the registered name and version/alias (`mlflow models` or the "
        "MLflow UI's Models page), that the store is the one the model was logged to "
        "(MLFLOW_TRACKING_URI or tracking.uri), and that the run logged an MLflow model "
        "(crackxai's train stage logs it as runs:/<run_id>/model)."
    ) from None
