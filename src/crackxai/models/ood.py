"""Out-of-distribution detection: inputs unlike the training data are flagged, not scored.

A softmax classifier has to answer with some class: the crack model says "Positive 1.0000" for
random noise and for an all-black frame. The detector here measures how far an image lies from
the training images in the model's own feature space and flags it when that distance exceeds a
threshold set on the validation split.

The features are the texture statistics of a mid-level feature map: the per-channel spatial mean
and standard deviation of `conv2_block3_out` (512 numbers for ResNet50). Measured on a model
trained on the real crack images, the global-average-pooling output (what the head reads) had
collapsed to the class decision: Gaussian grey noise, brick, grass and text passed there, and
7.7% of the real test images were flagged at the 95% threshold; these statistics flag all of
them and 4.3% of the test images (README, "Out-of-distribution inputs").

The distance is the Mahalanobis distance to the nearest class mean under one covariance shared by
the classes (Lee et al. 2018, "A simple unified framework for detecting out-of-distribution
samples"), estimated with Ledoit-Wolf shrinkage. The covariance is stored as its top eigenvectors
and eigenvalues plus one variance for the remaining directions (the probabilistic-PCA form), so the
file stays small whatever the feature size. The threshold is the conformal quantile of the
validation distances (the ceil((n+1)q)-th smallest): an unseen image from the training
distribution then passes with probability at least q, which a plain np.quantile does not promise.

A blank frame (no texture at all) sits at the centre of the smooth training surfaces in any
feature space, so it is flagged by its own rule: pixel standard deviation below half the lowest
one among the training images.

    extractor = FeatureExtractor(model)              # one compiled pass: probabilities + features
    detector = fit_detector(train_f, val_f, 0.99, train_labels, layer=extractor.layer)
    detector.save(detector_path("models/model.keras"))  # models/model.ood.npz
    detector = load_detector_for("models/model.keras", model)   # None (warned) when there is none
    probs, feats = extractor(images); flagged = detector.flags(feats)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from crackxai.core.errors import CrackxaiError, first_line
from crackxai.core.io import atomic_path
from crackxai.core.paths import ood_file_for
from crackxai.models.resnet import OOD_LAYER

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
OOD_LABEL = "out of distribution"
# Enough directions to hold nearly all of the feature variance; the rest share one variance.
MAX_COMPONENTS = 256


def detector_path(model_path: str | Path) -> Path:
    """The detector file saved beside a model file: models/model.keras -> models/model.ood.npz."""
    return ood_file_for(model_path)


def feature_layer(model: keras.Model, name: str = OOD_LAYER) -> keras.layers.Layer:
    """The feature map whose texture statistics the detector reads."""
    try:
        return model.get_layer(name)
    except ValueError:
        raise CrackxaiError(
            f"Model '{model.name}' has no layer '{name}', whose feature map the "
            "out-of-distribution detector reads. It works with models built by "
            "crackxai.models.resnet (`dvc repro train`).") from None


def weights_fingerprint(model: keras.Model) -> str:
    """sha256 of the model's weights: the same after a save/load or an MLflow round trip, so a
    detector left beside another model's file is recognised."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()


class FeatureExtractor:
    """Images (N, H, W, 3), 0-255 RGB -> (probabilities (N, C), features (N, 2F + 1)), both
    float32, from one compiled forward pass per batch (traced once, open batch dimension, as
    crackxai.models.predictor.Predictor). The features are the F channels' spatial means, their
    spatial standard deviations, and last the image's pixel standard deviation. Accepts a
    memory-mapped array: one batch is read at a time."""

    def __init__(self, model: keras.Model, batch_size: int = 64, layer: str = OOD_LAYER):
        self.layer = feature_layer(model, layer).name
        self.batch_size = int(batch_size)
        self.num_classes = int(model.output_shape[-1])
        self.num_features = 2 * int(model.get_layer(self.layer).output.shape[-1]) + 1
        both = keras.Model(model.inputs, [model.output, model.get_layer(self.layer).output])

        def run(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            probs, fmap = both(x, training=False)
            fmap = tf.cast(fmap, tf.float32)
            pixel_std = tf.math.reduce_std(x, axis=[1, 2, 3])[:, None]
            return probs, tf.concat([tf.reduce_mean(fmap, axis=[1, 2]),
                                     tf.math.reduce_std(fmap, axis=[1, 2]), pixel_std], axis=1)

        spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
        self._fn = tf.function(run, input_signature=[spec], autograph=False)

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = images if np.ndim(images) == 4 else np.asarray(images)[None]
        probs = np.empty((len(x), self.num_classes), np.float32)
        feats = np.empty((len(x), self.num_features), np.float32)
        for start in range(0, len(x), self.batch_size):
            batch = tf.convert_to_tensor(np.asarray(x[start:start + self.batch_size]), tf.float32)
            p, f = self._fn(batch)
            probs[start:start + len(batch)] = p.numpy()
            feats[start:start + len(batch)] = f.numpy()
        return probs, feats


@dataclass(frozen=True)
class OodDetector:
    """Mahalanobis distance to the nearest class mean (shared covariance) and its threshold, and
    the blank-frame rule. Features as FeatureExtractor gives them: D statistics, then the pixel
    standard deviation."""

    means: np.ndarray  # (K, D) class means of the training features
    components: np.ndarray  # (D, k) top eigenvectors of the shared covariance
    variances: np.ndarray  # (k,) their eigenvalues
    residual_variance: float  # the mean eigenvalue of the remaining D - k directions
    threshold: float  # distances above it are flagged
    quantile: float  # the share of the validation split that passes (at least)
    min_pixel_std: float = 0.0  # below it an image is a blank frame
    layer: str = ""  # the feature map the statistics come from
    fingerprint: str = ""  # weights_fingerprint of the model it was fit on ("" = unchecked)

    @property
    def num_features(self) -> int:
        return int(self.means.shape[1]) + 1

    def _checked(self, features: np.ndarray) -> np.ndarray:
        f = np.asarray(features, np.float64)
        if f.ndim != 2 or f.shape[1] != self.num_features:
            raise CrackxaiError(
                f"Features of shape {f.shape} do not fit this detector ({self.num_features} "
                "features per image): it was fit on another model. Refit it by retraining "
                "(`dvc repro train`).")
        return f

    def blank(self, features: np.ndarray) -> np.ndarray:
        """(N,) True for a blank frame: almost no pixel variation."""
        return self._checked(features)[:, -1] < self.min_pixel_std

    def distance(self, features: np.ndarray) -> np.ndarray:
        """(N,) Mahalanobis distance of each feature vector to the nearest class mean."""
        f = self._checked(features)[:, :-1]
        best = np.full(len(f), np.inf)
        for mean in self.means.astype(np.float64):
            z = f - mean
            proj = z @ self.components
            inside = np.sum(proj**2 / self.variances, axis=1)
            rest = np.maximum(np.sum(z**2, axis=1) - np.sum(proj**2, axis=1), 0.0)
            best = np.minimum(best, inside + rest / self.residual_variance)
        return np.sqrt(best)

    def flags(self, features: np.ndarray) -> np.ndarray:
        """(N,) True where an image is out of distribution: too far, or a blank frame."""
        return (self.distance(features) > self.threshold) | self.blank(features)

    def save(self, path: str | Path) -> None:
        """Atomically, as a compressed .npz with a format version."""
        meta = {"version": FORMAT_VERSION, "threshold": self.threshold, "quantile": self.quantile,
                "residual_variance": self.residual_variance, "layer": self.layer,
                "min_pixel_std": self.min_pixel_std,
                "fingerprint": self.fingerprint}
        with atomic_path(path, suffix=".npz") as tmp, tmp.open("wb") as fh:
            np.savez_compressed(fh, meta=np.array(json.dumps(meta)),
                                means=self.means.astype(np.float32),
                                components=self.components.astype(np.float32),
                                variances=self.variances.astype(np.float64))

    @classmethod
    def load(cls, path: str | Path) -> OodDetector:
        """Read a saved detector; a missing, corrupt or foreign file is a one-paragraph error."""
        path = Path(path)
        fix = f"Restore it with `dvc checkout {path}` or refit it by retraining (`dvc repro train`)."
        if not path.is_file():
            raise CrackxaiError(f"Out-of-distribution detector '{path}' not found. {fix}")
        try:
            with np.load(path, allow_pickle=False) as npz:
                meta = json.loads(str(npz["meta"]))
                arrays = {k: np.array(npz[k]) for k in ("means", "components", "variances")}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile,
                json.JSONDecodeError) as exc:
            raise CrackxaiError(f"Out-of-distribution detector '{path}' is corrupt or not a "
                                f"detector file ({first_line(exc)}). {fix}") from None
        if not isinstance(meta, dict) or meta.get("version") != FORMAT_VERSION:
            version = meta.get("version") if isinstance(meta, dict) else None
            raise CrackxaiError(f"Out-of-distribution detector '{path}' has format version "
                                f"{version!r}; this crackxai reads version {FORMAT_VERSION}. {fix}")
        try:
            detector = cls(arrays["means"], arrays["components"], arrays["variances"],
                           float(meta["residual_variance"]), float(meta["threshold"]),
                           float(meta["quantile"]), float(meta["min_pixel_std"]),
                           str(meta.get("layer", "")),
                           str(meta.get("fingerprint", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise CrackxaiError(f"Out-of-distribution detector '{path}' lacks a field "
                                f"({first_line(exc)}). {fix}") from None
        m, c, v = detector.means, detector.components, detector.variances
        if not (m.ndim == 2 and c.ndim == 2 and v.ndim == 1 and c.shape == (m.shape[1], len(v))
                and np.all(v > 0) and detector.residual_variance > 0
                and math.isfinite(detector.threshold)):
            raise CrackxaiError(f"Out-of-distribution detector '{path}' holds inconsistent "
                                f"arrays (means {m.shape}, components {c.shape}, variances "
                                f"{v.shape}). {fix}")
        return detector


def conformal_threshold(distances: np.ndarray, quantile: float) -> float:
    """The ceil((n+1)q)-th smallest of n distances (the largest when that exceeds n): a new
    exchangeable distance is at most this with probability >= q (split conformal)."""
    d = np.sort(np.asarray(distances, np.float64))
    if len(d) == 0:
        raise CrackxaiError("Cannot set an out-of-distribution threshold on an empty validation "
                            "split: rerun preprocess with more data.")
    k = min(math.ceil((len(d) + 1) * quantile), len(d))
    return float(d[k - 1])


def fit_detector(train_features: np.ndarray, val_features: np.ndarray, quantile: float = 0.95,
                 train_labels: np.ndarray | None = None, layer: str = "", fingerprint: str = "",
                 max_components: int = MAX_COMPONENTS) -> OodDetector:
    """Class means and a shared Ledoit-Wolf covariance from the training features (one class
    when `train_labels` is None), threshold from the validation features, blank-frame floor at
    half the lowest training pixel standard deviation."""
    from sklearn.covariance import LedoitWolf

    x = np.asarray(train_features, np.float64)
    labels = np.zeros(len(x), np.int64) if train_labels is None else np.asarray(train_labels)
    if x.ndim != 2 or len(x) < 2 or len(labels) != len(x) or x.shape[1] < 2:
        raise CrackxaiError(f"Cannot fit an out-of-distribution detector on {x.shape} training "
                            f"features with {len(labels)} labels: it needs at least two images.")
    min_pixel_std = float(x[:, -1].min()) / 2
    x = x[:, :-1]
    classes = np.unique(labels)
    means = np.stack([x[labels == c].mean(axis=0) for c in classes])
    residuals = x - means[np.searchsorted(classes, labels)]
    cov = LedoitWolf(assume_centered=True).fit(residuals).covariance_
    eigvals, eigvecs = np.linalg.eigh(cov)  # ascending
    eigvals = np.maximum(eigvals[::-1], 1e-12)
    eigvecs = eigvecs[:, ::-1]
    k = min(max_components, x.shape[1] - 1)
    # the remaining directions share their mean variance: the trace is kept
    residual = float(eigvals[k:].mean())
    provisional = OodDetector(means, eigvecs[:, :k], eigvals[:k], residual, math.inf, quantile,
                              min_pixel_std, layer, fingerprint)
    threshold = conformal_threshold(provisional.distance(val_features), quantile)
    return OodDetector(means.astype(np.float32), eigvecs[:, :k].astype(np.float32), eigvals[:k],
                       residual, threshold, quantile, min_pixel_std, layer, fingerprint)


def fit_for_model(model: keras.Model, train_images: np.ndarray, train_labels: np.ndarray,
                  val_images: np.ndarray, quantile: float, batch_size: int = 64) -> OodDetector:
    """Fit a detector for a trained model: one streamed forward pass over train and val."""
    extractor = FeatureExtractor(model, batch_size)
    _, train_features = extractor(train_images)
    _, val_features = extractor(val_images)
    return fit_detector(train_features, val_features, quantile, train_labels,
                        layer=extractor.layer, fingerprint=weights_fingerprint(model))


def load_detector_for(model_path: str | Path, model: keras.Model | None = None
                      ) -> OodDetector | None:
    """The detector saved beside `model_path`, or None (with a warning) when there is none, as for
    models trained before detectors existed. With `model`, a detector fit on other weights is
    ignored (with a warning) too. A corrupt file is a CrackxaiError."""
    path = detector_path(model_path)
    if not path.is_file():
        logger.warning(f"no out-of-distribution detector beside the model ({path} not found): "
                       "every image gets a class, even noise or a photo of something else. "
                       "Retrain (`dvc repro train`) to get one.")
        return None
    detector = OodDetector.load(path)
    if (model is not None and detector.fingerprint
            and detector.fingerprint != weights_fingerprint(model)):
        logger.warning(f"the out-of-distribution detector {path} was fit on other weights than "
                       f"{model_path}: ignored. Restore the matching pair with `dvc checkout` or "
                       "retrain (`dvc repro train`).")
        return None
    return detector
