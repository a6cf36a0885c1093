"""Explain: attribution maps for a few test images with every configured method, how good those
maps are, and a self-contained HTML report; logged as a nested MLflow run under the model's run.

    python -m crackxai.explain [explain.methods=[gradcam,lime] explain.n_images=4 ...]
    python -m crackxai.explain --params params.yaml          # how dvc.yaml runs it

Reads data/processed (test split), models/model.keras and models/mlflow_run.json. Writes (built
in a temporary folder, then each output swapped in whole, so no map of an earlier run survives
and a failed run changes nothing; other files there, such as DVC's .gitignore, are kept):

    reports/explain/maps/<method>/<row>_<index>.npy      raw (H, W) float32 map
    reports/explain/overlays/<method>/<row>_<index>.png  jet overlay of the positive evidence
    reports/explain/grid.png                             rows = images, columns = image + methods
    reports/explain/per_image.csv                        every metric per (image, method)
    reports/explain/metrics.json                         DVC metrics: the mean per method
    reports/explain/index.html                           grid + metrics + configuration, standalone

Images: `explain.images` (test-split indices) if given, else `explain.n_images` drawn with
`seed`: the misclassified ones first (up to `explain.max_misclassified`), then correctly
classified ones, alternating between classes. The explained class is `explain.target`, else the
predicted one. Metrics (crackxai.xai.metrics) per method, averaged over images:

    deletion_auc, insertion_auc      Petsiuk et al. 2018 (lower / higher is better)
    pointing_game                    Zhang et al. 2016: the map's maximum within 15 px (at 224 px,
                                     scaled: 4 px at 64) of the mask (higher is better)
    energy_pointing_game             Wang et al. 2020 with the crack mask (higher is better)
    topk_iou                         IoU of the top explain.metrics.top_k_percent % with the mask
    sanity_abs_spearman              mean |Spearman rho| between the maps of the trained model and
                                     of a copy with re-initialised top layers (Adebayo et al. 2018;
                                     lower is better: the map depends on what the model learnt;
                                     per_image.csv has the signed rho as sanity_spearman)
    seconds_per_image, evals_per_image  cost of the explanation alone: wall seconds, and images
                                     through the Predictor (SHAP, LIME, Score-CAM's masked
                                     copies); a gradient CAM's forward+backward pass counts as 1

Localisation needs a ground-truth mask (positives of the synthetic data): images without one get
NaN in per_image.csv and, if no selected image has one, null in metrics.json (never 0). The
`random_baseline` entry is what a map without information scores: a seeded uniform-noise map for
the AUCs, IoU and energy, and the expected hit of a uniformly random point for the pointing game.
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import pandas as pd
from omegaconf import OmegaConf
from tqdm import tqdm

from crackxai.config import Config, to_dict
from crackxai.config.entry import run_stage
from crackxai.core.entry import log
from crackxai.core.errors import ConfigError, CrackxaiError, DataError
from crackxai.core.io import staged_outputs, write_json, write_text
from crackxai.core.paths import EXPLAIN_DIR, MODEL_FILE, PROCESSED_DIR, RUN_FILE, project_root
from crackxai.data.kaggle import LEAK_CAVEAT
from crackxai.data.processed import Split, load_split
from crackxai.models.io import load_model
from crackxai.models.predictor import Predictor
from crackxai.tracking.runs import config_params, read_run_file, redact, resume_model_run
from crackxai.xai import metrics as EM
from crackxai.xai import render
from crackxai.xai.explainers import CAM_METHODS, explain, resolve_layer

STAGE = "explain"
EXPLAIN_CAVEAT = (" Explanations of a model that memorised photo texture can look convincing "
                  "and still not generalise.")
GRADIENT_CAMS = ("gradcam", "gradcam_pp")
METRICS = ("deletion_auc", "insertion_auc", "pointing_game", "energy_pointing_game", "topk_iou",
           "sanity_abs_spearman", "seconds_per_image", "evals_per_image")
BETTER = {"deletion_auc": "lower", "insertion_auc": "higher", "pointing_game": "higher",
          "energy_pointing_game": "higher", "topk_iou": "higher", "sanity_abs_spearman": "lower",
          "seconds_per_image": "lower", "evals_per_image": "lower"}
LOCALISATION = ("pointing_game", "energy_pointing_game", "topk_iou")
RANDOM_BASELINE = "random_baseline"


# ---------------------------------------------------------------------------------------------
# Which images
# ---------------------------------------------------------------------------------------------


def select_images(
    labels: np.ndarray,
    predict_labels: Callable[[np.ndarray], np.ndarray],
    n_images: int,
    max_misclassified: int,
    seed: int,
    chunk: int = 256,
) -> np.ndarray:
    """`n_images` test indices: misclassified first (up to `max_misclassified`), then correct ones
    alternating between classes. Candidates are visited in a seeded random order and predicted
    chunk by chunk, stopping as soon as there are enough of each kind (not the whole split)."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    order = np.random.default_rng(seed).permutation(len(labels))
    n = min(n_images, len(labels))
    want_wrong = min(max_misclassified, n)
    wrong: list[int] = []
    right: dict[int, list[int]] = {int(c): [] for c in classes}
    for start in range(0, len(order), chunk):
        idx = order[start:start + chunk]
        for i, p in zip(idx, predict_labels(idx), strict=True):
            (wrong if p != labels[i] else right[int(labels[i])]).append(int(i))
        if len(wrong) >= want_wrong and all(len(r) >= n for r in right.values()):
            break
    picks = wrong[:want_wrong]
    # fill up from correct ones, the class least represented so far first
    queues = {c: list(r) for c, r in right.items()}
    queues[-1] = wrong[want_wrong:]  # last resort: more misclassified ones
    while len(picks) < n:
        counts = {c: sum(labels[i] == c for i in picks) for c in right}
        for c in sorted(right, key=lambda c: (counts[c], c)) + [-1]:
            if queues[c]:
                picks.append(queues[c].pop(0))
                break
    return np.array(sorted(picks, key=lambda i: (labels[i], i)), dtype=np.int64)


def explicit_images(images: list[int], n_test: int) -> np.ndarray:
    bad = [i for i in images if not 0 <= i < n_test]
    if bad:
        raise ConfigError(
            f"explain.images has indices {bad} outside the test split, which has {n_test} images "
            f"(valid: 0..{n_test - 1}). Fix explain.images, or set it to [] to pick "
            "explain.n_images images automatically."
        )
    return np.array(list(dict.fromkeys(images)), dtype=np.int64)  # order kept, repeats dropped


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def check_inputs(cfg: Config, model: keras.Model, image_size: int,
                 classes: list[str]) -> str | None:
    e = cfg.explain
    if not e.methods:
        raise ConfigError("explain.methods is empty: name at least one method, e.g. "
                          "explain.methods=[gradcam].")
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
    if any(m in CAM_METHODS for m in e.methods):
        try:
            return resolve_layer(model, e.layer, e.cam_min_size)
        except CrackxaiError as err:
            raise ConfigError(f"{err} (model file: {MODEL_FILE})") from None
    return None


@dataclass
class Selection:
    """The images to explain, with what the model says about them."""

    rows: np.ndarray  # test-split indices
    images: np.ndarray  # (N, H, W, 3) uint8
    targets: np.ndarray  # class explained per image
    masks: list[np.ndarray | None]  # crack mask, or None
    info: pd.DataFrame  # one row per image: labels, prediction, probability, ...

    @property
    def names(self) -> list[str]:
        return [f"{row:03d}_{index}" for row, index in enumerate(self.rows)]


def prepare(cfg: Config, test: Split, predictor: Predictor) -> Selection:
    e = cfg.explain
    if e.images:
        rows = explicit_images(list(e.images), len(test))
    else:
        rows = select_images(test.labels, lambda idx: predictor(test.images[idx]).argmax(1),
                             e.n_images, e.max_misclassified, cfg.seed)
    images = np.asarray(test.images[rows])
    labels = test.labels[rows]
    probs = predictor(images)
    predicted = probs.argmax(1)
    targets = predicted if e.target is None else np.full(len(rows), e.target)
    has_mask = test.has_mask[rows]
    masks = [np.asarray(test.masks[i]) if ok else None for i, ok in zip(rows, has_mask, strict=True)]
    n = np.arange(len(rows))
    info = pd.DataFrame({
        "row": n, "index": rows, "label": labels, "true_class": [test.classes[i] for i in labels],
        "predicted": predicted, "predicted_class": [test.classes[i] for i in predicted],
        "probability": probs[n, predicted], "target": targets,
        "target_class": [test.classes[i] for i in targets], "target_probability": probs[n, targets],
        "misclassified": predicted != labels, "has_mask": has_mask,
    })
    return Selection(rows, images, targets, masks, info)


def explain_one(method: str, model: keras.Model, predictor: Predictor, image: np.ndarray,
                target: int, cfg: Config) -> tuple[np.ndarray, float, int]:
    """(map, wall seconds, model evaluations) for one image."""
    before, start = predictor.n_evals, time.perf_counter()
    attribution = explain(method, model, predictor, image[None], np.array([target]), cfg.explain,
                          seed=cfg.seed, layer=cfg.explain.layer)[0]
    seconds = time.perf_counter() - start
    evals = predictor.n_evals - before
    if method in GRADIENT_CAMS and evals == 0:
        evals = 1  # one forward+backward pass through the model itself, not the Predictor
    return np.asarray(attribution, dtype=np.float32), seconds, evals


def score_map(attribution: np.ndarray, image: np.ndarray, target: int, mask: np.ndarray | None,
              predictor: Predictor, cfg: Config) -> dict[str, float]:
    """Faithfulness and localisation of one map (NaN where disabled or without a mask)."""
    m = cfg.explain.metrics
    out = dict.fromkeys(("deletion_auc", "insertion_auc", *LOCALISATION), float("nan"))
    if m.faithfulness:
        out.update(EM.faithfulness(predictor, image, attribution, target, m.baseline, m.steps,
                                   seed=cfg.seed))
    if m.localisation:
        out.update(EM.localisation(attribution, mask, m.top_k_percent, seed=cfg.seed))
    return out


def run_method(method: str, sel: Selection, model: keras.Model, predictor: Predictor,
               sanity: tuple[keras.Model, Predictor] | None, cfg: Config, out: Path
               ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Maps of every selected image, saved with their overlays, and one metrics record each."""
    maps = np.zeros(sel.images.shape[:3], dtype=np.float32)
    records = []
    with record_warnings(method):
        for n in tqdm(range(len(sel.rows)), desc=method, unit="img", leave=False):
            image, target = sel.images[n], int(sel.targets[n])
            maps[n], seconds, evals = explain_one(method, model, predictor, image, target, cfg)
            rho = float("nan")
            if sanity is not None:
                random_map, _, _ = explain_one(method, *sanity, image, target, cfg)
                rho = EM.rank_correlation(maps[n], random_map)
            records.append({"row": n, "method": method,
                            **score_map(maps[n], image, target, sel.masks[n], predictor, cfg),
                            "sanity_spearman": rho, "seconds": seconds, "model_evals": evals})
            # inside the staging folder, which is swapped in whole at the end
            (out / "maps" / method).mkdir(parents=True, exist_ok=True)
            np.save(out / "maps" / method / f"{sel.names[n]}.npy", maps[n])
            render.save_png(out / "overlays" / method / f"{sel.names[n]}.png",
                            render.overlay(image, maps[n]))
    return maps, records


def random_baseline(sel: Selection, predictor: Predictor, cfg: Config) -> list[dict[str, Any]]:
    """What a map without information scores: seeded uniform noise for the AUCs, IoU and energy;
    the expected hit of a uniformly random point for the pointing game."""
    records = []
    for n, index in enumerate(sel.rows):
        noise = np.random.default_rng([cfg.seed, int(index)]).random(sel.images.shape[1:3])
        scores = score_map(noise, sel.images[n], int(sel.targets[n]), sel.masks[n], predictor, cfg)
        if cfg.explain.metrics.localisation:
            scores["pointing_game"] = EM.pointing_game_chance(sel.masks[n])
        records.append({"row": n, "method": RANDOM_BASELINE, **scores})
    return records


@contextlib.contextmanager
def record_warnings(method: str) -> Iterator[None]:
    """One log line per distinct warning of a method, instead of one per image and call."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    hidden = (DeprecationWarning, PendingDeprecationWarning)
    for message in dict.fromkeys(str(w.message).splitlines()[0] for w in caught
                                 if not issubclass(w.category, hidden)):
        log(STAGE, f"{method}: warning: {message}")


def mean_or_none(values: pd.Series) -> float | None:
    """Mean over the images where the metric exists; None (JSON null, DVC '-') where none has it."""
    values = values.dropna()
    return float(values.mean()) if len(values) else None


def summarise(per_image: pd.DataFrame, methods: list[str], info: pd.DataFrame) -> dict[str, Any]:
    """metrics.json: {method: {metric: mean over images, or null}}, the random baseline, and
    what the images were."""
    out: dict[str, Any] = {}
    for method in [*methods, RANDOM_BASELINE]:
        d = per_image[per_image["method"] == method]
        if d.empty:
            continue
        values = {k: mean_or_none(d[k]) for k in ("deletion_auc", "insertion_auc", *LOCALISATION)}
        if method != RANDOM_BASELINE:
            values["sanity_abs_spearman"] = mean_or_none(d["sanity_spearman"].abs())
            values["seconds_per_image"] = float(d["seconds"].mean())
            values["evals_per_image"] = float(d["model_evals"].mean())
        out[method] = values
    out["images"] = {"n": len(info), "misclassified": int(info["misclassified"].sum()),
                     "with_mask": int(info["has_mask"].sum())}
    return out


def row_title(r: pd.Series) -> str:
    title = f"#{r['index']}  true {r['true_class']}\npred {r['predicted_class']} " \
            f"({r['probability']:.2f})"
    return title + (f"\nexplained: {r['target_class']}" if r["target"] != r["predicted"] else "")


def log_to_mlflow(metrics: dict[str, Any], out: Path) -> None:
    """Metrics as explain/<method>/<metric> (undefined ones left out), files as artifacts."""
    mlflow.log_metrics({f"explain/{method}/{name}": value
                        for method, values in metrics.items() if method != "images"
                        for name, value in values.items() if value is not None})
    for name in ("grid.png", "index.html", "metrics.json", "per_image.csv"):
        mlflow.log_artifact(str(out / name))
    mlflow.log_artifacts(str(out / "overlays"), "overlays")


# ---------------------------------------------------------------------------------------------
# Stage
# ---------------------------------------------------------------------------------------------


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
    resolved = replace(cfg, explain=replace(e, layer=layer or e.layer))
    keras.utils.set_random_seed(cfg.seed)
    predictor = Predictor(model, batch_size=e.batch_size)
    sel = prepare(cfg, test, predictor)
    log(STAGE, f"{len(sel.rows)} test images {sel.rows.tolist()} "
               f"({'explain.images' if e.images else f'seed {cfg.seed}'}): "
               f"{int(sel.info.misclassified.sum())} misclassified, "
               f"{int(sel.info.has_mask.sum())} with a crack mask; methods: {', '.join(e.methods)}")
    sanity = None
    if e.metrics.sanity:
        random_model = EM.randomized_copy(model, e.metrics.randomize, seed=cfg.seed)
        sanity = (random_model, Predictor(random_model, batch_size=e.batch_size))
        log(STAGE, f"sanity check against a copy with '{e.metrics.randomize}' re-initialised "
                   f"({len(EM.randomized_layer_names(model, e.metrics.randomize))} layers)")

    with resume_model_run(cfg, RUN_FILE, project_root(), nested_name=STAGE) as run, staged_outputs(EXPLAIN_DIR) as out:
        mlflow.log_params({k: v for k, v in config_params(cfg).items()
                           if k.startswith("explain.") or k == "seed"})
        mlflow.set_tag("crackxai.explain.images", json.dumps(sel.rows.tolist()))
        if layer:
            mlflow.set_tag("crackxai.explain.cam_layer", layer)
        records: list[dict[str, Any]] = []
        maps_by_method: dict[str, np.ndarray] = {}
        for method in e.methods:
            log(STAGE, f"{method}: explaining {len(sel.rows)} images")
            maps_by_method[method], method_records = run_method(method, sel, model, predictor,
                                                                sanity, resolved, out)
            records += method_records
        if e.metrics.faithfulness or e.metrics.localisation:
            log(STAGE, "random baseline: the same metrics for uninformative maps")
            records += random_baseline(sel, predictor, cfg)

        per_image = sel.info.merge(pd.DataFrame(records), on="row")
        per_image["model_evals"] = per_image["model_evals"].astype("Int64")  # blank, not NaN
        metrics = summarise(per_image, e.methods, sel.info)
        write_text(out / "per_image.csv", per_image.to_csv(index=False))
        write_json(out / "metrics.json", metrics)
        render.comparison_grid(sel.images, maps_by_method,
                               [row_title(r) for _, r in sel.info.iterrows()], out / "grid.png")
        run_info = {"model run": model_run, "explain run": run.info.run_id,
                    **({"CAM layer": layer} if layer else {}),
                    "tracking store": redact(mlflow.get_tracking_uri())}
        write_text(out / "index.html", report_html(out / "grid.png", metrics, cfg, run_info,
                                                   test.classes, test.images.shape[1]))
        log_to_mlflow(metrics, out)
    log(STAGE, f"wrote {EXPLAIN_DIR}/ (grid.png, index.html, metrics.json, per_image.csv, maps/, "
               f"overlays/); MLflow run {run.info.run_id} nested under the model's run")
    for method in e.methods:
        log(STAGE, f"{method}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics[method].items()
                                            if v is not None))
    return metrics


# ---------------------------------------------------------------------------------------------
# HTML report
# ---------------------------------------------------------------------------------------------


def report_html(grid: Path, metrics: dict[str, Any], cfg: Config, run_info: dict[str, Any],
                classes: list[str], image_size: int) -> str:
    """One standalone page: the grid (embedded base64), the metrics table, the configuration."""
    png = base64.b64encode(grid.read_bytes()).decode("ascii")
    methods = [m for m in metrics if m != "images"]
    head = "".join(f"<th>{html.escape(k)}<br><small>{BETTER[k]} is better</small></th>"
                   for k in METRICS)
    body = ""
    for m in methods:
        cells = "".join(f"<td>{_fmt(metrics[m].get(k, '-'))}</td>" for k in METRICS)
        body += f"<tr><th>{html.escape(m)}</th>{cells}</tr>\n"
    section = OmegaConf.to_yaml({"seed": cfg.seed, "explain": to_dict(cfg)["explain"]})
    runs = "".join(f"<li>{html.escape(k)}: <code>{html.escape(str(v))}</code></li>"
                   for k, v in run_info.items())
    imgs = metrics["images"]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>crackxai explanations</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }}
small {{ font-weight: normal; color: #666; }}
pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; }}
.caveat {{ border-left: 4px solid #d80; background: #fff6e5; padding: 0.6em 1em; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>crackxai: explanations of the crack classifier</h1>
<p>{imgs['n']} test images ({imgs['misclassified']} misclassified, {imgs['with_mask']} with a
ground-truth crack mask); classes: {html.escape(', '.join(classes))}. Each map explains the
predicted class unless <code>explain.target</code> is set.</p>
<p class="caveat">{html.escape(LEAK_CAVEAT + EXPLAIN_CAVEAT)}</p>
<h2>Comparison grid</h2>
<p>Rows: images (true class, predicted class and its probability). Columns: the image, then each
method's overlay of its <em>positive</em> evidence for the explained class (negative SHAP/LIME
values clipped to 0; each map divided by its maximum; jet colormap, alpha 0.5).</p>
<img alt="comparison grid" src="data:image/png;base64,{png}">
<h2>Explanation quality (mean over images)</h2>
<table><tr><th>method</th>{head}</tr>
{body}</table>
<ul>
<li><b>deletion / insertion AUC</b> (Petsiuk et al. 2018): pixels ranked by the map are replaced by
the <code>{html.escape(cfg.explain.metrics.baseline)}</code> baseline (deletion) or revealed on it
(insertion) in {cfg.explain.metrics.steps} steps; area under the target-probability curve.</li>
<li><b>pointing game</b> (Zhang et al. 2016): the map's maximum lies within
{EM.pointing_tolerance((image_size, image_size))} px of the crack mask (their 15 px at 224 px,
scaled to {image_size} px; ties: the fraction of tied maxima that hit).
<b>energy pointing game</b> (Wang et al. 2020): share of the positive attribution inside the mask.
<b>top-k IoU</b>: IoU of the top {cfg.explain.metrics.top_k_percent:g}% pixels with the mask.
Only images with a mask count; "-" = no selected image has one.</li>
<li><b>sanity |rho|</b> (Adebayo et al. 2018): mean absolute Spearman correlation between the maps
of the trained model and of a copy with <code>{html.escape(cfg.explain.metrics.randomize)}</code>
re-initialised; high means the map barely depends on what the model learnt. "-" where every map
was constant (rank correlation undefined).</li>
<li><b>cost</b>: wall seconds and model evaluations per image for the explanation alone (a
gradient CAM's forward+backward pass counts as 1).</li>
<li><b>{RANDOM_BASELINE}</b>: the same metrics for a seeded uniform-noise map (pointing game: the
expected hit of a random point, i.e. the dilated mask's area fraction): what no information
scores.</li>
</ul>
<h2>Configuration</h2>
<ul>{runs}</ul>
<pre>{html.escape(section)}</pre>
</body></html>
"""


def _fmt(value: Any) -> str:
    if value is None or value == "-":
        return "-"
    return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"


if __name__ == "__main__":
    run_stage(STAGE, main)
