"""The classifier: raw 0-255 RGB in, class probabilities out, ResNet50 inside.

The ResNet50 layers are built *flat* into the model (`input_tensor=`), not nested as a sub-model,
so `conv5_block3_out` is a top-level layer: tf-keras-vis and hand-written Grad-CAM can reach it.
The head is a softmax even for two classes, so ScoreCAM (which softmaxes the scores) is not
degenerate, and the crack probability is simply `probs[:, positive_class]`.

Only standard Keras layers: a saved model loads with plain `keras.saving.load_model` in a Python
that never imports crackxai. (Models saved before this held custom crackxai layers; they still
load through crackxai.models.io.load_model, see crackxai.models.legacy.)
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import keras
from keras import layers

from crackxai.core.errors import CrackxaiError, first_line
from crackxai.models.sources import IMAGENET, KERAS_SUFFIX

RESNET50_NOTOP_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
RESNET50_NOTOP_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + RESNET50_NOTOP_FILE
)
RESNET_STAGES = ("conv5_", "conv4_", "conv3_", "conv2_")  # top to bottom, for fine-tuning
LAST_CONV_LAYER = "conv5_block3_out"
OOD_LAYER = "conv2_block3_out"  # texture statistics for crackxai.models.ood


# keras.applications.resnet.preprocess_input ('caffe' mode): RGB -> BGR, minus this BGR mean.
IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)
PREPROCESS_LAYER = "resnet_preprocess"


def caffe_preprocess(x: keras.KerasTensor) -> keras.KerasTensor:
    """`keras.applications.resnet.preprocess_input` built from standard Keras layers only, so the
    saved model loads with plain `keras.saving.load_model` (no crackxai import, no custom class).

    RGB -> BGR: three Cropping2D slices of the channel axis (`channels_first` makes Cropping2D
    crop the last two axes, i.e. width and channels of an NHWC tensor) concatenated in reverse;
    pure data movement, unlike a 1x1 convolution or Dense permutation, which TF32 on a GPU would
    round. Then Rescaling(1, offset=-mean): x * 1.0 + (-mean) rounds exactly as preprocess_input's
    x + (-mean), so the output is bit-identical. All in float32, even under mixed precision: the
    mean subtraction on 0-255 values stays exact.
    """
    channels = [
        layers.Cropping2D(((0, 0), crop), data_format="channels_first", dtype="float32",
                          name=f"preprocess_{name}")(x)
        for name, crop in (("b", (2, 0)), ("g", (1, 1)), ("r", (0, 2)))
    ]
    bgr = layers.Concatenate(axis=-1, dtype="float32", name="preprocess_bgr")(channels)
    return layers.Rescaling(1.0, offset=[-m for m in IMAGENET_BGR_MEAN], dtype="float32",
                            name=PREPROCESS_LAYER)(bgr)


def imagenet_cache_path() -> Path:
    """Where Keras caches the ImageNet notop weights: $KERAS_HOME/models, else ~/.keras/models."""
    home = os.environ.get("KERAS_HOME") or Path.home() / ".keras"
    return Path(home) / "models" / RESNET50_NOTOP_FILE


def imagenet_reachable(host: str = "storage.googleapis.com", timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve_weights(weights: str | None) -> str | None:
    """What to pass to `ResNet50(weights=...)`, or the local .keras file to warm-start from;
    fails fast when the weights cannot be had. An MLflow model URI must have been fetched to a
    local file first (crackxai.tracking.registry.model_file)."""
    if weights is None or str(weights).lower() in ("null", "none", ""):
        return None
    if weights == IMAGENET:
        cache = imagenet_cache_path()
        if cache.is_file() or imagenet_reachable():
            return IMAGENET  # Keras loads from its cache or downloads into it
        raise CrackxaiError(
            f"model.weights=imagenet: the ImageNet weights are not cached at '{cache}' and "
            f"{RESNET50_NOTOP_URL} cannot be reached (no network). Place that file at that path, "
            "or use model.weights=null (random initialisation) or model.weights=/path/to/weights.h5."
        )
    path = Path(weights).expanduser()
    if not path.is_file():
        what = ("a saved crackxai model (.keras, e.g. models/model.keras of an earlier run) or an "
                "MLflow model URI (runs:/<run_id>/model, models:/<name>@<alias>) to warm-start "
                "from" if str(weights).endswith(KERAS_SUFFIX)
                else "a local ResNet50 (include_top=False) weights file")
        raise CrackxaiError(
            f"model.weights='{weights}': no such file. Give {what}, or use "
            "model.weights=imagenet or model.weights=null."
        )
    return str(path)


def warm_start(model: keras.Model, source_file: str, spec: str) -> int:
    """Copy every backbone layer's weights from the saved model `source_file` (matched by layer
    name); the head stays freshly initialised for the new classes. Returns the layers copied.
    `spec` is what the user gave (a path or URI), for the error message."""
    from crackxai.models.io import load_model  # io imports keras models: only when needed

    source = {layer.name: layer for layer in load_model(source_file).layers}
    missing, mismatched, copied = [], [], 0
    for layer in backbone_layers(model):
        if not layer.weights:
            continue
        other = source.get(layer.name)
        if other is None:
            missing.append(layer.name)
        elif [tuple(w.shape) for w in layer.weights] != [tuple(w.shape) for w in other.weights]:
            mismatched.append(f"{layer.name} {[tuple(w.shape) for w in other.weights]}")
        else:
            layer.set_weights(other.get_weights())
            copied += 1
    if missing or mismatched:
        found = "; ".join(part for part in (
            f"{len(missing)} backbone layer(s) missing (e.g. {', '.join(missing[:3])})"
            if missing else "",
            f"{len(mismatched)} with other shapes (e.g. {mismatched[0]})" if mismatched else "")
            if part)
        raise CrackxaiError(
            f"model.weights={spec}: '{source_file}' is not a crackxai ResNet50 model to warm-start "
            f"from: {found}. Give a model saved by crackxai's train stage (models/model.keras or "
            "runs:/<run_id>/model), or use model.weights=imagenet or model.weights=null."
        )
    return copied


def build_model(
    num_classes: int,
    image_size: int,
    weights: str | None = None,
    dropout: float = 0.2,
    seed: int = 42,
    bn_momentum: float = 0.9,
) -> keras.Model:
    """ResNet50 backbone + global average pooling + softmax head, preprocessing included.

    Standard Keras layers only (portable). Augmentation is not in the model: it lives in the
    training input pipeline (crackxai.models.training.make_dataset), so no call path (predict,
    `model(x)`, tf-keras-vis gradients) can ever augment."""
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = caffe_preprocess(inputs)
    resolved = resolve_weights(weights)
    warm = resolved is not None and resolved.endswith(KERAS_SUFFIX)
    try:
        backbone = keras.applications.ResNet50(include_top=False, input_tensor=x,
                                               weights=None if warm else resolved)
    except Exception as exc:  # download failure, unreadable or mismatching weights file
        if resolved is None:
            raise
        raise CrackxaiError(
            f"model.weights={weights}: cannot load ResNet50 weights ({first_line(exc)}). "
            "Give a Keras ResNet50 include_top=False weights file (e.g. "
            f"{RESNET50_NOTOP_FILE} or one written by `.save_weights()`), or use "
            "model.weights=null."
        ) from None
    if resolved is None:  # (a warm start keeps the source's statistics and momentum)
        # From random init the BatchNorm moving statistics must catch up within a few hundred
        # steps; Keras's default momentum 0.99 lags so far that validation accuracy collapses
        # to chance while training accuracy is high.
        for layer in backbone.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = bn_momentum
    x = layers.GlobalAveragePooling2D(name="avg_pool")(backbone.output)
    if dropout > 0:
        x = layers.Dropout(dropout, seed=seed, name="head_dropout")(x)
    # float32 output keeps softmax stable under mixed precision; float32/float64 follow the policy
    mixed = keras.mixed_precision.global_policy().name.startswith("mixed")
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32" if mixed else None,
                           name="predictions")(x)
    model = keras.Model(inputs, outputs, name="crackxai_resnet50")
    if warm:
        warm_start(model, resolved, weights)
    return model


def backbone_layers(model: keras.Model) -> list[keras.layers.Layer]:
    return [layer for layer in model.layers if layer.name.startswith(("conv", "pool1"))]


def set_backbone_trainable(model: keras.Model, unfreeze_stages: int | None) -> None:
    """None: whole backbone trainable; 0: frozen; k: only the top k ResNet stages trainable.

    BatchNorm layers in a partly frozen backbone stay frozen, i.e. in inference mode.
    """
    stages = RESNET_STAGES[: unfreeze_stages or 0]
    for layer in backbone_layers(model):
        if unfreeze_stages is None:
            layer.trainable = True
        elif isinstance(layer, layers.BatchNormalization):
            layer.trainable = False
        else:
            layer.trainable = layer.name.startswith(stages) if stages else False


