"""One shared, compiled, batched prediction function for every explainer that perturbs images.

SHAP, LIME, ScoreCAM and the faithfulness metrics each call the model thousands of times on
perturbed copies of an image. `model.predict` pays its per-call set-up every time (LIME calls it
per batch of 10), and an eager `model(x)` runs the ~180 ResNet50 layers op by op. Here the model
is traced once into a TensorFlow graph whose batch dimension is left open, so any batch size runs
the same graph without retracing or padding.

It always calls the model with `training=False`. The crackxai model holds no random layer (its
augmentation is in the training input pipeline), but other Keras classifiers may start with
RandomFlip or RandomTranslation, which an eager `model(x)` without `training=False` *applies*:
the reference notebooks' `lambda x: model(x).numpy()` then explains randomly augmented images.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import keras
import numpy as np
import tensorflow as tf


class Predictor:
    """Images (N, H, W, 3) float or uint8, 0-255 RGB (the model preprocesses itself) ->
    (N, C) float32 probabilities. `n_evals` counts the images passed to the model."""

    def __init__(self, model: keras.Model, batch_size: int = 64):
        self.model = model
        self.batch_size = int(batch_size)
        self.n_evals = 0
        self.num_classes = int(model.output_shape[-1])
        spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
        # autograph=False: the body has no Python control flow to convert
        self._fn = tf.function(lambda x: model(x, training=False), input_signature=[spec],
                               autograph=False)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = np.asarray(images)
        if x.ndim == 3:
            x = x[None]
        out = np.empty((len(x), self.num_classes), np.float32)
        for start in range(0, len(x), self.batch_size):
            batch = tf.convert_to_tensor(x[start:start + self.batch_size], tf.float32)
            out[start:start + len(batch)] = self._fn(batch).numpy()
        self.n_evals += len(x)
        return out


def _keys(x: np.ndarray) -> list[bytes]:
    """One digest per image of its bytes (and dtype): equal images, equal keys."""
    tag = x.dtype.str.encode()
    return [hashlib.blake2b(row.tobytes(), digest_size=16, person=tag[:16]).digest()
            for row in np.ascontiguousarray(x)]


class MemoPredictor(Predictor):
    """A Predictor that remembers, for the last `capacity` distinct images (keyed by a digest of
    their bytes), the output and the input of the model's last layer (the head's features). An
    image it has seen is not evaluated again, and `sharing_features(copy)` predicts for a copy of
    the model that differs in the last layer only from those features.

    Explainers that draw their perturbations from their seed (LIME's samples, Score-CAM's masked
    copies) ask for the same images again when they explain another class of the same image (the
    random-logit test) or the copy with a re-initialised head (the sanity check): those calls then
    cost no backbone pass. `n_evals` still counts every image asked for (the method's cost);
    `n_computed` the ones that went through the model. An output equals the plain Predictor's to
    float32 rounding (a batch of the remaining images may have another size)."""

    def __init__(self, model: keras.Model, batch_size: int = 64, capacity: int = 20_000):
        super().__init__(model, batch_size)
        self.capacity = int(capacity)
        self.n_computed = 0
        self._memory: OrderedDict[bytes, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        head = model.layers[-1]
        self.n_features = int(head.input.shape[-1])
        spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
        both = keras.Model(model.inputs, [head.input, model.outputs[0]])
        self._both = tf.function(lambda x: both(x, training=False), input_signature=[spec],
                                 autograph=False)

    def features(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the head's input (N, F), the output (N, C)) of images (N, H, W, 3), from memory where
        it has them; the rest in batches of `batch_size`. Does not count in n_evals."""
        x = np.asarray(images)
        if x.ndim == 3:
            x = x[None]
        keys = _keys(x)
        found = [self._memory.get(k) for k in keys]
        missing = [i for i, hit in enumerate(found) if hit is None]
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start:start + self.batch_size]
            feats, outs = self._both(tf.convert_to_tensor(x[chunk], tf.float32))
            for i, f, o in zip(chunk, feats.numpy(), outs.numpy(), strict=True):
                found[i] = (f, o)
                self._memory[keys[i]] = (f, o)
        self.n_computed += len(missing)
        for k in keys:
            if k in self._memory:
                self._memory.move_to_end(k)
        while len(self._memory) > self.capacity:
            self._memory.popitem(last=False)
        if not found:
            return (np.zeros((0, self.n_features), np.float32),
                    np.zeros((0, self.num_classes), np.float32))
        return np.stack([f for f, _ in found]), np.stack([o for _, o in found])

    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = np.asarray(images)
        _, out = self.features(x)
        self.n_evals += len(x) if x.ndim == 4 else 1
        return out.astype(np.float32, copy=False)

    def sharing_features(self, copy: keras.Model) -> HeadPredictor:
        """A predictor for `copy`, a model equal to this one below its last layer (e.g. with
        only that layer re-initialised): this predictor's features, `copy`'s last layer."""
        return HeadPredictor(self, copy)


class HeadPredictor:
    """Predictions of `copy` (equal to `base.model` but for its last layer) from the features
    `base` remembers or computes: the backbone runs once for both models."""

    def __init__(self, base: MemoPredictor, copy: keras.Model):
        self.base, self.model = base, copy
        self.batch_size = base.batch_size
        self.num_classes = int(copy.output_shape[-1])
        self.n_evals = 0
        head = copy.layers[-1]
        spec = tf.TensorSpec((None, *head.input.shape[1:]), head.input.dtype)  # float64 models too
        self._fn = tf.function(lambda f: head(f, training=False), input_signature=[spec],
                               autograph=False)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = np.asarray(images)
        feats, _ = self.base.features(x)
        self.n_evals += len(feats)
        if not len(feats):
            return np.zeros((0, self.num_classes), np.float32)
        return np.concatenate([self._fn(tf.convert_to_tensor(feats[i:i + self.batch_size]))
                               .numpy() for i in range(0, len(feats), self.batch_size)]
                              ).astype(np.float32, copy=False)
