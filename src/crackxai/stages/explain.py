"""Explain: attribution maps for a few test images with every configured method, how good those
maps are, and a self-contained HTML report; logged as a nested MLflow run under the model's run.

    python -m crackxai.explain [explain.methods=[gradcam,lime] explain.n_images=4 ...]
    python -m crackxai.explain --params params.yaml          # how dvc.yaml runs it

Reads data/processed (test split), models/model.keras and models/mlflow_run.json. Writes, each
output swapped in whole (no map of an earlier run survives, a failed run changes nothing, other
files there such as DVC's .gitignore are kept):

    reports/explain/maps/<method>/<row>_<index>.npy      raw (H, W) float32 map
    reports/explain/overlays/<method>/<row>_<index>.png  jet overlay of the positive evidence
    reports/explain/grid.png                             rows = images, columns = image + methods
    reports/explain/per_image.csv                        every metric per (image, method)
    reports/explain/metrics.json                         DVC metrics: the mean per method
    reports/explain/index.html                           grid + metrics + configuration, standalone

`explain.runner=ray` computes the maps on a Ray cluster (crackxai.xai.runners: an actor pool,
each actor loading models/model.keras once, images sent as test-split rows), then scores them here
exactly as the local runner's; the sanity check's randomized model goes to the actors as a file.

The images (xai.selection), the methods (xai.registry, each built from its explain.<method>
section), the metrics (xai.scoring) and the report (xai.report) live in crackxai.xai.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
from omegaconf import OmegaConf

from crackxai.config import Config, explainer_settings, to_dict
from crackxai.config.entry import run_stage
from crackxai.core.entry import log
from crackxai.core.errors import ConfigError, CrackxaiError, DataError
from crackxai.core.io import staged_outputs, write_json, write_text
from crackxai.core.paths import EXPLAIN_DIR, MODEL_FILE, PROCESSED_DIR, RUN_FILE, project_root
from crackxai.data.processed import load_split
from crackxai.models.io import load_model
from crackxai.models.predictor import Predictor
from crackxai.tracking.runs import config_params, read_run_file, redact, resume_model_run
from crackxai.xai import metrics as EM
from crackxai.xai import registry, render, runners, scoring
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


def log_to_mlflow(metrics: dict[str, Any], out: Path) -> None:
    """Metrics as explain/<method>/<metric> (undefined ones left out), files as artifacts."""
    mlflow.log_metrics({f"explain/{method}/{name}": value
                        for method, values in metrics.items() if method != "images"
                        for name, value in values.items() if value is not None})
    for name in ("grid.png", "index.html", "metrics.json", "per_image.csv"):
        mlflow.log_artifact(str(out / name))
    mlflow.log_artifacts(str(out / "overlays"), "overlays")


def remote_maps(cfg: Config, method: str, layer: str | None, like: Any, sel: Any,
                model_path: Path) -> runners.Precomputed:
    """The selection's maps from the Ray runner, as an Explainer the scoring code can call."""
    e = cfg.explain
    job = runners.Job(str(model_path), str(PROCESSED_DIR / "test_images.npy"), method,
                      explainer_settings(cfg, method), layer, e.batch_size, cfg.seed)
    result = runners.explain_maps("ray", job, sel.rows, sel.targets, e.ray.address,
                                  e.ray.num_actors)
    return runners.Precomputed(like, sel.images, sel.targets, result)


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
    predictor = Predictor(model, batch_size=e.batch_size)
    quality = scoring.Quality(**to_dict(cfg)["explain"]["metrics"], seed=cfg.seed)
    sel = select(test, predictor, images=e.images, n_images=e.n_images,
                 max_misclassified=e.max_misclassified, target=e.target, seed=cfg.seed)
    log(STAGE, f"{len(sel.rows)} test images {sel.rows.tolist()} "
               f"({'explain.images' if e.images else f'seed {cfg.seed}'}): "
               f"{int(sel.info.misclassified.sum())} misclassified, "
               f"{int(sel.info.has_mask.sum())} with a crack mask; methods: {', '.join(e.methods)}")
    random_model = random_predictor = None
    if quality.sanity:
        random_model = EM.randomized_copy(model, quality.randomize, seed=cfg.seed)
        random_predictor = Predictor(random_model, batch_size=e.batch_size)
        log(STAGE, f"sanity check against a copy with '{quality.randomize}' re-initialised "
                   f"({len(EM.randomized_layer_names(model, quality.randomize))} layers)")

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
        records: list[dict[str, Any]] = []
        maps_by_method: dict[str, np.ndarray] = {}
        for method in e.methods:
            log(STAGE, f"{method}: explaining {len(sel.rows)} images")
            with scoring.distinct_warnings() as warned:
                settings = explainer_settings(cfg, method)
                explainer = registry.create(method, model=model, predictor=predictor, layer=layer,
                                            **settings)
                sanity = (registry.create(method, model=random_model, predictor=random_predictor,
                                          layer=layer, **settings)
                          if random_model is not None else None)
                if remote:
                    explainer = remote_maps(cfg, method, layer, explainer, sel, MODEL_FILE)
                    if sanity is not None:
                        sanity = remote_maps(cfg, method, layer, sanity, sel,
                                             scratch / "random.keras")
                maps_by_method[method], method_records = scoring.explain_selection(
                    explainer, sel, predictor, quality, out, sanity)
            records += method_records
            for message in warned:  # once per method, not once per image and call
                log(STAGE, f"{method}: warning: {message}")
        if quality.faithfulness or quality.localisation:
            log(STAGE, "random baseline: the same metrics for uninformative maps")
            records += scoring.random_baseline(sel, predictor, quality)

        per_image = scoring.per_image_table(sel.info, records)
        metrics = scoring.summarise(per_image, e.methods, sel.info)
        write_text(out / "per_image.csv", per_image.to_csv(index=False))
        write_json(out / "metrics.json", metrics)
        render.comparison_grid(sel.images, maps_by_method, sel.row_titles(), out / "grid.png")
        run_info = {"model run": model_run, "explain run": run.info.run_id,
                    **({"CAM layer": layer} if layer else {}),
                    "tracking store": redact(mlflow.get_tracking_uri())}
        configuration = OmegaConf.to_yaml({"seed": cfg.seed, "explain": to_dict(cfg)["explain"]})
        write_text(out / "index.html", report_html(
            (out / "grid.png").read_bytes(), metrics, classes=test.classes,
            image_size=test.images.shape[1], quality=quality, configuration=configuration,
            run_info=run_info))
        log_to_mlflow(metrics, out)
    log(STAGE, f"wrote {EXPLAIN_DIR}/ (grid.png, index.html, metrics.json, per_image.csv, maps/, "
               f"overlays/); MLflow run {run.info.run_id} nested under the model's run")
    for method in e.methods:
        log(STAGE, f"{method}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics[method].items()
                                            if v is not None))
    return metrics


if __name__ == "__main__":
    run_stage(STAGE, main)
