"""crackxai.evaluation.metrics against scikit-learn on fixed predictions, and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import calibration
from sklearn import metrics as skm

from crackxai.evaluation import metrics as M

# Fixed binary predictions: 40 images, both classes, a few confident mistakes, some ties.
RNG = np.random.default_rng(0)
Y = RNG.integers(0, 2, 40)
SCORE = np.clip(np.round(0.35 * Y + RNG.uniform(0, 0.65, 40), 2), 0, 1)
PROBS = np.stack([1 - SCORE, SCORE], axis=1).astype(np.float32)


def test_binary_report_matches_sklearn():
    r = M.binary_report(Y, SCORE, PROBS, positive=1, threshold=0.5)
    pred = (SCORE >= 0.5).astype(int)
    assert r["n"] == 40
    assert r["accuracy"] == pytest.approx(skm.accuracy_score(Y, pred))
    assert r["precision"] == pytest.approx(skm.precision_score(Y, pred))
    assert r["recall"] == pytest.approx(skm.recall_score(Y, pred))
    assert r["specificity"] == pytest.approx(skm.recall_score(Y, pred, pos_label=0))
    assert r["f1"] == pytest.approx(skm.f1_score(Y, pred))
    assert r["roc_auc"] == pytest.approx(skm.roc_auc_score(Y, SCORE))
    assert r["average_precision"] == pytest.approx(skm.average_precision_score(Y, SCORE))
    assert r["log_loss"] == pytest.approx(skm.log_loss(Y, np.stack([1 - SCORE, SCORE], 1)), rel=1e-6)
    (tn, fp), (fn, tp) = skm.confusion_matrix(Y, pred)
    assert (r["tn"], r["fp"], r["fn"], r["tp"]) == (tn, fp, fn, tp)
    # calibration bins are sklearn's uniform bins, so ECE can be rebuilt from them
    frac, mean = calibration.calibration_curve(Y, SCORE, n_bins=10, strategy="uniform")
    bins = M.calibration_bins(Y, SCORE)
    np.testing.assert_allclose(bins["fraction_positive"], frac)
    np.testing.assert_allclose(bins["mean_predicted"], mean)
    assert r["ece"] == pytest.approx(np.sum(bins["count"] * np.abs(mean - frac)) / 40)


def test_positive_class_zero_and_threshold_rule():
    """The positive class can be index 0; `score >= threshold` is positive (ties included)."""
    y = np.array([0, 0, 1, 1])
    p0 = np.array([0.9, 0.5, 0.5, 0.1])
    probs = np.stack([p0, 1 - p0], axis=1)
    r = M.binary_report(y, p0, probs, positive=0, threshold=0.5)
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (2, 1, 0, 1)
    assert r["roc_auc"] == pytest.approx(skm.roc_auc_score(y == 0, p0))


def test_binary_report_single_class_leaves_out_undefined():
    y = np.ones(5, dtype=int)
    s = np.array([0.9, 0.8, 0.3, 0.7, 0.6])
    r = M.binary_report(y, s, np.stack([1 - s, s], axis=1), positive=1, threshold=0.5)
    assert "roc_auc" not in r and "average_precision" not in r
    assert r["recall"] == pytest.approx(0.8) and r["precision"] == 1.0
    c = M.curves(y, s)
    assert len(c["roc"]["fpr"]) == 0 and len(c["calibration"]["count"]) > 0


def test_ece_hand_case():
    y = np.array([0, 1, 1, 0, 1])
    p = np.array([0.05, 0.15, 0.12, 0.95, 0.85])
    # bins [0,0.1]: 0.05 vs 0 | (0.1,0.2]: 0.135 vs 1 (2 images) | (0.8,0.9]: 0.85 vs 1 | (0.9,1]: 0.95 vs 0
    expected = (0.05 + 2 * 0.865 + 0.15 + 0.95) / 5
    assert M.expected_calibration_error(y, p) == pytest.approx(expected) == pytest.approx(0.576)
    # a score on an inner edge goes to the lower bin; 1.0 goes to the last bin
    bins = M.calibration_bins(np.array([1, 0, 1]), np.array([0.2, 0.25, 1.0]))
    np.testing.assert_allclose(bins["mean_predicted"], [0.2, 0.25, 1.0])
    np.testing.assert_array_equal(bins["count"], [1, 1, 1])


def test_best_f1_threshold_hand_cases():
    # cuts: >=0.8 F1 2/3, >=0.4 F1 0.5, >=0.35 F1 0.8, all F1 2/3 -> midpoint of 0.35 and 0.1
    r = M.best_f1_threshold(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    assert r == pytest.approx({"best_f1_threshold": 0.225, "best_f1": 0.8})
    # a perfect separation: the midpoint of the gap
    r = M.best_f1_threshold(np.array([0, 1, 1]), np.array([0.2, 0.6, 0.9]))
    assert r == pytest.approx({"best_f1_threshold": 0.4, "best_f1": 1.0})
    # tie between ">= 0.9" (2/3) and "all positive" (2/3): the higher threshold wins
    r = M.best_f1_threshold(np.array([1, 0, 0, 1]), np.array([0.9, 0.8, 0.7, 0.6]))
    assert r == pytest.approx({"best_f1_threshold": 0.85, "best_f1": 2 / 3})
    # tied scores are one cut; the threshold reproduces the chosen F1
    y, s = np.array([1, 1, 0, 1, 0, 0]), np.array([0.7, 0.7, 0.7, 0.4, 0.2, 0.2])
    r = M.best_f1_threshold(y, s)
    assert r["best_f1"] == pytest.approx(M.at_threshold(y, s, r["best_f1_threshold"])["f1"])
    assert r["best_f1"] == pytest.approx(max(skm.f1_score(y, s >= t) for t in np.unique(s)))
    with pytest.raises(ValueError):
        M.best_f1_threshold(np.zeros(3), np.array([0.1, 0.2, 0.3]))


def test_best_f1_threshold_matches_exhaustive_search():
    r = M.best_f1_threshold(Y, SCORE)
    best = max(skm.f1_score(Y, t <= SCORE) for t in np.unique(SCORE))
    assert r["best_f1"] == pytest.approx(best)
    assert skm.f1_score(Y, r["best_f1_threshold"] <= SCORE) == pytest.approx(best)


def test_multiclass_report_matches_sklearn():
    rng = np.random.default_rng(1)
    y = np.r_[np.arange(3), rng.integers(0, 3, 57)]
    logits = rng.normal(size=(60, 3)) + 1.5 * np.eye(3)[y]
    probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    r = M.multiclass_report(y, probs, ["a", "b", "c"])
    pred = probs.argmax(1)
    kw = {"average": "macro", "labels": [0, 1, 2], "zero_division": 0}
    assert r["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert r["precision_macro"] == pytest.approx(skm.precision_score(y, pred, **kw))
    assert r["recall_macro"] == pytest.approx(skm.recall_score(y, pred, **kw))
    assert r["f1_macro"] == pytest.approx(skm.f1_score(y, pred, **kw))
    p64 = probs.astype(np.float64) / probs.astype(np.float64).sum(1, keepdims=True)
    assert r["roc_auc_ovr_macro"] == pytest.approx(
        skm.roc_auc_score(y, p64, multi_class="ovr", average="macro"))
    assert r["log_loss"] == pytest.approx(skm.log_loss(y, p64))
    cm = skm.confusion_matrix(y, pred)
    assert r["confusion"]["b"]["c"] == cm[1, 2] and r["confusion"]["a"]["a"] == cm[0, 0]
    assert "ece" not in r and "average_precision" not in r


def test_curves_match_sklearn():
    c = M.curves(Y, SCORE)
    fpr, tpr, _ = skm.roc_curve(Y, SCORE)
    precision, recall, _ = skm.precision_recall_curve(Y, SCORE)
    np.testing.assert_allclose(c["roc"]["fpr"], fpr)
    np.testing.assert_allclose(c["roc"]["tpr"], tpr)
    np.testing.assert_allclose(c["pr"]["precision"], precision)
    np.testing.assert_allclose(c["pr"]["recall"], recall)
