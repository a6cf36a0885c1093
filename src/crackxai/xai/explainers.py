"""The explanation methods: one call, `explain(method, ...)`, gives (N, H, W) attribution maps.

    shap              SHAP Partition explainer over pixels (shap.maskers.Image: inpaint_telea,
                      inpaint_ns or blur(k,k)); the map is the SHAP value for the target class
                      summed over the 3 channels (signed: > 0 raises the class score).
    gradcam           Grad-CAM          (tf-keras-vis Gradcam)
    gradcam_pp        Grad-CAM++        (tf-keras-vis GradcamPlusPlus)
    scorecam          Score-CAM         (tf-keras-vis Scorecam, every feature map)
    faster_scorecam   Faster Score-CAM  (tf-keras-vis Scorecam, the max_N maps of largest variance)
    lime              LIME (lime_image): each pixel gets the signed weight of its superpixel.

Larger values are always more evidence FOR the target class. CAM maps are tf-keras-vis's output,
upsampled to the input size and normalised to [0, 1] per image.

CAMs read the last convolutional feature map of at least `explain.cam_min_size` (7) pixels a side
(`find_last_conv_layer`: `conv5_block3_out` for ResNet50 at 224 px, `conv3_block4_out` at the
default 64 px; the crackxai ResNet50 is built flat so tf-keras-vis can reach them), or the layer
named by `explain.layer`. As in tf-keras-vis's own examples the softmax is made linear first
(`ReplaceToLinear` on a copy of the model, so gradients are those of the class logit) and the class
is picked with `CategoricalScore`. Score-CAM's masked images go through the shared Predictor: it
returns log-probabilities, which tf-keras-vis softmaxes back into exactly the probabilities a
ReplaceToLinear copy would give, and they are counted in `predictor.n_evals`.

Reproducible: SHAP breaks ties with NumPy's global RNG, so it is seeded before each image (and
restored after); LIME samples with `LimeImageExplainer(random_state=seed)` and its segmentation
gets `random_seed=seed`. Every image uses the same seed, so an image's map does not depend on the
other images in the call. The CAMs are deterministic.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
import weakref
from collections.abc import Iterator, Sequence

import keras
import numpy as np

from crackxai.config import EXPLAIN_METHODS, ExplainConfig, parse_blur_kernel
from crackxai.core.errors import CrackxaiError
from crackxai.models.predictor import Predictor

METHODS = EXPLAIN_METHODS
CAM_METHODS = ("gradcam", "gradcam_pp", "scorecam", "faster_scorecam")
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
            "convolutional feature map for Grad-CAM / Score-CAM. Use method shap or lime."
        )
    last = model.get_layer(names[-1])
    if isinstance(last, keras.Model):
        raise CrackxaiError(
            f"Model '{model.name}' has its convolutional backbone nested as a sub-model "
            f"('{last.name}'); tf-keras-vis cannot reach the feature maps inside it (\"Output ... "
            "is not connected to inputs\"). Build the model flat (keras.applications with "
            "input_tensor=..., as crackxai.models.resnet.build_model does), or use method shap or lime."
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
# CAMs through tf-keras-vis
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
    through the shared Predictor, as log-probabilities: Scorecam softmaxes what predict returns,
    and softmax(log p) = p = softmax(logits), the ReplaceToLinear result, without a copy."""

    def __init__(self, model: keras.Model, predictor: Predictor):
        super().__init__(model.inputs, model.outputs, name=f"{model.name}_view")
        self._crackxai_predictor = predictor

    def predict(self, x, batch_size=None, verbose=None, **kwargs):  # noqa: ANN001 - Keras API
        x = x[0] if isinstance(x, list | tuple) else x
        probs = self._crackxai_predictor(np.asarray(x))
        return np.log(np.maximum(probs, np.finfo(np.float32).tiny))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        # tf-keras-vis passes a one-element list to a single-input Keras 3 model: harmless
        warnings.filterwarnings("ignore", message="The structure of `inputs`")
        yield


def _cams(method: str, model: keras.Model, predictor: Predictor, images: np.ndarray,
          targets: np.ndarray, cfg: ExplainConfig, layer: str) -> np.ndarray:
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.scorecam import Scorecam
    from tf_keras_vis.utils.scores import CategoricalScore

    fmap = model.get_layer(layer).output.shape
    if tuple(fmap[1:3]) == (1, 1):
        warnings.warn(f"Layer '{layer}' is 1x1 at this input size, so CAM maps are constant. "
                      "Use larger images or an earlier layer (explain.layer / --layer).",
                      stacklevel=3)
    x = images.astype(np.float32)
    where = dict(penultimate_layer=layer, seek_penultimate_conv_layer=False)
    with _quiet():
        if method in ("gradcam", "gradcam_pp"):
            cls = Gradcam if method == "gradcam" else GradcamPlusPlus
            cams = cls(linear_model(model))(CategoricalScore(targets.tolist()), x, **where)
            return np.asarray(cams, np.float32).reshape(len(x), *x.shape[1:3])
        max_n = cfg.scorecam.max_N if method == "scorecam" else cfg.faster_scorecam.max_N
        max_n = min(max_n, int(fmap[-1]))  # tf-keras-vis refuses max_N > channels
        scorecam = Scorecam(_PredictorView(model, predictor))
        # one image per call: Faster Score-CAM keeps the union of the images' top-N channels
        return np.concatenate([
            np.asarray(scorecam(CategoricalScore([int(t)]), x[i:i + 1], max_N=max_n,
                                batch_size=predictor.batch_size, **where), np.float32)
            .reshape(1, *x.shape[1:3])
            for i, t in enumerate(targets)])


# ---------------------------------------------------------------------------------------------
# SHAP and LIME, one image at a time
# ---------------------------------------------------------------------------------------------


_PARTITION_TREES: dict[tuple[int, ...], np.ndarray] = {}


@functools.cache
def _masker_class() -> type:
    """shap.maskers.Image, its fixed pixel partition tree built by the plain-Python form of shap's
    own numba kernel (the same tree) and kept per image shape: compiling that kernel costs 15-45 s
    in every new process, for a tree that takes 0.2 s to build."""
    import shap
    from shap.maskers import _image

    kernel = getattr(getattr(_image, "_jit_build_partition_tree", None), "py_func", None)

    class ImageMasker(shap.maskers.Image):
        def build_partition_tree(self) -> None:
            key = tuple(int(v) for v in self.input_shape)
            if kernel is None or len(key) != 3:  # another shap version: its own way
                return super().build_partition_tree()
            if key not in _PARTITION_TREES:
                h, w, c = key
                tree = np.zeros((h * w * c - 1, 4))
                kernel(0, h, 0, w, 0, c, w, c, h * w * c, tree, [(0, 0, h, 0, w, 0, c, -1, False)])
                _PARTITION_TREES[key] = tree
            self.clustering = _PARTITION_TREES[key].copy()

    return ImageMasker


def shap_explanation(predictor: Predictor, image: np.ndarray, target: int, cfg: ExplainConfig,
                     seed: int, class_names: Sequence[str] | None = None):  # -> shap.Explanation
    """SHAP Partition explanation of one image (H, W, 3) for one class: values (1, H, W, 3, 1)."""
    import shap

    blur = parse_blur_kernel(cfg.shap.masker)
    masker = _masker_class()(f"blur({blur[0]},{blur[1]})" if blur else cfg.shap.masker,
                             image.shape)
    names = list(class_names) if class_names is not None else None
    explainer = shap.Explainer(predictor, masker, output_names=names, algorithm="partition")
    state = np.random.get_state()
    np.random.seed(seed)  # Partition breaks ties with np.random.randn()
    try:
        return explainer(image[None].astype(np.float32), max_evals=cfg.shap.max_evals,
                         batch_size=cfg.shap.batch_size, outputs=[int(target)], silent=True)
    finally:
        np.random.set_state(state)


def shap_map(explanation) -> np.ndarray:  # noqa: ANN001 - shap.Explanation
    return np.asarray(explanation.values[0, ..., 0], np.float32).sum(axis=-1)


def lime_explanation(predictor: Predictor, image: np.ndarray, target: int, cfg: ExplainConfig,
                     seed: int):  # -> lime.lime_image.ImageExplanation
    """LIME explanation of one image (H, W, 3) for one class, every superpixel weighted (the
    reference notebooks' explain_instance; num_features / positive_only / hide_rest only choose
    what `get_image_and_mask` shows)."""
    from lime import lime_image
    from lime.wrappers.scikit_image import SegmentationAlgorithm

    lc, seg = cfg.lime, cfg.lime.segmentation
    segmenter = SegmentationAlgorithm(seg.algo, kernel_size=seg.kernel_size, max_dist=seg.max_dist,
                                      ratio=seg.ratio, random_seed=seed)
    explainer = lime_image.LimeImageExplainer(random_state=seed)
    return explainer.explain_instance(
        np.asarray(image), predictor, labels=(int(target),), top_labels=None,
        hide_color=lc.hide_color, num_samples=lc.num_samples, batch_size=lc.batch_size,
        segmentation_fn=segmenter)


def lime_map(explanation, target: int) -> np.ndarray:  # noqa: ANN001 - lime ImageExplanation
    weights = np.zeros(int(explanation.segments.max()) + 1, np.float32)
    for segment, weight in explanation.local_exp[int(target)]:
        weights[segment] = weight
    return weights[explanation.segments]


# ---------------------------------------------------------------------------------------------
# The one entry point
# ---------------------------------------------------------------------------------------------


def explain(method: str, model: keras.Model, predictor: Predictor, images: np.ndarray,
            targets: np.ndarray, cfg: ExplainConfig, seed: int,
            layer: str | None = None) -> np.ndarray:
    """(N, H, W) float32 attribution maps at input resolution for images (N, H, W, 3) uint8 RGB;
    larger = more evidence FOR `targets[i]`. Deterministic for a seed. `layer` (else
    `cfg.layer`, else the last feature map of at least `cfg.cam_min_size` pixels a side) is the
    CAM methods' layer."""
    if method not in METHODS:
        raise CrackxaiError(f"Unknown explanation method '{method}'. Choose from: "
                            f"{', '.join(METHODS)}.")
    images = np.asarray(images)
    targets = np.asarray(targets).astype(int).reshape(-1)
    if images.ndim != 4 or images.shape[-1] != 3 or len(targets) != len(images):
        raise CrackxaiError(f"explain() needs images (N, H, W, 3) and N targets; got images "
                            f"{images.shape} and {len(targets)} targets.")
    bad = [int(t) for t in targets if not 0 <= t < predictor.num_classes]
    if bad:
        raise CrackxaiError(f"Target class {bad[0]} does not exist: the model has "
                            f"{predictor.num_classes} classes (0..{predictor.num_classes - 1}). "
                            "Fix explain.target / --target.")
    if method == "shap":
        maps = [shap_map(shap_explanation(predictor, im, t, cfg, seed))
                for im, t in zip(images, targets, strict=True)]
    elif method == "lime":
        maps = [lime_map(lime_explanation(predictor, im, t, cfg, seed), t)
                for im, t in zip(images, targets, strict=True)]
    else:
        maps = _cams(method, model, predictor, images, targets, cfg,
                     resolve_layer(model, layer or cfg.layer, cfg.cam_min_size))
    return np.nan_to_num(np.asarray(maps, np.float32)).reshape(images.shape[:3])
