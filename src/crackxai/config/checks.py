"""Value checks that types alone cannot express; each names its key and what is allowed."""

from __future__ import annotations

from typing import Any

from crackxai.config.schema import (
    BASELINES,
    DATA_SOURCES,
    EXPLAIN_METHODS,
    MIN_IMAGE_SIZE,
    PRECISIONS,
    RANDOMIZE,
    Config,
)
from crackxai.core.errors import ConfigError
from crackxai.xai.options import INPAINT_MASKERS, SEGMENTATION_ALGOS, parse_blur_kernel


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(
            f"Invalid value for '{key}': {value!r}. Allowed: {allowed}. "
            f"Fix it in conf/ or params.yaml, or override it, e.g. `{key}=<value>`."
        )


def check_values(cfg: Config) -> None:
    """Value checks that types alone cannot express; each names its key and what is allowed."""
    d, p, t, e = cfg.data, cfg.preprocess, cfg.train, cfg.explain
    _check(d.source in DATA_SOURCES, "data.source", d.source, " | ".join(DATA_SOURCES))
    _check(d.source != "local" or bool(d.path), "data.path", d.path,
           "a folder or .zip with one sub-folder per class (required with data=local)")
    _check(d.limit_per_class is None or d.limit_per_class > 0, "data.limit_per_class",
           d.limit_per_class, "null or a positive integer")
    _check(d.synthetic.n_per_class >= 2, "data.synthetic.n_per_class", d.synthetic.n_per_class,
           "an integer >= 2")
    _check(d.synthetic.image_size >= MIN_IMAGE_SIZE, "data.synthetic.image_size",
           d.synthetic.image_size, f"an integer >= {MIN_IMAGE_SIZE}")
    _check(0.0 <= d.synthetic.difficulty <= 1.0, "data.synthetic.difficulty",
           d.synthetic.difficulty, "a number in [0, 1]")
    _check(p.image_size >= MIN_IMAGE_SIZE, "preprocess.image_size", p.image_size,
           f"an integer >= {MIN_IMAGE_SIZE} (the smallest input ResNet50 accepts)")
    fractions = (p.split.train, p.split.val, p.split.test)
    _check(all(f >= 0 for f in fractions) and abs(sum(fractions) - 1.0) < 1e-6,
           "preprocess.split", dict(train=p.split.train, val=p.split.val, test=p.split.test),
           "non-negative fractions summing to 1")
    _check(p.split.train > 0 and p.split.val > 0 and p.split.test > 0, "preprocess.split",
           dict(train=p.split.train, val=p.split.val, test=p.split.test),
           "train, val and test each > 0 (training, early stopping and testing need all three)")
    _check(0.0 < p.min_good_fraction <= 1.0, "preprocess.min_good_fraction",
           p.min_good_fraction, "a number in (0, 1]")
    _check(p.min_source_size >= 1, "preprocess.min_source_size", p.min_source_size,
           "a positive integer")
    _check(p.workers >= 0, "preprocess.workers", p.workers,
           "an integer >= 0 (0 decodes in the main thread)")
    _check(cfg.model.name == "resnet50", "model.name", cfg.model.name, "resnet50")
    _check(0.0 <= cfg.model.dropout < 1.0, "model.dropout", cfg.model.dropout, "[0, 1)")
    _check(0.0 <= cfg.model.augment.translate < 1.0, "model.augment.translate",
           cfg.model.augment.translate, "[0, 1)")
    _check(t.lr > 0, "train.lr", t.lr, "a positive number, e.g. 1e-3")
    _check(t.batch_size > 0, "train.batch_size", t.batch_size, "a positive integer")
    _check(t.epochs > 0, "train.epochs", t.epochs, "a positive integer")
    _check(t.patience >= 0, "train.patience", t.patience, "an integer >= 0")
    _check(t.fine_tune.unfreeze >= 0, "train.fine_tune.unfreeze", t.fine_tune.unfreeze,
           "an integer >= 0 (number of ResNet50 stages to unfreeze; 0 = no fine-tuning)")
    _check(t.fine_tune.lr > 0, "train.fine_tune.lr", t.fine_tune.lr, "a positive number")
    _check(t.fine_tune.epochs >= 0, "train.fine_tune.epochs", t.fine_tune.epochs, "an integer >= 0")
    _check(t.precision in PRECISIONS, "train.precision", t.precision, " | ".join(PRECISIONS))
    _check(0.0 <= cfg.evaluate.threshold <= 1.0, "evaluate.threshold", cfg.evaluate.threshold,
           "a number in [0, 1]")
    _check(cfg.evaluate.gallery_size >= 0, "evaluate.gallery_size", cfg.evaluate.gallery_size,
           "an integer >= 0")
    unknown = [m for m in e.methods if m not in EXPLAIN_METHODS]
    _check(not unknown, "explain.methods", unknown, ", ".join(EXPLAIN_METHODS))
    _check(e.n_images > 0 or bool(e.images), "explain.n_images", e.n_images,
           "a positive integer (or a non-empty explain.images list)")
    _check(e.target is None or e.target >= 0, "explain.target", e.target,
           "null (the predicted class) or a class index >= 0")
    masker = e.shap.masker
    _check(masker in INPAINT_MASKERS or parse_blur_kernel(masker) is not None,
           "explain.shap.masker", masker, " | ".join(INPAINT_MASKERS) + " | blur(k,k), e.g. blur(15,15)")
    _check(e.cam_min_size >= 1, "explain.cam_min_size", e.cam_min_size, "an integer >= 1")
    _check(e.shap.max_evals > 1, "explain.shap.max_evals", e.shap.max_evals, "an integer > 1")
    _check(e.shap.batch_size > 0, "explain.shap.batch_size", e.shap.batch_size, "> 0")
    _check(e.lime.num_samples > 0, "explain.lime.num_samples", e.lime.num_samples, "> 0")
    _check(e.lime.num_features > 0, "explain.lime.num_features", e.lime.num_features, "> 0")
    _check(e.lime.segmentation.algo in SEGMENTATION_ALGOS,
           "explain.lime.segmentation.algo", e.lime.segmentation.algo,
           " | ".join(SEGMENTATION_ALGOS))
    _check(e.faster_scorecam.max_N > 0, "explain.faster_scorecam.max_N",
           e.faster_scorecam.max_N, "a positive integer (e.g. 10)")
    _check(e.metrics.baseline in BASELINES, "explain.metrics.baseline", e.metrics.baseline,
           " | ".join(BASELINES))
    _check(e.metrics.steps >= 2, "explain.metrics.steps", e.metrics.steps, "an integer >= 2")
    _check(0 < e.metrics.top_k_percent <= 100, "explain.metrics.top_k_percent",
           e.metrics.top_k_percent, "a number in (0, 100]")
    _check(e.metrics.randomize in RANDOMIZE, "explain.metrics.randomize", e.metrics.randomize,
           " | ".join(RANDOMIZE))
