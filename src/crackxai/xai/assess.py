"""The crackxai.xai.quality metrics over a selection of explained images, as per-image records
that join scoring's table on (row, method).

- `map_records`: threshold-free localisation (relevance rank / mass accuracy, ROC AUC vs the mask)
  and complexity (sparseness, entropy) of all maps of one method at once (vectorised over images;
  None without a mask).
- `rerun_records`: the metrics that explain an image again, on a subset of rows (they multiply
  the cost): random-logit SSIM (the map of another class), max-sensitivity (maps of perturbed
  copies, all in one explain call) and seed-to-seed stability (the map from further seeds).
- `cascading_records`: cascading model-parameter randomisation (head, then conv5 .. conv1 as
  well), every method on the same copy per step, so the cascade costs one model copy; its first
  step is the sanity check's head-randomised copy, whose maps it reuses.
- `predictors`: the predictors `assess` shares model evaluations through (a MemoPredictor: the
  random-logit rerun and the sanity copy reuse the perturbed images' backbone passes).

A method is passed as `make(model, predictor, seed) -> Explainer`, so the caller decides how a
method is built (the stage: from its config) and this module needs no configuration.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from crackxai.xai import metrics as EM
from crackxai.xai import quality as Q
from crackxai.xai import scoring
from crackxai.xai.base import Explainer
from crackxai.xai.selection import Selection

if TYPE_CHECKING:
    import keras

Predict = Callable[[np.ndarray], np.ndarray]
Make = Callable[["keras.Model", Predict, int], Explainer]


@dataclass(frozen=True)
class Reruns:
    """Which rerun metrics, on how many images, and how (the explain.metrics.reruns settings)."""

    images: int = 1
    random_logit: bool = True
    max_sensitivity_samples: int = 2
    max_sensitivity_radius: float = 5.0
    seeds: int = 2
    cascading: bool = True
    seed: int = 0

    @property
    def any(self) -> bool:
        return self.images > 0 and (self.random_logit or self.max_sensitivity_samples > 0
                                    or self.seeds > 1 or self.cascading)


def rerun_rows(n_rows: int, n: int) -> np.ndarray:
    """`n` of the selection's rows, evenly spaced: the selection is sorted by class, so this mixes
    the classes (the first n would all be one class)."""
    n = min(n, n_rows)
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.round(np.linspace(0, n_rows - 1, n)).astype(np.int64))


def map_records(method: str, maps: np.ndarray, masks: Sequence[np.ndarray | None]
                ) -> list[dict[str, Any]]:
    """Threshold-free localisation and complexity for the maps (N, H, W) of one method."""
    maps = np.asarray(maps, dtype=np.float64)
    shape = maps.shape[1:]
    has = np.array([m is not None for m in masks], dtype=bool)
    stacked = np.stack([np.asarray(m) if m is not None else np.zeros(shape, np.uint8)
                        for m in masks]) if len(masks) else np.zeros((0, *shape), np.uint8)
    local = {name: fn(maps, stacked) for name, fn in (
        ("relevance_rank_accuracy", Q.relevance_rank_accuracy_batch),
        ("relevance_mass_accuracy", Q.relevance_mass_accuracy_batch),
        ("roc_auc", Q.roc_auc_batch))}
    sparse, entropy = Q.sparseness_batch(maps), Q.complexity_batch(maps)
    return [{"row": n, "method": method,
             **{k: (v[n] if has[n] and v[n] is not None else np.nan) for k, v in local.items()},
             "sparseness": float(sparse[n]), "complexity": float(entropy[n])}
            for n in range(len(maps))]


def _uint8(batch: np.ndarray) -> np.ndarray:
    return np.clip(np.round(batch), 0, 255).astype(np.uint8)


def rerun_records(make: Make, model: keras.Model, predictor: Predict, sel: Selection,
                  maps: np.ndarray, n_classes: int, reruns: Reruns) -> list[dict[str, Any]]:
    """random_logit_ssim, max_sensitivity and seed_stability for `reruns.images` rows (NaN
    where a value is undefined, e.g. rank correlation of a constant map). `maps` are the
    method's maps at `reruns.seed`, so the unperturbed image is not explained again; a method
    that does not sample (not `stochastic`) gives the same map for every seed: stability 1."""
    explainer = make(model, predictor, reruns.seed)
    method = explainer.name
    others = ([make(model, predictor, reruns.seed + k) for k in range(1, reruns.seeds)]
              if explainer.stochastic else [])
    records = []
    for n in rerun_rows(len(sel.rows), reruns.images):
        image, target, trained = sel.images[n], int(sel.targets[n]), maps[n]
        record: dict[str, Any] = {"row": int(n), "method": method}
        if reruns.random_logit:
            other = Q.random_other_class(target, n_classes, seed=reruns.seed + int(n))
            record["random_logit_ssim"] = Q.ssim(trained, explainer.explain(image[None],
                                                                          [other])[0])
        if reruns.max_sensitivity_samples > 0:
            def explain_fn(batch: np.ndarray, t: int = target) -> np.ndarray:
                return explainer.explain(_uint8(batch), [t] * len(batch))
            record["max_sensitivity"] = Q.max_sensitivity(
                explain_fn, image, reruns.max_sensitivity_radius,
                reruns.max_sensitivity_samples, seed=reruns.seed + int(n), clip=(0.0, 255.0),
                reference=trained)
        if others:
            seeded = np.stack([trained, *(e.explain(image[None], [target])[0] for e in others)])
            record["seed_stability"] = Q.seed_stability(seeded)
        elif reruns.seeds > 1:
            record["seed_stability"] = 1.0
        records.append(record)
    return records


def cascading_records(makes: Mapping[str, Make], model: keras.Model,
                      predictor_for: Callable[[keras.Model], Predict], sel: Selection,
                      maps: Mapping[str, np.ndarray], reruns: Reruns,
                      head_copy: keras.Model | None = None,
                      head_maps: Mapping[str, np.ndarray] | None = None
                      ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(per-image records with `cascading_abs_rho` = |Spearman rho| between the trained map and
    the map with every block re-initialised, one curve record per (method, row, step) with
    every map_similarity measure). Each step re-initialises one more block, top to bottom, on one
    copy with one predictor. `head_copy` with `head_maps` (all rows, per method): a model with
    the head re-initialised and its maps (the sanity check's); where its weights are the first
    step's, that step takes those maps instead of explaining again."""
    rows = rerun_rows(len(sel.rows), reruns.images)
    curve: list[dict[str, Any]] = []
    if len(rows) == 0:
        return [], curve
    images, targets = sel.images[rows], sel.targets[rows]
    predictor = None
    for step, (block, randomised) in enumerate(
            EM.cascading_randomized_copies(model, seed=reruns.seed)):
        if predictor is None:  # the same copy at every step: one predictor
            predictor = predictor_for(randomised)
        known = (head_maps if step == 0 and head_maps is not None and head_copy is not None
                 and _same_head(head_copy, randomised) else {})
        for method, make in makes.items():
            if method in known:
                after_maps = known[method][rows]
            else:
                after_maps = make(randomised, predictor, reruns.seed).explain(images, targets)
            for n, after in zip(rows, after_maps, strict=True):
                similarity = Q.map_similarity(maps[method][n], after)
                curve.append({"method": method, "row": int(n), "step": step, "block": block,
                              **similarity})
    last = max(r["step"] for r in curve)
    final = [{"row": r["row"], "method": r["method"], "cascading_abs_rho": r["abs_rho"]}
             for r in curve if r["step"] == last]
    return final, curve


def _same_head(a: keras.Model, b: keras.Model) -> bool:
    """Equal weights in the layers the cascade's first step re-initialises: for two copies that
    differ from the trained model there only (a 'head' sanity copy, that step), the same model."""
    names = EM.cascading_layer_steps(a)[0][1]
    return all(np.array_equal(x, y) for name in names for x, y in zip(
        a.get_layer(name).get_weights(), b.get_layer(name).get_weights(), strict=True))


@dataclass
class Assessment:
    """Everything measured on a selection: one row per (image, method) incl. the random
    baseline, the cascading curves (one row per method, image and step) and the maps."""

    per_image: pd.DataFrame
    cascading: pd.DataFrame
    maps: dict[str, np.ndarray]


SANITY_CHUNK = 16  # images explained before their sanity rerun (see scoring.explain_selection)


def predictors(model: keras.Model, sanity_model: keras.Model | None, randomize: str,
               batch_size: int) -> Callable[[keras.Model], Predict]:
    """`predictor_for(m)`: one MemoPredictor for `model`; for `sanity_model` when only its head
    (the last layer) was re-initialised, a view that reuses that predictor's features (the
    backbone runs once for both); a plain Predictor for any other model (the cascade's copy)."""
    from crackxai.models.predictor import MemoPredictor, Predictor

    trained = MemoPredictor(model, batch_size=batch_size)
    head_only = (sanity_model is not None
                 and EM.randomized_layer_names(model, randomize) == [model.layers[-1].name])
    shared = trained.sharing_features(sanity_model) if head_only else None

    def predictor_for(m: keras.Model) -> Predict:
        if m is model:
            return trained
        if m is sanity_model and shared is not None:
            return shared
        return Predictor(m, batch_size=batch_size)
    return predictor_for


def assess(makes: Mapping[str, Make], model: keras.Model,
           predictor_for: Callable[[keras.Model], Predict], sel: Selection,
           quality: scoring.Quality, reruns: Reruns, out: Path,
           sanity_model: keras.Model | None = None,
           log: Callable[[str], None] = lambda message: None) -> Assessment:
    """Explain the selection with every method (maps and overlays saved under `out`, see
    scoring.explain_selection) and measure every metric: scoring's faithfulness, localisation
    and head-randomisation sanity on all images, map_records on all images, the reruns and the
    cascade on `reruns.images` of them, and the random baseline. `predictor_for` as `predictors`
    makes it, so that explaining the sanity copy and other classes reuses model evaluations."""
    predictor = predictor_for(model)
    sanity_predictor = predictor_for(sanity_model) if sanity_model is not None else None
    n_classes = int(np.asarray(predictor(sel.images[:1])).shape[-1])
    records: list[dict[str, Any]] = []
    extra: list[dict[str, Any]] = []
    maps: dict[str, np.ndarray] = {}
    sanity_maps: dict[str, np.ndarray] = {}
    for method, make in makes.items():
        log(f"{method}: explaining {len(sel.rows)} images")
        with scoring.distinct_warnings() as warned:
            explainer = make(model, predictor, reruns.seed)
            sanity = (make(sanity_model, sanity_predictor, reruns.seed)
                      if sanity_model is not None else None)
            maps[method], randomised, method_records = scoring.explain_selection(
                explainer, sel, predictor, quality, out, sanity, chunk=SANITY_CHUNK)
            if randomised is not None:
                sanity_maps[method] = randomised
            records += method_records
            extra += map_records(method, maps[method], sel.masks)
            if reruns.any:
                log(f"{method}: reruns on {len(rerun_rows(len(sel.rows), reruns.images))} images")
                extra += rerun_records(make, model, predictor, sel, maps[method], n_classes,
                                       reruns)
        for message in warned:  # once per method, not once per image and call
            log(f"{method}: warning: {message}")
        computed = getattr(predictor, "n_computed", None)
        shared = getattr(sanity_predictor, "base", None) is predictor
        asked = predictor.n_evals + (sanity_predictor.n_evals if shared else 0)
        if computed is not None and asked:
            log(f"trained model{' and sanity copy' if shared else ''}: {asked} images asked for "
                f"so far, {computed} through the backbone (the rest were the same images again)")
    curve: list[dict[str, Any]] = []
    if reruns.cascading and reruns.images > 0:
        log("cascading randomisation: head, then conv5 .. conv1 re-initialised in turn")
        with scoring.distinct_warnings():
            final, curve = cascading_records(
                makes, model, predictor_for, sel, maps, reruns,
                head_copy=sanity_model if quality.randomize == "head" else None,
                head_maps=sanity_maps)
        extra += final
    if quality.faithfulness or quality.localisation:
        log("random baseline: the same metrics for uninformative maps")
        records += scoring.random_baseline(sel, predictor, quality)
        noise = scoring.random_maps(sel, quality.seed)
        extra += [{k: v for k, v in r.items() if k not in ("sparseness", "complexity")}
                  for r in map_records(scoring.RANDOM_BASELINE, noise, sel.masks)]
    per_image = scoring.per_image_table(sel.info, records)
    if extra:  # several records per (row, method): the first non-missing value of each column
        joined = pd.DataFrame(extra).groupby(["row", "method"], sort=False).first().reset_index()
        per_image = per_image.merge(joined, on=["row", "method"], how="left")
    return Assessment(per_image, pd.DataFrame(curve), maps)


def write_outputs(out: Path, result: Assessment, card: dict[str, Any], sel: Selection,
                  grid_images: int) -> int:
    """The files of an assessment in `out`: per_image.csv, scorecard.{json,csv,md,png},
    cascading.{csv,png} (an empty chart when the cascade was off) and grid.png with
    `grid_images` of the images, evenly spaced; returns how many the grid shows."""
    from crackxai.core.io import write_json, write_text
    from crackxai.xai import render, scorecard

    write_text(out / "per_image.csv", result.per_image.to_csv(index=False))
    write_json(out / "scorecard.json", card)
    write_text(out / "scorecard.csv", scorecard.table(card).to_csv(index=False))
    write_text(out / "scorecard.md", scorecard.markdown(card, n_images=len(sel.rows)))
    scorecard.chart(card, out / "scorecard.png")
    write_text(out / "cascading.csv", result.cascading.to_csv(index=False))
    scorecard.cascading_chart(result.cascading, out / "cascading.png")
    shown = render.grid_rows(len(sel.rows), grid_images)
    titles = sel.row_titles()
    render.comparison_grid(sel.images[shown], {m: v[shown] for m, v in result.maps.items()},
                           [titles[i] for i in shown], out / "grid.png")
    return len(shown)
