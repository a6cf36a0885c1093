"""Value checks that types alone cannot express, run on every configuration before any work.

Every leaf that can be out of range is checked here (and only here): the stages and tools keep only
the checks that need the model or the data (an image index beyond the test split, a class index
beyond the model's outputs, a layer name the model lacks). Each failure names its key, where the
value came from, and what is allowed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from crackxai.config.schema import (
    BASELINES,
    DATA_SOURCES,
    DISTRIBUTIONS,
    EXPLAIN_METHODS,
    GROUP_BY,
    HASH_BITS,
    MAX_SEED,
    MIN_IMAGE_SIZE,
    MODEL_NAMES,
    PRECISIONS,
    RANDOMIZE,
    RUNNERS,
    Config,
    SplitConfig,
)
from crackxai.core.errors import ConfigError
from crackxai.models.sources import ALLOWED as WEIGHTS_ALLOWED
from crackxai.models.sources import valid_spec
from crackxai.xai.options import INPAINT_MASKERS, SEGMENTATION_ALGOS, parse_blur_kernel

# key -> a phrase saying where its value came from, e.g. "from the command line"
Origin = Callable[[str], str]


def _default_origin(key: str) -> str:
    return "from conf/ or params.yaml"


def _finite(x: float) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def _positive(x: float) -> bool:
    return _finite(x) and x > 0


def _fraction(x: float, low_open: bool = False, high_open: bool = False) -> bool:
    """x in [0, 1], each end excluded on request."""
    if not _finite(x):
        return False
    return (x > 0 if low_open else x >= 0) and (x < 1 if high_open else x <= 1)


class _Checker:
    def __init__(self, origin: Origin):
        self.origin = origin

    def __call__(self, ok: bool, key: str, value: Any, allowed: str, example: str = "") -> None:
        if not ok:
            raise ConfigError(
                f"Invalid value for '{key}' ({self.origin(key)}): {value!r}. Allowed: {allowed}. "
                f"Fix it in conf/ or params.yaml, or override it, e.g. "
                f"`{example or key + '=<value>'}`."
            )


def check_methods(methods: list[str], key: str = "explain.methods",
                  origin: Origin = _default_origin) -> None:
    """Known method names, at least one, none repeated (also explain_image's --methods)."""
    unknown = [m for m in methods if m not in EXPLAIN_METHODS]
    repeated = sorted({m for m in methods if methods.count(m) > 1})
    problem = (f"unknown method(s) {unknown}" if unknown else "no method" if not methods else
               f"repeated method(s) {repeated}" if repeated else "")
    if problem:
        example = "--methods gradcam,lime" if key.startswith("--") else f"{key}=[gradcam,lime]"
        raise ConfigError(
            f"Invalid value for '{key}' ({origin(key)}): {problem}. Allowed: one or more of "
            f"{', '.join(EXPLAIN_METHODS)}, each once, e.g. `{example}`."
        )


def check_values(cfg: Config, origin: Origin = _default_origin) -> None:
    """Raise ConfigError naming the first key whose value is out of range."""
    check = _Checker(origin)
    _check_data(cfg, check)
    _check_preprocess(cfg, check)
    _check_model_and_train(cfg, check)
    _check_evaluate(cfg, check)
    _check_explain(cfg, check, origin)
    check(0 <= cfg.seed <= MAX_SEED, "seed", cfg.seed, f"an integer in [0, {MAX_SEED}]")
    check(bool(cfg.tracking.experiment.strip()), "tracking.experiment", cfg.tracking.experiment,
          "a non-empty MLflow experiment name")
    name = cfg.tracking.registered_model
    check(name is None or bool(name.strip()), "tracking.registered_model", name,
          "a Model Registry name (e.g. crackxai), or null to log the model without registering it")


def _check_data(cfg: Config, check: _Checker) -> None:
    d = cfg.data
    check(d.source in DATA_SOURCES, "data.source", d.source, " | ".join(DATA_SOURCES))
    check(d.source != "local" or bool(d.path), "data.path", d.path,
          "a folder or .zip with one sub-folder per class (required with data.source=local)")
    owner, _, name = d.kaggle_dataset.partition("/")
    check(bool(owner) and bool(name) and "/" not in name, "data.kaggle_dataset", d.kaggle_dataset,
          "a Kaggle dataset handle owner/name, e.g. arunrk7/surface-crack-detection")
    check(d.limit_per_class is None or d.limit_per_class > 0, "data.limit_per_class",
          d.limit_per_class, "null (every image) or a positive integer")
    s = d.synthetic
    check(s.n_per_class >= 2, "data.synthetic.n_per_class", s.n_per_class, "an integer >= 2")
    check(s.image_size >= MIN_IMAGE_SIZE, "data.synthetic.image_size", s.image_size,
          f"an integer >= {MIN_IMAGE_SIZE}")
    check(_fraction(s.difficulty), "data.synthetic.difficulty", s.difficulty, "a number in [0, 1]")


def _check_preprocess(cfg: Config, check: _Checker) -> None:
    p = cfg.preprocess
    check(p.image_size >= MIN_IMAGE_SIZE, "preprocess.image_size", p.image_size,
          f"an integer >= {MIN_IMAGE_SIZE} (the smallest input ResNet50 accepts)")
    for part in ("train", "val", "test"):
        key = f"preprocess.split.{part}"
        check(_fraction(getattr(p.split, part), low_open=True), key, getattr(p.split, part),
              "a fraction in (0, 1] (training, early stopping and testing need all three splits)")
    total = p.split.train + p.split.val + p.split.test
    check(abs(total - 1.0) < 1e-6, "preprocess.split.train + preprocess.split.val + "
          "preprocess.split.test", total, "fractions summing to 1",
          "preprocess.split.train=0.7 preprocess.split.val=0.15 preprocess.split.test=0.15")
    _check_groups(p.split, check)
    check(_fraction(p.min_good_fraction, low_open=True), "preprocess.min_good_fraction",
          p.min_good_fraction, "a number in (0, 1]")
    check(p.min_source_size >= 1, "preprocess.min_source_size", p.min_source_size,
          "a positive integer (pixels)")
    check(p.workers >= 0, "preprocess.workers", p.workers,
          "an integer >= 0 (0 decodes in the main thread)")


def _regex_problem(pattern: str | None) -> str:
    if not pattern:
        return "empty"
    try:
        re.compile(pattern)
    except re.error as exc:
        return str(exc)
    return ""


def _check_groups(split: SplitConfig, check: _Checker) -> None:
    check(split.group_by in GROUP_BY, "preprocess.split.group_by", split.group_by,
          " | ".join(GROUP_BY))
    if split.group_by == "filename_regex":
        problem = _regex_problem(split.group_regex)
        check(not problem, "preprocess.split.group_regex", split.group_regex,
              "a Python regular expression found in each image path (its first capture group is "
              f"the group key) with preprocess.split.group_by=filename_regex ({problem})",
              r"preprocess.split.group_regex='^[^/]+/(\w+)_\d+\.jpg$'")
    if split.group_by == "column":
        check(bool(split.group_column and split.group_column.strip()),
              "preprocess.split.group_column", split.group_column,
              "the name of a data/manifest.csv column holding a group key (e.g. a photo id), "
              "required with preprocess.split.group_by=column", "preprocess.split.group_column=photo")
    check(0 <= split.hash_distance < HASH_BITS, "preprocess.split.hash_distance",
          split.hash_distance, f"an integer in [0, {HASH_BITS}) (bits of the {HASH_BITS}-bit "
          "perceptual hash that may differ within a near-duplicate group)")


def _check_model_and_train(cfg: Config, check: _Checker) -> None:
    m, t = cfg.model, cfg.train
    check(m.name in MODEL_NAMES, "model.name", m.name, " | ".join(MODEL_NAMES))
    check(valid_spec(m.weights), "model.weights", m.weights, WEIGHTS_ALLOWED,
          "model.weights=models:/crackxai@champion")
    check(_fraction(m.dropout, high_open=True), "model.dropout", m.dropout, "a number in [0, 1)")
    check(_fraction(m.augment.translate, high_open=True), "model.augment.translate",
          m.augment.translate, "a number in [0, 1) (fraction of the image side)")
    check(_positive(t.lr), "train.lr", t.lr, "a positive number, e.g. 1e-3")
    check(t.batch_size > 0, "train.batch_size", t.batch_size, "a positive integer")
    check(t.epochs > 0, "train.epochs", t.epochs, "a positive integer")
    check(t.patience >= 0, "train.patience", t.patience, "an integer >= 0")
    ft = t.fine_tune
    check(ft.unfreeze >= 0, "train.fine_tune.unfreeze", ft.unfreeze,
          "an integer >= 0 (number of ResNet50 stages to unfreeze; 0 = no fine-tuning)")
    check(_positive(ft.lr), "train.fine_tune.lr", ft.lr, "a positive number, e.g. 1e-5")
    check(ft.epochs >= 0, "train.fine_tune.epochs", ft.epochs, "an integer >= 0")
    check(t.precision in PRECISIONS, "train.precision", t.precision, " | ".join(PRECISIONS))
    check(t.distribution in DISTRIBUTIONS, "train.distribution", t.distribution,
          " | ".join(DISTRIBUTIONS))
    check(_fraction(t.ood_quantile, low_open=True, high_open=True), "train.ood_quantile",
          t.ood_quantile, "a number in (0, 1): the share of the validation split the "
          "out-of-distribution detector lets pass, e.g. 0.95")


def _check_evaluate(cfg: Config, check: _Checker) -> None:
    ev = cfg.evaluate
    check(_fraction(ev.threshold), "evaluate.threshold", ev.threshold, "a number in [0, 1]")
    check(ev.gallery_size >= 0, "evaluate.gallery_size", ev.gallery_size,
          "an integer >= 0 (0: no gallery)")
    check(ev.batch_size > 0, "evaluate.batch_size", ev.batch_size,
          "a positive integer, e.g. 64 (images per prediction batch)")
    check(ev.positive_class is None or bool(ev.positive_class.strip()), "evaluate.positive_class",
          ev.positive_class, "null or a class name")


def _check_explain(cfg: Config, check: _Checker, origin: Origin) -> None:
    e = cfg.explain
    check_methods(list(e.methods), "explain.methods", origin)
    negative = [i for i in e.images if i < 0]
    check(not negative, "explain.images", negative, "test-split indices >= 0 ([] = choose "
          "explain.n_images images automatically)")
    check(e.n_images > 0 or bool(e.images), "explain.n_images", e.n_images,
          "a positive integer (or a non-empty explain.images list)")
    check(e.grid_images >= 1, "explain.grid_images", e.grid_images, "an integer >= 1")
    check(e.max_misclassified >= 0, "explain.max_misclassified", e.max_misclassified,
          "an integer >= 0 (misclassified images among the ones chosen)")
    check(e.target is None or e.target >= 0, "explain.target", e.target,
          "null (the predicted class) or a class index >= 0")
    check(e.layer is None or bool(e.layer.strip()), "explain.layer", e.layer,
          "null (the last feature map of at least explain.cam_min_size pixels) or a layer name")
    check(e.cam_min_size >= 1, "explain.cam_min_size", e.cam_min_size, "an integer >= 1")
    check(e.batch_size > 0, "explain.batch_size", e.batch_size,
          "a positive integer (images per prediction batch)")
    check(e.runner in RUNNERS, "explain.runner", e.runner, " | ".join(RUNNERS))
    check(e.ray.address is None or bool(e.ray.address.strip()), "explain.ray.address",
          e.ray.address, "null (a private local cluster) or a cluster address, e.g. auto or "
          "ray://head:10001")
    check(e.ray.num_actors >= 1, "explain.ray.num_actors", e.ray.num_actors,
          "a positive integer (actors, each holding the model once)")
    _check_shap_masker(e.shap.masker, check)
    check(e.shap.max_evals > 1, "explain.shap.max_evals", e.shap.max_evals, "an integer > 1")
    check(e.shap.batch_size > 0, "explain.shap.batch_size", e.shap.batch_size,
          "a positive integer")
    check(e.scorecam.max_N == -1 or e.scorecam.max_N > 0, "explain.scorecam.max_N",
          e.scorecam.max_N, "-1 (every channel) or a positive number of channels")
    check(e.faster_scorecam.max_N > 0, "explain.faster_scorecam.max_N",
          e.faster_scorecam.max_N, "a positive number of channels (e.g. 10)")
    lime, seg = e.lime, e.lime.segmentation
    check(lime.num_samples > 0, "explain.lime.num_samples", lime.num_samples, "a positive integer")
    check(lime.num_features > 0, "explain.lime.num_features", lime.num_features,
          "a positive integer")
    check(lime.hide_color is None or 0 <= lime.hide_color <= 255, "explain.lime.hide_color",
          lime.hide_color, "null (each superpixel's mean colour) or a pixel value in [0, 255]")
    check(lime.batch_size > 0, "explain.lime.batch_size", lime.batch_size, "a positive integer")
    check(seg.algo in SEGMENTATION_ALGOS, "explain.lime.segmentation.algo", seg.algo,
          " | ".join(SEGMENTATION_ALGOS))
    check(seg.n_segments >= 2, "explain.lime.segmentation.n_segments", seg.n_segments,
          "an integer >= 2 (SLIC's number of superpixels)")
    check(_finite(seg.compactness) and seg.compactness > 0, "explain.lime.segmentation.compactness",
          seg.compactness, "a positive number (SLIC: higher = squarer superpixels)")
    check(_finite(seg.sigma) and seg.sigma >= 0, "explain.lime.segmentation.sigma", seg.sigma,
          "a number >= 0 (SLIC's pre-smoothing width)")
    check(_positive(seg.kernel_size), "explain.lime.segmentation.kernel_size", seg.kernel_size,
          "a positive number (quickshift's smoothing width)")
    check(_positive(seg.max_dist), "explain.lime.segmentation.max_dist", seg.max_dist,
          "a positive number (quickshift's distance cut-off)")
    check(_fraction(seg.ratio), "explain.lime.segmentation.ratio", seg.ratio,
          "a number in [0, 1] (quickshift's colour vs. space balance)")
    m = e.metrics
    check(m.baseline in BASELINES, "explain.metrics.baseline", m.baseline, " | ".join(BASELINES))
    check(m.steps >= 2, "explain.metrics.steps", m.steps, "an integer >= 2")
    check(_finite(m.top_k_percent) and 0 < m.top_k_percent <= 100,
          "explain.metrics.top_k_percent", m.top_k_percent, "a number in (0, 100]")
    check(m.randomize in RANDOMIZE, "explain.metrics.randomize", m.randomize, " | ".join(RANDOMIZE))
    r, b = m.reruns, m.bootstrap
    check(r.images >= 0, "explain.metrics.reruns.images", r.images,
          "an integer >= 0 (0 switches the rerun metrics off)")
    check(r.max_sensitivity_samples >= 0, "explain.metrics.reruns.max_sensitivity_samples",
          r.max_sensitivity_samples, "an integer >= 0 (0 = off)")
    check(_finite(r.max_sensitivity_radius) and 0 < r.max_sensitivity_radius <= 255,
          "explain.metrics.reruns.max_sensitivity_radius", r.max_sensitivity_radius,
          "a number in (0, 255] (pixel values)")
    check(r.seeds >= 1, "explain.metrics.reruns.seeds", r.seeds, "an integer >= 1 (1 = off)")
    check(b.resamples >= 100, "explain.metrics.bootstrap.resamples", b.resamples,
          "an integer >= 100")
    check(_fraction(b.confidence, low_open=True, high_open=True),
          "explain.metrics.bootstrap.confidence", b.confidence, "a number in (0, 1), e.g. 0.95")


def _check_shap_masker(masker: str, check: _Checker) -> None:
    check(masker in INPAINT_MASKERS or parse_blur_kernel(masker) is not None,
          "explain.shap.masker", masker,
          f"{' | '.join(INPAINT_MASKERS)} | blur(k,k) with k > 0, e.g. blur(15,15)")

