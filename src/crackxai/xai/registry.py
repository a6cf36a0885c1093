"""The explanation methods by name: the one place a method name is spelled.

Each entry points at its Explainer class as "module:Class" and is imported only when used, so the
config layer can check `explain.methods` without importing TensorFlow. A new method is one file in
xai/ plus one line here.
"""

from __future__ import annotations

import importlib

METHODS: dict[str, str] = {
    "shap": "crackxai.xai.explainers:shap",
    "gradcam": "crackxai.xai.explainers:gradcam",
    "gradcam_pp": "crackxai.xai.explainers:gradcam_pp",
    "scorecam": "crackxai.xai.explainers:scorecam",
    "faster_scorecam": "crackxai.xai.explainers:faster_scorecam",
    "lime": "crackxai.xai.explainers:lime",
}
NAMES: tuple[str, ...] = tuple(METHODS)


def get(name: str):  # noqa: ANN201 - the Explainer class
    """The Explainer class registered as `name`."""
    module, attr = METHODS[name].split(":")
    return getattr(importlib.import_module(module), attr)
