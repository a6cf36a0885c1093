"""Classification metrics as pure functions: numpy arrays in, plain dicts of floats out.

Conventions (the evaluate stage and the folder evaluator both use these):

- Binary: `score` is the probability of the positive class; an image is predicted positive when
  `score >= threshold`.
- Expected calibration error (ECE): 10 equal-width bins over [0, 1] of the positive-class score,
  edges 0, 0.1, ..., 1; a score on an inner edge goes to the lower bin ([0, 0.1], (0.1, 0.2], ...,
  (0.9, 1]), exactly as `sklearn.calibration.calibration_curve(strategy="uniform")` bins.
  ECE = sum over non-empty bins b of (n_b / N) * |mean score in b - fraction positive in b|.
- Best-F1 threshold: every cut between two consecutive distinct scores is tried (and "all
  positive"); the threshold returned is the midpoint between the two scores, so it does not sit
  on an example. On ties the highest threshold wins (fewer false alarms for the same F1).
- Multi-class: accuracy, macro precision/recall/F1 (unweighted mean over all classes), one-vs-rest
  macro ROC AUC (mean over the classes that have both positives and negatives), log loss and the
  confusion matrix. Threshold, average precision and ECE are binary-only and skipped.
- Metrics that are undefined for the data (ROC AUC or AP when only one class is present) are left
  out of the dict rather than written as NaN (metrics.json stays valid, numeric JSON).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

N_BINS = 10


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else 0.0


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) counts, rows = actual class, columns = predicted class."""
    idx = np.asarray(y_true, np.int64) * num_classes + np.asarray(y_pred, np.int64)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def normalize(probs: np.ndarray) -> np.ndarray:
    """float64 rows summing to 1 (a float32 softmax is off by ~1e-7)."""
    p = np.asarray(probs, np.float64)
    return p / p.sum(axis=1, keepdims=True)


def log_loss(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class; probabilities clipped to [eps, 1 - eps]."""
    p = normalize(probs)[np.arange(len(y_true)), np.asarray(y_true, np.int64)]
    eps = np.finfo(np.float64).eps
    return float(-np.mean(np.log(np.clip(p, eps, 1 - eps))))


def at_threshold(y_true: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, float]:
    """Binary metrics of the decision `score >= threshold` (y_true: 1 = positive)."""
    y = np.asarray(y_true).astype(bool)
    pred = np.asarray(score) >= threshold
    tp, fp = int(np.sum(pred & y)), int(np.sum(pred & ~y))
    fn, tn = int(np.sum(~pred & y)), int(np.sum(~pred & ~y))
    return {
        "threshold": float(threshold),
        "accuracy": _ratio(tp + tn, len(y)),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
    }


def calibration_bins(y_true: np.ndarray, score: np.ndarray,
                     n_bins: int = N_BINS) -> dict[str, np.ndarray]:
    """Non-empty equal-width bins: mean score, fraction positive and count in each."""
    score = np.asarray(score, np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ids = np.searchsorted(edges[1:-1], score)
    count = np.bincount(ids, minlength=n_bins)
    sums = np.bincount(ids, weights=score, minlength=n_bins)
    pos = np.bincount(ids, weights=np.asarray(y_true, np.float64), minlength=n_bins)
    keep = count > 0
    return {"mean_predicted": sums[keep] / count[keep],
            "fraction_positive": pos[keep] / count[keep], "count": count[keep]}


def expected_calibration_error(y_true: np.ndarray, score: np.ndarray,
                               n_bins: int = N_BINS) -> float:
    b = calibration_bins(y_true, score, n_bins)
    gap = np.abs(b["mean_predicted"] - b["fraction_positive"])
    return float(np.sum(b["count"] * gap) / np.sum(b["count"]))


def best_f1_threshold(y_true: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """The threshold that maximises F1 of `score >= threshold` (see the module docstring)."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(score, np.float64)
    if not y.any():
        raise ValueError("best_f1_threshold needs at least one positive example")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each distinct score
    tp = np.cumsum(y)[last]
    fp = np.cumsum(~y)[last]
    f1 = 2 * tp / (2 * tp + fp + (y.sum() - tp))
    below = np.r_[s[last[:-1] + 1], 0.0]  # the next lower distinct score
    thresholds = (s[last] + below) / 2
    thresholds[-1] = 0.0  # the lowest cut predicts every image positive
    i = int(np.argmax(f1))  # first maximum = highest threshold
    return {"best_f1_threshold": float(thresholds[i]), "best_f1": float(f1[i])}


def _both_classes(y: np.ndarray) -> bool:
    return 0 < int(np.sum(y)) < len(y)


def binary_report(y_true: np.ndarray, score: np.ndarray, probs: np.ndarray,
                  positive: int, threshold: float) -> dict[str, float]:
    """Every binary metric: thresholded ones at `threshold` plus the threshold-free ones.

    `y_true` holds class indices, `probs` the (N, 2) softmax, `score` = probs[:, positive].
    """
    y = np.asarray(y_true) == positive
    return {"n": len(y), **at_threshold(y, score, threshold), **threshold_free(y, score),
            "log_loss": log_loss(y_true, probs)}


def threshold_free(y_true: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """ROC AUC and average precision (only when both classes are present) and ECE of a binary
    problem (y_true: 1 = positive)."""
    y = np.asarray(y_true).astype(bool)
    out: dict[str, float] = {}
    if _both_classes(y):
        out["roc_auc"] = float(roc_auc_score(y, score))
        out["average_precision"] = float(average_precision_score(y, score))
    out["ece"] = expected_calibration_error(y, score)
    return out


def multiclass_report(y_true: np.ndarray, probs: np.ndarray,
                      classes: list[str]) -> dict[str, object]:
    """Accuracy, macro precision/recall/F1, one-vs-rest macro ROC AUC, log loss, confusion."""
    k = len(classes)
    y = np.asarray(y_true, np.int64)
    cm = confusion_matrix(y, np.argmax(probs, axis=1), k)
    tp = np.diag(cm).astype(np.float64)
    fp, fn = cm.sum(axis=0) - tp, cm.sum(axis=1) - tp
    precision = [_ratio(tp[i], tp[i] + fp[i]) for i in range(k)]
    recall = [_ratio(tp[i], tp[i] + fn[i]) for i in range(k)]
    f1 = [_ratio(2 * tp[i], 2 * tp[i] + fp[i] + fn[i]) for i in range(k)]
    out: dict[str, object] = {
        "n": len(y),
        "accuracy": _ratio(tp.sum(), len(y)),
        "precision_macro": float(np.mean(precision)),
        "recall_macro": float(np.mean(recall)),
        "f1_macro": float(np.mean(f1)),
    }
    p = normalize(probs)
    aucs = [roc_auc_score(y == i, p[:, i]) for i in range(k) if _both_classes(y == i)]
    if aucs:
        out["roc_auc_ovr_macro"] = float(np.mean(aucs))
    out["log_loss"] = log_loss(y, probs)
    out["confusion"] = {a: {b: int(cm[i, j]) for j, b in enumerate(classes)}
                        for i, a in enumerate(classes)}
    return out


def curves(y_true: np.ndarray, score: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """ROC (fpr, tpr), precision-recall (recall, precision) and calibration points of a binary
    problem (y_true: 1 = positive). ROC and PR are empty when only one class is present."""
    y = np.asarray(y_true).astype(bool)
    out: dict[str, dict[str, np.ndarray]] = {"roc": {"fpr": np.array([]), "tpr": np.array([])},
                                             "pr": {"recall": np.array([]),
                                                    "precision": np.array([])}}
    if _both_classes(y):
        fpr, tpr, _ = roc_curve(y, score)
        precision, recall, _ = precision_recall_curve(y, score)
        out["roc"] = {"fpr": fpr, "tpr": tpr}
        out["pr"] = {"recall": recall, "precision": precision}
    out["calibration"] = calibration_bins(y, score)
    return out
