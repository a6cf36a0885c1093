"""The explanation layer's plumbing on a tiny CNN (seconds, not a ResNet50): every registered
name builds an Explainer with the uniform explain(images, targets); the registry stays
import-light; the base class checks its inputs and counts the cost."""

from __future__ import annotations

import subprocess
import sys

import keras
import numpy as np
import pytest

from crackxai.core.errors import CrackxaiError
from crackxai.models.predictor import Predictor
from crackxai.xai import registry
from crackxai.xai.base import Explainer

SIZE = 32
SMALL = {"shap": {"max_evals": 40, "batch_size": 20}, "lime": {"num_samples": 40, "batch_size": 20}}


@pytest.fixture(scope="module")
def model() -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(x)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", registry.NAMES)
def test_every_registered_name_builds_an_explainer(name, model, images):
    predictor = Predictor(model, batch_size=16)
    explainer = registry.create(name, model=model, predictor=predictor, seed=1, layer=None,
                                cam_min_size=4, **SMALL.get(name, {}))
    assert isinstance(explainer, Explainer) and explainer.name == name
    assert isinstance(explainer, registry.get(name))
    if explainer.is_cam:
        assert explainer.layer == "conv2"  # the last feature map, 16x16 >= cam_min_size
    maps, seconds, evals = explainer.explain_with_cost(images, [1, 0, 1])
    assert maps.shape == (3, SIZE, SIZE) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and seconds > 0
    assert evals >= len(images)  # through the predictor, or one gradient pass per image
    if explainer.uses_gradients:
        assert predictor.n_evals == 0 and evals == len(images)


def test_method_kinds_are_class_attributes():
    cams = registry.names_where(is_cam=True)
    assert cams and set(cams) <= set(registry.NAMES)
    assert set(registry.names_where(uses_gradients=True)) <= set(cams)
    assert registry.names_where(is_cam=False)  # some method needs no feature map


def test_unknown_name_and_bad_inputs_are_clear_errors(model, images):
    with pytest.raises(CrackxaiError, match="Unknown explanation method 'occlusion'. Choose from"):
        registry.get("occlusion")
    explainer = registry.create(registry.names_where(is_cam=True)[0], model=model,
                                predictor=Predictor(model))
    with pytest.raises(CrackxaiError, match=r"needs images \(N, H, W, 3\) and N targets"):
        explainer.explain(images, [1])
    with pytest.raises(CrackxaiError, match="Target class 5 does not exist"):
        explainer.explain(images[:1], [5])
    with pytest.raises(TypeError):  # a setting the method does not have: not silently dropped
        registry.create(registry.names_where(is_cam=False)[0], model=model,
                        predictor=Predictor(model), max_N=3)


def test_registry_and_config_import_no_tensorflow():
    """config imports the registry and the SHAP masker parser: neither may pull TensorFlow,
    Keras, shap or lime in (config is loaded by every command, often before any of them)."""
    code = ("import sys, crackxai.config, crackxai.xai.registry, crackxai.xai.shap, "
            "crackxai.xai.lime; "
            "heavy = [m for m in ('tensorflow', 'keras', 'shap', 'lime') if m in sys.modules]; "
            "assert not heavy, heavy")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
