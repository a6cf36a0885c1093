"""Explain: attribution maps for test images with every configured method, how good those maps
are, a scorecard saying which method to trust, and a self-contained HTML report; logged as a
nested MLflow run under the model's run.

    python -m crackxai.explain [explain.methods=[gradcam,lime] explain.n_images=4 ...]
    python -m crackxai.explain --params params.yaml          # how dvc.yaml runs it

Reads data/processed (test split, with its crack masks where the data has them),
models/model.keras, models/mlflow_run.json and data/manifest.csv (provenance: the Kaggle caveat
shows only for Kaggle data). Writes, each
output swapped in whole (no map of an earlier run survives, a failed run changes nothing, other
files there such as DVC's .gitignore are kept):

    reports/explain/maps/<method>/<row>_<index>.npy      raw (H, W) float32 map
    reports/explain/overlays/<method>/<row>_<index>.png  jet overlay of the positive evidence
    reports/explain/grid.png                             explain.grid_images rows x (image + methods)
    reports/explain/per_image.csv                        every metric per (image, method)
    reports/explain/metrics.json                         DVC metrics: the mean per method
    reports/explain/scorecard.{json,csv,md,png}          means with bootstrap intervals, rank,
                                                         verdict per method; and as a chart
    reports/explain/cascading.{csv,png}                  cascading randomisation curves
    reports/explain/index.html                           scorecard + grid + metrics, standalone

`explain.runner=ray` computes the maps on a Ray cluster (crackxai.xai.runners: an actor pool,
each actor loading models/model.keras once, images sent as test-split rows), then scores them here
exactly as the local runner's; the sanity check's randomized model goes to the actors as a file.

The images (xai.selection), the methods (xai.registry, each built from its explain.<method>
section), the metrics (xai.scoring, xai.assess), the scorecard (xai.scorecard) and the report
(xai.report) live in crackxai.xai.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path
from typing import Any

import keras
import mlflow
from omegaconf import OmegaConf

from crackxai.config import Config, explainer_settings, to_dict
from crackxai.config.entry import run_stage
from crackxai.config.explain import explainer_factory, quality_settings, rerun_settings
from crackxai.core.entry import log
from crackxai.core.errors import ConfigError, CrackxaiError, DataError
from crackxai.core.io import staged_outputs, write_json, write_text
from crackxai.core.paths import (
    EXPLAIN_DIR,
    MANIFEST,
    MODEL_FILE,
    PROCESSED_DIR,
    RUN_FILE,
    project_root,
)
from crackxai.data.kaggle import manifest_is_kaggle
from crackxai.data.processed import load_split
from crackxai.models.io import load_model
from crackxai.tracking.runs import config_params, read_run_file, redact, resume_model_run
from crackxai.xai import metrics as EM
from crackxai.xai import registry, runners, scorecard
from crackxai.xai.assess import assess, predictors, write_outputs
from crackxai.xai.cam import resolve_layer
from crackxai.xai.report import report_html
from crackxai.xai.selection import explicit_images, select

STAGE = "explain"


def check_inputs(cfg: Config, model: keras.Model, image_size: int,
                 classes: list[str]) -> str | None:
    """The model fits the data, the target exists; the CAM layer (None without a CAM method)."""
    e = cfg.explain  # config-only checks (methods, ranges) ran in crackxai.config.checks
    _, height, width, _ = model.input_shape
    if (height, width) != (image_size, image_size) or model.output_shape[-1] != len(classes):
        raise CrackxaiError(
            f"Model '{MODEL_FILE}' takes {height}x{width} images with {model.output_shape[-1]} "
            f"classes but {PROCESSED_DIR} holds {image_size}x{image_size} images of "
            f"{len(classes)} classes: they come from different runs. Retrain (`dvc repro train`)."
        )
    if e.target is not None and e.target >= len(classes):
        raise ConfigError(f"explain.target={e.target} but the model has {len(classes)} classes "
                          f"{classes}: use 0..{len(classes) - 1}, or null for the predicted class.")
    if any(registry.get(m).is_cam for m in e.methods):
        try:
            return resolve_layer(model, e.layer, e.cam_min_size)
        except CrackxaiError as err:
            raise ConfigError(f"{err} (model file: {MODEL_FILE})") from None
    return None


def log_to_mlflow(card: dict[str, Any], out: Path) -> None:
    """The scorecard as explain/<method>/<metric> (mean, _low, _high; undefined ones left out)
    and explain/<method>/rank, so the MLflow UI compares explainers across runs; files as
    artifacts."""
    mlflow.log_metrics(scorecard.flat_metrics(card))
    for name in OUTPUT_FILES:
        if (out / name).is_file():
            mlflow.log_artifact(str(out / name))
    mlflow.log_artifacts(str(out / "overlays"), "overlays")


OUTPUT_FILES = ("grid.png", "index.html", "metrics.json", "per_image.csv", "scorecard.json",
                "scorecard.csv", "scorecard.md", "scorecard.png", "cascading.csv",
                "cascading.png")


def remote_makes(cfg: Config, makes: dict[str, Any], layer: str | None, sel: Any,
                 models: dict[int, Path]) -> dict[str, Any]:
    """`makes` whose explainers, for the models in `models` (id -> saved file) at the run's seed,
    hand out maps the Ray runner computed once per (method, model); every other call (the
    reruns' perturbed images, other seeds, cascading copies) explains locally."""
    e, done = cfg.explain, {}

    def remote(method: str, make: Any) -> Any:
        def make_remote(model: Any, predictor: Any, seed: int) -> Any:
            like = make(model, predictor, seed)
            path = models.get(id(model))
            if path is None or seed != cfg.seed:
                return like
            if (method, path) not in done:
                job = runners.Job(str(path), str(PROCESSED_DIR / "test_images.npy"), method,
                                  explainer_settings(cfg, method), layer, e.batch_size, cfg.seed)
                done[method, path] = runners.explain_maps("ray", job, sel.rows, sel.targets,
                                                          e.ray.address, e.ray.num_actors)
            return runners.Precomputed(like, sel.images, sel.targets, done[method, path])
        return make_remote
    return {method: remote(method, make) for method, make in makes.items()}


def main(cfg: Config) -> dict[str, Any]:
    e = cfg.explain
    test = load_split("test", PROCESSED_DIR)
    if len(test) == 0:
        raise DataError(f"The test split in {PROCESSED_DIR} is empty: nothing to explain. "
                        "Rerun preprocess with preprocess.split.test > 0.")
    explicit_images(list(e.images), len(test))  # bad indices fail before the model loads
    model = load_model(MODEL_FILE)
    model_run = read_run_file(RUN_FILE)["run_id"]  # fail before any work without the model's run
    layer = check_inputs(cfg, model, test.images.shape[1], test.classes)
    if layer:
        log(STAGE, f"CAM layer {layer} {tuple(model.get_layer(layer).output.shape[1:])}"
                   + ("" if e.layer else f" (last feature map >= {e.cam_min_size} px a side)"))
    keras.utils.set_random_seed(cfg.seed)
    quality, reruns = quality_settings(cfg), rerun_settings(cfg)
    random_model = (EM.randomized_copy(model, quality.randomize, seed=cfg.seed)
                    if quality.sanity else None)
    predictor_for = predictors(model, random_model, quality.randomize, e.batch_size)
    sel = select(test, predictor_for(model), images=e.images, n_images=e.n_images,
                 max_misclassified=e.max_misclassified, target=e.target, seed=cfg.seed)
    log(STAGE, f"{len(sel.rows)} test images "
               f"({'explain.images' if e.images else f'seed {cfg.seed}'}): "
               f"{int(sel.info.misclassified.sum())} misclassified, "
               f"{int(sel.info.has_mask.sum())} with a crack mask; methods: {', '.join(e.methods)}")
    if random_model is not None:
        log(STAGE, f"sanity check against a copy with '{quality.randomize}' re-initialised "
                   f"({len(EM.randomized_layer_names(model, quality.randomize))} layers)")
    kaggle = manifest_is_kaggle(MANIFEST)
    remote = e.runner == "ray"
    with resume_model_run(cfg, RUN_FILE, project_root(), nested_name=STAGE) as run, \
            staged_outputs(EXPLAIN_DIR) as out, contextlib.ExitStack() as stack:
        if remote:
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="crackxai-")))
            stack.enter_context(runners.ray_cluster(e.ray.address))
            if random_model is not None:
                random_model.save(scratch / "random.keras")  # actors load models by path
            log(STAGE, f"runner ray: {e.ray.num_actors} actors at "
                       f"{e.ray.address or 'a private local cluster'}")
        mlflow.log_params({k: v for k, v in config_params(cfg).items()
                           if k.startswith("explain.") or k == "seed"})
        mlflow.set_tag("crackxai.explain.images", json.dumps(sel.rows.tolist()))
        if layer:
            mlflow.set_tag("crackxai.explain.cam_layer", layer)
        makes = {method: explainer_factory(cfg, method, layer) for method in e.methods}
        if remote:
            saved = {id(model): MODEL_FILE}
            if random_model is not None:
                saved[id(random_model)] = scratch / "random.keras"
            makes = remote_makes(cfg, makes, layer, sel, saved)
        result = assess(makes, model, predictor_for, sel, quality, reruns, out, random_model,
                        log=lambda message: log(STAGE, message))
        boot = e.metrics.bootstrap
        card = scorecard.scorecard(result.per_image, list(e.methods), seed=cfg.seed,
                                   confidence=boot.confidence, n_resamples=boot.resamples)
        metrics = {**scorecard.means(card), "images": {
            "n": len(sel.rows), "misclassified": int(sel.info["misclassified"].sum()),
            "with_mask": int(sel.info["has_mask"].sum())}}
        shown = write_outputs(out, result, card, sel, e.grid_images)
        write_json(out / "metrics.json", metrics)
        run_info = {"model run": model_run, "explain run": run.info.run_id,
                    **({"CAM layer": layer} if layer else {}),
                    "tracking store": redact(mlflow.get_tracking_uri())}
        configuration = OmegaConf.to_yaml({"seed": cfg.seed, "explain": to_dict(cfg)["explain"]})
        write_text(out / "index.html", report_html(
            out, card, metrics["images"], classes=test.classes, image_size=test.images.shape[1],
            quality=quality, reruns=reruns, configuration=configuration, run_info=run_info,
            kaggle=kaggle, grid_shown=shown))
        log_to_mlflow(card, out)
    log(STAGE, f"wrote {EXPLAIN_DIR}/ (grid.png, index.html, metrics.json, per_image.csv, "
               f"scorecard.*, maps/, overlays/); MLflow run {run.info.run_id} nested under the "
               "model's run")
    for row in card["methods"]:
        rank = "-" if row["rank"] is None else f"{row['rank']:.2f}"
        log(STAGE, f"{row['method']} (mean rank {rank}): {row['verdict']}")
    return metrics


if __name__ == "__main__":
    run_stage(STAGE, main)
