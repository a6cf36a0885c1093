"""Warm start (`model.weights` = a .keras file or an MLflow model URI): the backbone comes from
the saved model, the head is new. Real ResNet50 models, a real SQLite MLflow store in a temp
folder; bad paths and URIs fail in one paragraph before any training work."""

from __future__ import annotations

from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest

from crackxai.config import load_config
from crackxai.core.errors import ConfigError, CrackxaiError
from crackxai.models.io import load_model, save_model
from crackxai.models.resnet import backbone_layers, build_model
from crackxai.stages.train import main
from crackxai.tracking.registry import log_model, model_file
from tests.test_train import (  # noqa: F401 - _reset_tf_globals: autouse, undoes main()'s globals
    SIZE,
    _reset_tf_globals,
    write_processed,
)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A saved 3-class model whose backbone differs from any fresh initialisation."""
    keras.utils.set_random_seed(7)
    model = build_model(3, SIZE, weights=None)
    path = tmp_path_factory.mktemp("source") / "source.keras"
    save_model(model, path)
    return path


def backbone(model: keras.Model) -> dict[str, list[np.ndarray]]:
    return {layer.name: layer.get_weights() for layer in backbone_layers(model) if layer.weights}


def assert_backbone_equal(model: keras.Model, source: keras.Model) -> None:
    mine, theirs = backbone(model), backbone(source)
    assert mine.keys() == theirs.keys() and len(mine) > 100
    for name, values in mine.items():
        for a, b in zip(values, theirs[name], strict=True):
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_warm_start_from_a_keras_file_copies_the_backbone_and_rebuilds_the_head(source):
    src = load_model(source)
    keras.utils.set_random_seed(8)
    model = build_model(2, SIZE, weights=str(source))
    assert_backbone_equal(model, src)
    assert model.output_shape == (None, 2) and src.output_shape == (None, 3)  # new classes
    keras.utils.set_random_seed(8)
    cold = build_model(2, SIZE, weights=None)
    assert not np.array_equal(cold.get_layer("conv1_conv").get_weights()[0],
                              model.get_layer("conv1_conv").get_weights()[0])  # it did change


@pytest.mark.slow  # logging a ResNet50 as an MLflow model takes a while
def test_warm_start_from_a_runs_uri(source, project):
    store = f"sqlite:///{project / 'mlflow.db'}"
    mlflow.set_tracking_uri(store)
    mlflow.set_experiment("warm-start")  # not an experiment id another test left active
    src = load_model(source)
    try:
        with mlflow.start_run() as run:
            log_model(source, ["Negative", "Positive"], np.zeros((1, SIZE, SIZE, 3), np.uint8),
                      None)
    finally:
        mlflow.set_tracking_uri(None)
    local = model_file(f"runs:/{run.info.run_id}/model", store)
    model = build_model(2, SIZE, weights=local)
    assert_backbone_equal(model, src)


def test_a_model_of_another_architecture_is_a_one_paragraph_error(tmp_path):
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(4, 3, name="conv1_conv")(inputs)  # a ResNet50 name, another shape
    x = keras.layers.GlobalAveragePooling2D()(x)
    other = keras.Model(inputs, keras.layers.Dense(2)(x))
    save_model(other, tmp_path / "other.keras")
    with pytest.raises(CrackxaiError, match=r"is not a crackxai ResNet50 model to warm-start from: "
                                            r"\d+ backbone layer\(s\) missing .* 1 with other shapes "
                                            r"\(e\.g\. conv1_conv") as err:
        build_model(2, SIZE, weights=str(tmp_path / "other.keras"))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("weights", "match"), [
    ("missing/model.keras", r"model\.weights='missing/model\.keras': no such file\. Give a saved "
                            r"crackxai model"),
    ("runs:/0123456789abcdef0123456789abcdef/model", r"Cannot fetch the model 'runs:/0123"),
    ("models:/nobody@champion", r"Cannot fetch the model 'models:/nobody@champion'"),
])
def test_a_bad_path_or_uri_fails_before_any_training(project, weights, match):
    write_processed(project)
    with pytest.raises(CrackxaiError, match=match) as err:
        main(load_config([f"model.weights={weights}", "train.epochs=1"]))
    assert "\n" not in str(err.value)
    assert not (project / "models").exists()  # nothing trained, nothing written


@pytest.mark.parametrize("weights", ["model.h5x", "imagenet21k", "runs:/", "models:/"])
def test_config_rejects_what_is_neither_a_file_nor_a_uri(weights):
    with pytest.raises(ConfigError, match=r"model\.weights.*\.keras.*runs:/<run_id>/model"):
        load_config([f"model.weights={weights}"])


@pytest.mark.slow
def test_train_stage_warm_starts_from_a_registered_model(source, project):
    """End to end: the source logged and registered, then the stage trains from models:/...@alias.
    Phase 1 freezes the backbone, so the trained model's backbone is still the source's."""
    write_processed(project)
    store = f"sqlite:///{project / 'mlflow.db'}"
    mlflow.set_tracking_uri(store)
    mlflow.set_experiment("warm-start")  # not an experiment id another test left active
    try:
        with mlflow.start_run():
            version = log_model(source, ["Negative", "Positive"],
                                np.zeros((1, SIZE, SIZE, 3), np.uint8), "warm")["version"]
        mlflow.MlflowClient().set_registered_model_alias("warm", "base", version)
    finally:
        mlflow.set_tracking_uri(None)
    main(load_config(["model.weights=models:/warm@base", "train.epochs=1", "train.batch_size=16",
                      "tracking.registered_model=null"]))
    trained = load_model(project / "models" / "model.keras")
    assert_backbone_equal(trained, load_model(source))
    assert trained.output_shape == (None, 2)
