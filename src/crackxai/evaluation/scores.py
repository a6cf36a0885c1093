"""A model's predictions on one image set, and the metrics computed from them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from crackxai.core.errors import ConfigError
from crackxai.core.progress import progress
from crackxai.evaluation import metrics as M


@dataclass
class Scores:
    """A model's predictions on one image set, ready for metrics and plots."""

    labels: np.ndarray  # (N,) true class index
    probs: np.ndarray  # (N, K) softmax
    classes: list[str]
    positive: int  # two classes: index of the positive class
    threshold: float  # two classes: decision threshold on probs[:, positive]

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2

    @property
    def predicted(self) -> np.ndarray:
        if not self.binary:
            return np.argmax(self.probs, axis=1)
        return np.where(self.probs[:, self.positive] >= self.threshold,
                        self.positive, 1 - self.positive)

    def one_vs_rest(self) -> tuple[np.ndarray, np.ndarray, str]:
        """(is positive, score, what) for the curves: the positive class for two classes,
        every (image, class) pair pooled (micro-average) for more."""
        if self.binary:
            return (self.labels == self.positive, self.probs[:, self.positive],
                    f"p({self.classes[self.positive]})")
        onehot = np.eye(len(self.classes), dtype=bool)[self.labels]
        return onehot.ravel(), self.probs.ravel(), "micro-averaged one-vs-rest"


def positive_index(classes: list[str], name: str | None = None,
                   option: str = "evaluate.positive_class") -> int:
    """Index of the positive class: `name`, else "Positive", else the second class."""
    if name is not None:
        if name not in classes:
            raise ConfigError(f"{option}={name!r} is not one of the classes {classes}. Use one "
                              "of them, or leave it unset (\"Positive\", else the second class).")
        return classes.index(name)
    return classes.index("Positive") if "Positive" in classes else 1


def predict_proba(model: Any, images: np.ndarray, batch_size: int,
                  desc: str = "predict") -> np.ndarray:
    """Softmax outputs, one compiled `predict_on_batch` call per batch; slicing a memory-mapped
    array one batch at a time keeps memory flat however large the split is."""
    starts = range(0, len(images), batch_size)
    out = [model.predict_on_batch(np.asarray(images[i:i + batch_size], np.float32))
           for i in progress(starts, total=len(starts), desc=f"predict {desc}", unit="batch")]
    if not out:
        return np.zeros((0, model.output_shape[-1]), np.float32)
    return np.concatenate([np.asarray(p) for p in out]).astype(np.float32)


def compute_metrics(s: Scores, group: str, best_threshold: float | None = None) -> dict[str, Any]:
    """{group: every metric} plus, for two classes and a val threshold, {group_best_f1: ...}."""
    if not s.binary:
        return {group: M.multiclass_report(s.labels, s.probs, s.classes)}
    score = s.probs[:, s.positive]
    out: dict[str, Any] = {group: M.binary_report(s.labels, score, s.probs, s.positive,
                                                  s.threshold)}
    if best_threshold is not None:
        out[f"{group}_best_f1"] = M.at_threshold(s.labels == s.positive, score, best_threshold)
    return out


def flatten_metrics(d: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """{'test': {'f1': 0.9}} -> {'test/f1': 0.9}; characters MLflow refuses in a name become _."""
    out: dict[str, float] = {}
    for key, value in d.items():
        name = prefix + re.sub(r"[^\w\-. :/]", "_", str(key))
        if isinstance(value, dict):
            out.update(flatten_metrics(value, name + "/"))
        else:
            out[name] = float(value)
    return out


def summary(m: dict[str, Any]) -> str:
    """One line of the headline metrics of one group."""
    names = [("accuracy", "accuracy"), ("precision", "precision"), ("recall", "recall"),
             ("f1", "F1"), ("precision_macro", "macro precision"), ("recall_macro", "macro recall"),
             ("f1_macro", "macro F1"), ("roc_auc", "ROC AUC"), ("roc_auc_ovr_macro", "OvR ROC AUC"),
             ("average_precision", "AP"), ("log_loss", "log loss"), ("ece", "ECE")]
    text = ", ".join(f"{label} {m[key]:.4f}" for key, label in names if key in m)
    return text + (f" at threshold {m['threshold']:.3f}" if "threshold" in m else "")
