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
