"""The class-activation-map family, tf-keras-vis's maps computed in full batches, and which
feature map it reads.

    GradCam           Grad-CAM          (tf-keras-vis Gradcam)
    GradCamPlusPlus   Grad-CAM++        (tf-keras-vis GradcamPlusPlus)
    ScoreCam          Score-CAM         (tf-keras-vis Scorecam; max_N=-1: every feature map)
    FasterScoreCam    Faster Score-CAM  (tf-keras-vis Scorecam, the max_N maps of largest variance)

The maps are tf-keras-vis's, upsampled to the input size and normalised to [0, 1] per image with
its own `zoom_factor` / `normalize`, but not through its classes: those build a new Keras model
and run it eagerly on every call, which costs more than the pass itself (Grad-CAM at 0.08 of a
compiled batched pass). Here one compiled tf.function per model and layer gives the feature map
and its gradient for a batch of images, and tf-keras-vis's formulas run on it; Score-CAM sends
the masked copies of all images through the shared predictor in full batches, keeping each
image's own top-`max_N` channels (tf-keras-vis would take the union over a batch). The maps
equal tf-keras-vis's one-image calls to float32 rounding (tests/test_cam_batched.py).

They read the last convolutional feature map of at least `cam_min_size` pixels a side
(`find_last_conv_layer`: `conv5_block3_out` for ResNet50 at 224 px, `conv3_block4_out` at 64 px;
the crackxai ResNet50 is built flat so the feature maps can be reached), or the layer named by
`layer`. As in tf-keras-vis's own examples the gradient methods make the softmax linear first
(`ReplaceToLinear`, so gradients are those of the class logit) and score the target class
(`CategoricalScore`). Score-CAM's weights are the target probabilities of the
masked images, taken as tf-keras-vis takes them (softmax of the log-probabilities; the masked
images are counted in `predictor.n_evals`). Deterministic.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from crackxai.core.errors import CrackxaiError
from crackxai.xai import registry
from crackxai.xai.base import Explainer, Predict
from crackxai.xai.batching import predict_stream

_POOLING = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)


# ---------------------------------------------------------------------------------------------
# Which feature map the CAMs read
# ---------------------------------------------------------------------------------------------


def _output_rank(layer: keras.layers.Layer) -> int | None:
    try:
        return len(layer.output.shape)
    except (AttributeError, ValueError):  # a layer called more than once, or never
        return None


def feature_map_layers(model: keras.Model) -> list[str]:
    """Names of the layers with a 4-D output (N, h, w, c), bottom to top, pooling excluded."""
    return [layer.name for layer in model.layers
            if not isinstance(layer, (keras.layers.InputLayer, *_POOLING))
            and _output_rank(layer) == 4]


def _spatial_size(layer: keras.layers.Layer) -> int:
    h, w = layer.output.shape[1:3]
    return min(h, w) if h is not None and w is not None else 1 << 30  # unknown: any size


def _non_cam_methods() -> str:
    return " or ".join(registry.names_where(is_cam=False))


def find_last_conv_layer(model: keras.Model, min_size: int = 1) -> str:
    """The last feature-map layer at least `min_size` x `min_size`, else the last one.

    With `min_size=7` (explain.cam_min_size) a ResNet50 at 224 px gives `conv5_block3_out` (7x7),
    as in the keras.io Grad-CAM example; at 64 px that map is 2x2, too coarse to point at a thin
    crack, so the CAMs read `conv3_block4_out` (8x8) instead. Pooling layers are skipped (they only
    lower the resolution: VGG16 gives `block5_conv3`, not `block5_pool`).
    """
    names = feature_map_layers(model)
    if not names:
        raise CrackxaiError(
            f"Model '{model.name}' has no layer with a 4-D (N, h, w, c) output, so there is no "
            f"convolutional feature map for Grad-CAM / Score-CAM. Use method {_non_cam_methods()}."
        )
    last = model.get_layer(names[-1])
    if isinstance(last, keras.Model):
        raise CrackxaiError(
            f"Model '{model.name}' has its convolutional backbone nested as a sub-model "
            f"('{last.name}'); tf-keras-vis cannot reach the feature maps inside it (\"Output ... "
            "is not connected to inputs\"). Build the model flat (keras.applications with "
            "input_tensor=..., as crackxai.models.resnet.build_model does), or use method "
            f"{_non_cam_methods()}."
        )
    large = [n for n in names if _spatial_size(model.get_layer(n)) >= min_size]
    return large[-1] if large else last.name


def resolve_layer(model: keras.Model, layer: str | None, min_size: int = 1) -> str:
    """`layer` checked against the model, or (None) `find_last_conv_layer(model, min_size)`."""
    if not layer:
        return find_last_conv_layer(model, min_size)
    names = [each.name for each in model.layers]
    if layer not in names or _output_rank(model.get_layer(layer)) != 4:
        valid = feature_map_layers(model)[-6:]
        why = "has no such layer" if layer not in names else "has no 4-D output for that layer"
        raise CrackxaiError(
            f"CAM layer '{layer}' (explain.layer / --layer): model '{model.name}' {why}. "
            f"Feature-map layers near the top: {', '.join(valid) or 'none'}. Use one of them, or "
            "leave the layer unset (null) to pick one automatically (explain.cam_min_size)."
        )
    return layer


# ---------------------------------------------------------------------------------------------
# Compiled passes over a batch
# ---------------------------------------------------------------------------------------------

_PASSES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {(kind, layer): fn}


def _compiled(model: keras.Model, kind: str, layer: str, build: Callable[[], Any]) -> Any:
    """The tf.function `build()` makes, traced once per model, kind and layer."""
    cache = _PASSES.setdefault(model, {})
    if (kind, layer) not in cache:
        cache[kind, layer] = build()
    return cache[kind, layer]


def _images_spec(model: keras.Model) -> tf.TensorSpec:
    return tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)  # any batch size, one trace


def gradient_pass(model: keras.Model, layer: str, images: np.ndarray, targets: np.ndarray,
                  batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(feature maps (N, h, w, c), their gradients of the target logits, the target logits (N,)):
    what tf-keras-vis's Gradcam and GradcamPlusPlus compute with ReplaceToLinear and
    CategoricalScore(targets), one compiled forward+backward pass per batch.

    ReplaceToLinear sets the output layer's activation to linear; tf-keras-vis does it on a clone
    of the model. Here it is set only while the pass is traced (into a concrete function, which
    never retraces), so the pass runs on the model's own variables: no copy to make or keep in
    step with the weights, and the model itself keeps its softmax."""

    def build() -> Any:
        view = keras.Model(model.inputs, [model.outputs[0], model.get_layer(layer).output])

        def run(x: tf.Tensor, target: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(x)  # as tf-keras-vis: the ops from the input on are recorded
                logits, fmap = view(x, training=False)
                score = tf.gather(logits, target, axis=1, batch_dims=1)
            return fmap, tape.gradient(score, fmap), score

        head = model.layers[-1]
        activation = head.activation
        head.activation = keras.activations.linear  # tf-keras-vis ReplaceToLinear, while tracing
        try:  # autograph=False: no Python control flow to convert
            return tf.function(run, autograph=False).get_concrete_function(
                _images_spec(model), tf.TensorSpec((None,), tf.int32))
        finally:
            head.activation = activation

    fn = _compiled(model, "gradient", layer, build)
    parts = [fn(tf.convert_to_tensor(images[i:i + batch_size], tf.float32),
                tf.convert_to_tensor(targets[i:i + batch_size], tf.int32))
             for i in range(0, len(images), batch_size)]
    return tuple(np.concatenate([np.asarray(p[k]) for p in parts]) for k in range(3))


def feature_pass(model: keras.Model, layer: str, images: np.ndarray,
                 batch_size: int = 64) -> np.ndarray:
    """The feature maps (N, h, w, c) of `layer`, one compiled forward pass per batch."""

    def build() -> Any:
        view = keras.Model(model.inputs, model.get_layer(layer).output)
        return tf.function(lambda x: view(x, training=False),
                           input_signature=[_images_spec(model)], autograph=False)

    fn = _compiled(model, "features", layer, build)
    return np.concatenate([np.asarray(fn(tf.convert_to_tensor(images[i:i + batch_size],
                                                              tf.float32)))
                           for i in range(0, len(images), batch_size)])


def expand(cams: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """CAMs (N, h, w) upsampled to the images' (N, H, W) and normalised to [0, 1] per image,
    exactly as tf-keras-vis's expand_cam and normalize_cam do (linear zoom of the batch)."""
    from scipy.ndimage import zoom
    from tf_keras_vis.utils import normalize, zoom_factor

    return normalize(zoom(cams, zoom_factor(cams.shape, shape), order=1))


def _linear_zoom_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float64 weights of scipy.ndimage.zoom(order=1, mode="nearest") along one
    axis: output i reads input position i * (n_in - 1) / (n_out - 1) (grid_mode=False),
    linearly between its two neighbours."""
    matrix = np.zeros((n_out, n_in))
    if n_in == 1 or n_out == 1:
        matrix[:, 0] = 1.0
        return matrix
    pos = np.arange(n_out) * ((n_in - 1) / (n_out - 1))
    low = np.minimum(np.floor(pos).astype(int), n_in - 2)
    frac = pos - low
    matrix[np.arange(n_out), low] = 1.0 - frac
    matrix[np.arange(n_out), low + 1] = frac
    return matrix


def upsample(maps: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Feature maps (h, w, k) -> (H, W, k) float32 through the (H, h) and (W, w) zoom matrices:
    scipy.ndimage.zoom(order=1, mode="nearest") to float32 rounding (it interpolates in float64
    too), as two matrix products instead of its 16-point spline per output value over all four
    axes (10x less CPU at 512 channels, 8x8 -> 64x64)."""
    up = np.einsum("Hh,hwk->Hwk", rows, maps.astype(np.float64), optimize=True)
    return np.einsum("Ww,Hwk->HWk", cols, up, optimize=True).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# The explainers
# ---------------------------------------------------------------------------------------------


class CamExplainer(Explainer):
    """A CAM: reads the feature map `layer` (None: the last one at least `cam_min_size` a side)."""

    is_cam = True

    def __init__(self, model: keras.Model, predictor: Predict, *, seed: int = 0,
                 layer: str | None = None, cam_min_size: int = 1):
        super().__init__(model, predictor, seed=seed)
        self.layer = resolve_layer(model, layer, cam_min_size)

    @classmethod
    def create(cls, model: keras.Model, predictor: Predict, *, seed: int = 0,
               layer: str | None = None, cam_min_size: int = 1, **settings: Any) -> Explainer:
        return cls(model, predictor, seed=seed, layer=layer, cam_min_size=cam_min_size,
                   **settings)

    @property
    def batch_size(self) -> int:
        """Images per compiled pass: the predictor's batch size (64 without one)."""
        return int(getattr(self.predictor, "batch_size", 64))

    def _feature_map_shape(self) -> tuple:
        shape = self.model.get_layer(self.layer).output.shape
        if tuple(shape[1:3]) == (1, 1):
            warnings.warn(f"Layer '{self.layer}' is 1x1 at this input size, so CAM maps are "
                          "constant. Use larger images or an earlier layer (explain.layer / "
                          "--layer).", stacklevel=4)
        return tuple(shape)


class GradCam(CamExplainer):
    """Grad-CAM (Selvaraju et al. 2017): feature maps weighted by their mean class gradient."""

    uses_gradients = True

    def _explain(self, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
        self._feature_map_shape()
        fmap, grads, score = gradient_pass(self.model, self.layer, images.astype(np.float32),
                                           targets, self.batch_size)
        return expand(self._cam(fmap, grads, score), images.shape)

    @staticmethod
    def _cam(fmap: np.ndarray, grads: np.ndarray, score: np.ndarray) -> np.ndarray:
        """tf-keras-vis Gradcam._calculate_cam with its default ReLU."""
        del score
        weights = np.mean(grads, axis=(1, 2), keepdims=True)
        return np.maximum(np.sum(fmap * weights, axis=-1), 0.0)


class GradCamPlusPlus(GradCam):
    """Grad-CAM++ (Chattopadhyay et al. 2018): positive second-order gradient weights."""

    @staticmethod
    def _cam(fmap: np.ndarray, grads: np.ndarray, score: np.ndarray) -> np.ndarray:
        """tf-keras-vis GradcamPlusPlus.__call__'s formulas with its default ReLU (exp of the
        logit as the score, alphas from the 2nd and 3rd powers of the gradient)."""
        first = np.exp(score).reshape(-1, 1, 1, 1) * grads
        second = first * grads
        third = second * grads
        global_sum = np.sum(fmap, axis=(1, 2), keepdims=True)
        denom = second * 2.0 + third * global_sum
        alphas = second / (denom + (second == 0.0))  # 0/1 where the 2nd derivative vanishes
        norm = np.sum(alphas, axis=(1, 2), keepdims=True)
        alphas = alphas / (norm + (norm == 0.0))
        weights = np.sum(np.maximum(first, 0.0) * alphas, axis=(1, 2), keepdims=True)
        return np.maximum(np.sum(weights * fmap, axis=-1), 0.0)


class ScoreCam(CamExplainer):
    """Score-CAM (Wang et al. 2020): each feature map weighted by the class score of the image
    masked with it; `max_N` > 0 keeps only the max_N maps of largest variance (-1: all)."""

    default_max_n = -1

    def __init__(self, model: keras.Model, predictor: Predict, *, seed: int = 0,
                 layer: str | None = None, cam_min_size: int = 1,
                 max_N: int | None = None):  # noqa: N803 - tf-keras-vis's own argument name
        super().__init__(model, predictor, seed=seed, layer=layer, cam_min_size=cam_min_size)
        self.max_n = self.default_max_n if max_N is None else int(max_N)

    def _channels(self, fmap: np.ndarray) -> np.ndarray:
        """Each image's channels (N, k), as tf-keras-vis's Scorecam picks them for one image:
        all, or the top max_N by spatial standard deviation (tf.math.top_k's order and ties)."""
        from tf_keras_vis.utils import get_num_of_steps_allowed

        n, channels = len(fmap), fmap.shape[-1]
        k = get_num_of_steps_allowed(channels if self.max_n <= 0
                                     else min(self.max_n, channels))  # it refuses more
        if k >= channels:
            return np.broadcast_to(np.arange(channels), (n, channels))
        std = tf.math.reduce_std(fmap, axis=(1, 2), keepdims=True)
        return np.asarray(tf.math.top_k(std, k)[1]).reshape(n, k)

    def _explain(self, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
        self._feature_map_shape()
        x = images.astype(np.float32)
        fmap = feature_pass(self.model, self.layer, x, self.batch_size)
        fmap = np.take_along_axis(fmap, self._channels(fmap)[:, None, None, :], axis=-1)
        rows, cols = (_linear_zoom_matrix(n_in, n_out)
                      for n_in, n_out in zip(fmap.shape[1:3], x.shape[1:3], strict=True))

        def masked_images() -> Iterator[np.ndarray]:
            for i in range(len(x)):  # one image's upsampled maps at a time: bounded memory
                up = upsample(fmap[i], rows, cols)  # (H, W, k)
                low, high = up.min(axis=(0, 1)), up.max(axis=(0, 1))
                masks = (up - low) / (high - low + keras.config.epsilon())  # (H, W, k)
                for c in range(0, masks.shape[-1], self.batch_size):
                    yield x[i] * np.moveaxis(masks[..., c:c + self.batch_size], -1, 0)[..., None]

        probs = predict_stream(self.predictor, masked_images(), self.batch_size)
        # tf-keras-vis softmaxes what the model predicts: here log p, so softmax(log p) = p
        logp = np.log(np.maximum(probs, np.finfo(np.float32).tiny))
        probs = np.asarray(tf.nn.softmax(logp), np.float32).reshape(len(x), fmap.shape[-1], -1)
        weights = np.take_along_axis(probs, targets.reshape(-1, 1, 1), axis=-1)[..., 0]
        cams = np.maximum(np.einsum("nhwk,nk->nhw", fmap, weights), 0.0)
        return expand(cams, x.shape)


class FasterScoreCam(ScoreCam):
    """Faster Score-CAM: Score-CAM over the `max_N` (default 10) maps of largest variance."""

    default_max_n = 10
