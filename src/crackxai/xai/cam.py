"""The class-activation-map family through tf-keras-vis, and which feature map it reads.

    GradCam           Grad-CAM          (tf-keras-vis Gradcam)
    GradCamPlusPlus   Grad-CAM++        (tf-keras-vis GradcamPlusPlus)
    ScoreCam          Score-CAM         (tf-keras-vis Scorecam; max_N=-1: every feature map)
    FasterScoreCam    Faster Score-CAM  (tf-keras-vis Scorecam, the max_N maps of largest variance)

The maps are tf-keras-vis's output, upsampled to the input size and normalised to [0, 1] per
image. They read the last convolutional feature map of at least `cam_min_size` pixels a side
(`find_last_conv_layer`: `conv5_block3_out` for ResNet50 at 224 px, `conv3_block4_out` at 64 px;
the crackxai ResNet50 is built flat so tf-keras-vis can reach them), or the layer named by
`layer`. As in tf-keras-vis's own examples the softmax is made linear first (`ReplaceToLinear` on
a copy of the model, so gradients are those of the class logit) and the class is picked with
`CategoricalScore`. Score-CAM's masked images go through the shared predictor: it returns
log-probabilities, which tf-keras-vis softmaxes back into exactly the probabilities a
ReplaceToLinear copy would give, and they are counted in `predictor.n_evals`. Deterministic.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np

from crackxai.core.errors import CrackxaiError
from crackxai.xai import registry
from crackxai.xai.base import Explainer, Predict

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
# Model views for tf-keras-vis
# ---------------------------------------------------------------------------------------------

_LINEAR: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def linear_model(model: keras.Model) -> keras.Model:
    """A copy of `model` whose output activation is linear (tf-keras-vis ReplaceToLinear).

    Cloning a ResNet50 takes seconds, so the copy is made once per model and only its weights are
    copied again on each call (the explain stage calls once per image and method, and re-randomises
    weights for its sanity check, so the copy must never be stale)."""
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear

    linear = _LINEAR.get(model)
    if linear is None:
        linear = keras.models.clone_model(model)
        ReplaceToLinear()(linear)  # sets the output layer's activation; on the copy only
        _LINEAR[model] = linear
    for dst, src in zip(linear.weights, model.weights, strict=True):
        dst.assign(src)
    return linear


class _PredictorView(keras.Model):
    """The model's graph (tf-keras-vis reads the feature map from it) whose `predict` goes
    through the shared predictor, as log-probabilities: Scorecam softmaxes what predict returns,
    and softmax(log p) = p = softmax(logits), the ReplaceToLinear result, without a copy."""

    def __init__(self, model: keras.Model, predictor: Predict):
        super().__init__(model.inputs, model.outputs, name=f"{model.name}_view")
        self._crackxai_predictor = predictor

    def predict(self, x, batch_size=None, verbose=None, **kwargs):  # noqa: ANN001 - Keras API
        x = x[0] if isinstance(x, list | tuple) else x
        probs = np.asarray(self._crackxai_predictor(np.asarray(x)))
        return np.log(np.maximum(probs, np.finfo(np.float32).tiny))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        # tf-keras-vis passes a one-element list to a single-input Keras 3 model: harmless
        warnings.filterwarnings("ignore", message="The structure of `inputs`")
        yield


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

    def _feature_map_shape(self) -> tuple:
        shape = self.model.get_layer(self.layer).output.shape
        if tuple(shape[1:3]) == (1, 1):
            warnings.warn(f"Layer '{self.layer}' is 1x1 at this input size, so CAM maps are "
                          "constant. Use larger images or an earlier layer (explain.layer / "
                          "--layer).", stacklevel=4)
        return tuple(shape)

    def _where(self) -> dict[str, Any]:
        return dict(penultimate_layer=self.layer, seek_penultimate_conv_layer=False)


class GradCam(CamExplainer):
    """Grad-CAM (Selvaraju et al. 2017): feature maps weighted by their mean class gradient."""

    uses_gradients = True

    def _tool(self):  # noqa: ANN202 - a tf-keras-vis class
        from tf_keras_vis.gradcam import Gradcam

        return Gradcam

    def _explain(self, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
        from tf_keras_vis.utils.scores import CategoricalScore

        self._feature_map_shape()
        x = images.astype(np.float32)
        with _quiet():
            cams = self._tool()(linear_model(self.model))(CategoricalScore(targets.tolist()), x,
                                                         **self._where())
        return np.asarray(cams, np.float32).reshape(len(x), *x.shape[1:3])


class GradCamPlusPlus(GradCam):
    """Grad-CAM++ (Chattopadhyay et al. 2018): positive second-order gradient weights."""

    def _tool(self):  # noqa: ANN202 - a tf-keras-vis class
        from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus

        return GradcamPlusPlus


class ScoreCam(CamExplainer):
    """Score-CAM (Wang et al. 2020): each feature map weighted by the class score of the image
    masked with it; `max_N` > 0 keeps only the max_N maps of largest variance (-1: all)."""

    default_max_n = -1

    def __init__(self, model: keras.Model, predictor: Predict, *, seed: int = 0,
                 layer: str | None = None, cam_min_size: int = 1,
                 max_N: int | None = None):  # noqa: N803 - tf-keras-vis's own argument name
        super().__init__(model, predictor, seed=seed, layer=layer, cam_min_size=cam_min_size)
        self.max_n = self.default_max_n if max_N is None else int(max_N)

    def _explain(self, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
        from tf_keras_vis.scorecam import Scorecam
        from tf_keras_vis.utils.scores import CategoricalScore

        fmap = self._feature_map_shape()
        max_n = min(self.max_n, int(fmap[-1]))  # tf-keras-vis refuses max_N > channels
        x = images.astype(np.float32)
        batch_size = getattr(self.predictor, "batch_size", 32)
        with _quiet():
            scorecam = Scorecam(_PredictorView(self.model, self.predictor))
            # one image per call: Faster Score-CAM keeps the union of the images' top-N channels
            return np.concatenate([
                np.asarray(scorecam(CategoricalScore([int(t)]), x[i:i + 1], max_N=max_n,
                                    batch_size=batch_size, **self._where()), np.float32)
                .reshape(1, *x.shape[1:3])
                for i, t in enumerate(targets)])


class FasterScoreCam(ScoreCam):
    """Faster Score-CAM: Score-CAM over the `max_N` (default 10) maps of largest variance."""

    default_max_n = 10
