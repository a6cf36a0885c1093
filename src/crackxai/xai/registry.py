"""The explanation methods by name: the one place a method name is spelled.

Each entry points at its Explainer class as "module:Class" and is imported only when used, so the
config layer can check `explain.methods` without importing TensorFlow. A new method is one class
in xai/ plus one line here. A method's settings section in conf/explain is named as it is here.
"""

from __future__ import annotations

import importlib
from typing import Any

from crackxai.core.errors import CrackxaiError

METHODS: dict[str, str] = {
    "shap": "crackxai.xai.shap:ShapExplainer",
    "gradcam": "crackxai.xai.cam:GradCam",
    "gradcam_pp": "crackxai.xai.cam:GradCamPlusPlus",
    "scorecam": "crackxai.xai.cam:ScoreCam",
    "faster_scorecam": "crackxai.xai.cam:FasterScoreCam",
    "lime": "crackxai.xai.lime:LimeExplainer",
}
NAMES: tuple[str, ...] = tuple(METHODS)


def get(name: str) -> type:
    """The Explainer class (crackxai.xai.base.Explainer) registered as `name`."""
    if name not in METHODS:
        raise CrackxaiError(f"Unknown explanation method '{name}'. Choose from: "
                            f"{', '.join(NAMES)}.")
    module, attr = METHODS[name].split(":")
    return getattr(importlib.import_module(module), attr)


def create(name: str, **kwargs: Any) -> Any:
    """An Explainer (crackxai.xai.base) for method `name`: model=, predictor=, the shared settings (seed=, layer=,
    cam_min_size=, each taken only by the methods that use it) and the method's own settings."""
    explainer = get(name).create(**kwargs)
    explainer.name = name
    return explainer


def names_where(**attributes: Any) -> list[str]:
    """The method names whose class has these attribute values, e.g. names_where(is_cam=False)."""
    return [n for n in NAMES
            if all(getattr(get(n), k) == v for k, v in attributes.items())]
