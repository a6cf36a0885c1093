"""How good are a method's maps on the selected images: per-image records and their summary.

Metrics (crackxai.xai.metrics) per method, averaged over images:

    deletion_auc, insertion_auc      Petsiuk et al. 2018 (lower / higher is better)
    pointing_game                    Zhang et al. 2016: the map's maximum within 15 px (at 224 px,
                                     scaled: 4 px at 64) of the mask (higher is better)
    energy_pointing_game             Wang et al. 2020 with the crack mask (higher is better)
    topk_iou                         IoU of the top `top_k_percent` % with the mask
    sanity_abs_spearman              mean |Spearman rho| between the maps of the trained model and
                                     of a copy with re-initialised top layers (Adebayo et al. 2018;
                                     lower is better: the map depends on what the model learnt;
                                     the per-image records have the signed rho as sanity_spearman)
    seconds_per_image, evals_per_image  cost of the explanation alone: wall seconds, and images
                                     through the predictor (SHAP, LIME, Score-CAM's masked
                                     copies); a gradient CAM's forward+backward pass counts as 1.
                                     All images are explained in one call (methods batch across
                                     them), so these are that call's totals / N

Localisation needs a ground-truth mask: images without one get NaN and, if no image has one, the
summary says None (JSON null), never 0. The `random_baseline` entry is what a map without
information scores: a seeded uniform-noise map for the AUCs, IoU and energy, and the expected hit
of a uniformly random point for the pointing game.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crackxai.xai import metrics as EM
from crackxai.xai import render
from crackxai.xai.base import Explainer
from crackxai.xai.selection import Selection

Predict = Callable[[np.ndarray], np.ndarray]

METRICS = ("deletion_auc", "insertion_auc", "pointing_game", "energy_pointing_game", "topk_iou",
           "sanity_abs_spearman", "seconds_per_image", "evals_per_image")
BETTER = {"deletion_auc": "lower", "insertion_auc": "higher", "pointing_game": "higher",
          "energy_pointing_game": "higher", "topk_iou": "higher", "sanity_abs_spearman": "lower",
          "seconds_per_image": "lower", "evals_per_image": "lower"}
LOCALISATION = ("pointing_game", "energy_pointing_game", "topk_iou")
RANDOM_BASELINE = "random_baseline"


@dataclass(frozen=True)
class Quality:
    """Which quality metrics to compute and how (the explain.metrics settings, plus the seed)."""

    faithfulness: bool = True
    baseline: str = "blur"
    steps: int = 20
    localisation: bool = True
    top_k_percent: float = 5.0
    sanity: bool = True
    randomize: str = "head"
    seed: int = 0


def score_map(attribution: np.ndarray, image: np.ndarray, target: int, mask: np.ndarray | None,
              predictor: Predict, quality: Quality) -> dict[str, float]:
    """Faithfulness and localisation of one map (NaN where disabled or without a mask)."""
    return score_maps(attribution[None], image[None], [target], [mask], predictor, quality)[0]


def score_maps(attributions: np.ndarray, images: np.ndarray, targets: np.ndarray | list[int],
               masks: list[np.ndarray | None] | np.ndarray, predictor: Predict,
               quality: Quality) -> list[dict[str, float]]:
    """score_map of each map; the faithfulness curves of all of them share full predictor
    batches."""
    q = quality
    out = [dict.fromkeys(("deletion_auc", "insertion_auc", *LOCALISATION), float("nan"))
           for _ in range(len(attributions))]
    if q.faithfulness:
        for scores, faithful in zip(out, EM.faithfulness_batch(
                predictor, images, attributions, targets, q.baseline, q.steps, seed=q.seed),
                strict=True):
            scores.update(faithful)
    if q.localisation:
        for scores, attribution, mask in zip(out, attributions, masks, strict=True):
            scores.update(EM.localisation(attribution, mask, q.top_k_percent, seed=q.seed))
    return out


def explain_selection(explainer: Explainer, sel: Selection, predictor: Predict, quality: Quality,
                      out: Path, sanity: Explainer | None = None, chunk: int = 0
                      ) -> tuple[np.ndarray, np.ndarray | None, list[dict[str, Any]]]:
    """(maps, the sanity maps or None, one metrics record per image) of every selected image,
    saved under `out` as maps/<method>/<name>.npy with their overlays/<method>/<name>.png.
    `sanity` is the same method on a model with re-initialised layers. The images go to
    explain() together (so the methods batch across them), or in chunks of `chunk` images, each
    explained by the method and then by `sanity`: a predictor that remembers images (MemoPredictor)
    then still holds the chunk's perturbed images when the sanity copy asks for the same ones.
    The cost per image is the share of its calls, seconds and evaluations / N."""
    method = explainer.name
    n = len(sel.rows)
    step = chunk if chunk > 0 else max(n, 1)
    parts, seconds, evals = [], 0.0, 0
    for start in range(0, n, step):
        images, targets = sel.images[start:start + step], sel.targets[start:start + step]
        part, part_seconds, part_evals = explainer.explain_with_cost(images, targets)
        parts.append((part, sanity.explain(images, targets) if sanity is not None else None))
        seconds, evals = seconds + part_seconds, evals + part_evals
    maps = np.concatenate([m for m, _ in parts]) if parts else np.zeros(
        (0, *sel.images.shape[1:3]), np.float32)
    randomised = np.concatenate([r for _, r in parts]) if sanity is not None and parts else None
    rhos = ([EM.rank_correlation(a, b) for a, b in zip(maps, randomised, strict=True)]
            if randomised is not None else [float("nan")] * n)
    scores = score_maps(maps, sel.images, sel.targets, list(sel.masks), predictor, quality)
    records = []
    for i in range(n):
        records.append({"row": i, "method": method, **scores[i], "sanity_spearman": rhos[i],
                        "seconds": seconds / n, "model_evals": round(evals / n)})
        (out / "maps" / method).mkdir(parents=True, exist_ok=True)
        np.save(out / "maps" / method / f"{sel.names[i]}.npy", maps[i])
        render.save_png(out / "overlays" / method / f"{sel.names[i]}.png",
                        render.overlay(sel.images[i], maps[i]))
    return maps, randomised, records


@contextlib.contextmanager
def distinct_warnings() -> Iterator[list[str]]:
    """Collects the first line of each distinct warning raised inside the block (deprecations
    left out), so a caller can report a method's warnings once rather than once per image."""
    messages: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield messages
    hidden = (DeprecationWarning, PendingDeprecationWarning)
    messages.extend(dict.fromkeys(str(w.message).splitlines()[0] for w in caught
                                  if not issubclass(w.category, hidden)))


def random_maps(sel: Selection, seed: int) -> np.ndarray:
    """The random baseline's maps (N, H, W): seeded uniform noise, one per selected image."""
    return np.stack([np.random.default_rng([seed, int(index)]).random(sel.images.shape[1:3])
                     for index in sel.rows]).astype(np.float32)


def random_baseline(sel: Selection, predictor: Predict, quality: Quality) -> list[dict[str, Any]]:
    """What a map without information scores: seeded uniform noise for the AUCs, IoU and energy;
    the expected hit of a uniformly random point for the pointing game."""
    scores = score_maps(random_maps(sel, quality.seed), sel.images, sel.targets, list(sel.masks),
                        predictor, quality)
    records = []
    for n, row_scores in enumerate(scores):
        if quality.localisation:
            row_scores["pointing_game"] = EM.pointing_game_chance(sel.masks[n])
        records.append({"row": n, "method": RANDOM_BASELINE, **row_scores})
    return records


def per_image_table(info: pd.DataFrame, records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per (image, method): what the model says about the image, then the metrics."""
    per_image = info.merge(pd.DataFrame(records), on="row")
    per_image["model_evals"] = per_image["model_evals"].astype("Int64")  # blank, not NaN
    return per_image


def mean_or_none(values: pd.Series) -> float | None:
    """Mean over the images where the metric exists; None (JSON null, DVC '-') where none has it."""
    values = values.dropna()
    return float(values.mean()) if len(values) else None


def summarise(per_image: pd.DataFrame, methods: list[str], info: pd.DataFrame) -> dict[str, Any]:
    """{method: {metric: mean over images, or None}}, the random baseline, and what the images
    were."""
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
