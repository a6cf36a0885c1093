"""What `model.weights` may name; import-light, so the config layer can check the value.

    imagenet                  Keras's ImageNet ResNet50 weights (cached or downloaded)
    null                      random initialisation
    /path/to/model.keras      warm start from a saved crackxai model: its backbone, a new head
    runs:/<run_id>/model      the same, from an MLflow model (fetched by tracking.registry)
    models:/<name>@<alias>    ... or models:/<name>/<version>
    /path/to/weights.h5       a Keras ResNet50 include_top=False weights file
"""

from __future__ import annotations

IMAGENET = "imagenet"
MODEL_URI_SCHEMES = ("runs:/", "models:/")
KERAS_SUFFIX = ".keras"
WEIGHTS_SUFFIX = ".h5"  # also .weights.h5 (what `.save_weights()` writes)
ALLOWED = ("imagenet, null (random initialisation), a saved model file ending in .keras or an "
           "MLflow model URI (runs:/<run_id>/model, models:/<name>/<version>, "
           "models:/<name>@<alias>) to warm-start the backbone from, or a ResNet50 "
           "include_top=False weights file ending in .h5")


def is_model_uri(spec: str) -> bool:
    return str(spec).startswith(MODEL_URI_SCHEMES)


def is_warm_start(spec: str | None) -> bool:
    """A saved model (file or URI) whose backbone the new model starts from."""
    return spec is not None and (is_model_uri(spec) or str(spec).endswith(KERAS_SUFFIX))


def valid_spec(spec: str | None) -> bool:
    if spec is None:
        return True
    s = str(spec).strip()
    if is_model_uri(s):
        return len(s) > len(next(p for p in MODEL_URI_SCHEMES if s.startswith(p)))
    return s == IMAGENET or s.endswith((KERAS_SUFFIX, WEIGHTS_SUFFIX))
