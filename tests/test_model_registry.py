"""A portable model (standard Keras layers only) logged as an MLflow model, registered, promoted.

The MLflow model is crackxai's served pyfunc model (crackxai.tracking.serving; its own tests are in
tests/test_serving.py): predict returns a DataFrame whose class-named columns are the
probabilities, so the checks here read those columns.

Real components: the train stage on a tiny generated dataset, a real SQLite MLflow store with its
Model Registry in a temp folder, and a Python subprocess in which crackxai cannot be imported.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest

from crackxai.config import load_config
from crackxai.core.errors import CrackxaiError
from crackxai.models import legacy
from crackxai.models.io import load_model
from crackxai.models.resnet import IMAGENET_BGR_MEAN, build_model, caffe_preprocess
from crackxai.models.training import make_dataset
from crackxai.stages.train import main
from crackxai.tools import compare
from crackxai.tracking.registry import CHAMPION_ALIAS, log_model, model_file
from tests.test_train import (  # noqa: F401 - _reset_tf_globals: autouse, undoes main()'s globals
    CLASSES,
    ENV_LEAKS,
    SIZE,
    _reset_tf_globals,
    git_init,
    make_project,
    write_processed,
)

EXP_NAME = "tidy-tern"  # as `dvc exp run` would name the experiment
NAME = "crackxai"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One tiny training (random init, 1 epoch) through the stage, as `dvc exp run` runs it."""
    root = make_project(tmp_path_factory.mktemp("registry"))
    git_init(root)
    with pytest.MonkeyPatch.context() as mp:
        for var in ENV_LEAKS:
            mp.delenv(var, raising=False)
        mp.setenv("DVC_EXP_NAME", EXP_NAME)
        mp.chdir(root)
        main(load_config(["train.epochs=1", "train.batch_size=16"]))
    return root


@pytest.fixture(scope="module")
def store(trained) -> str:
    return f"sqlite:///{trained / 'mlflow.db'}"


@pytest.fixture(scope="module")
def run_id(trained) -> str:
    return json.loads((trained / "models" / "mlflow_run.json").read_text())["run_id"]


@pytest.fixture(scope="module")
def images(trained) -> np.ndarray:
    """Raw 0-255 float32 images (the MLflow signature's dtype), integer and fractional values."""
    val = np.load(trained / "data" / "processed" / "val_images.npy")[:5].astype(np.float32)
    noise = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype(np.float32)
    return np.concatenate([val, noise])


@pytest.fixture(scope="module")
def expected(trained, images) -> np.ndarray:
    """The in-process probabilities, through crackxai's own loader."""
    return load_model(trained / "models" / "model.keras").predict(images, verbose=0)


# ----------------------------------------------------------------------------------------------
# A portable model
# ----------------------------------------------------------------------------------------------


def _legacy_model(num_classes: int, size: int, seed: int = 42) -> keras.Model:
    """The model as crackxai built it before (custom layers), for the equivalence checks."""
    inputs = keras.Input((size, size, 3), name="image")
    x = legacy.RandomFlip("horizontal", seed=seed, name="augment_flip")(inputs)
    x = legacy.RandomTranslation(0.1, 0.1, fill_mode="reflect", seed=seed,
                                 name="augment_translate")(x)
    x = legacy.ResNetPreprocess(name="resnet_preprocess", dtype="float32")(x)
    backbone = keras.applications.ResNet50(include_top=False, weights=None, input_tensor=x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(backbone.output)
    x = keras.layers.Dropout(0.2, seed=seed, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32",
                                 name="predictions")(x)
    return keras.Model(inputs, outputs, name="crackxai_resnet50")


def test_preprocessing_is_bit_identical_to_preprocess_input():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.integers(0, 256, (3, 16, 16, 3)).astype(np.float32),
                        rng.uniform(0, 255, (3, 16, 16, 3)).astype(np.float32)])
    inputs = keras.Input((16, 16, 3))
    new = keras.ops.convert_to_numpy(keras.Model(inputs, caffe_preprocess(inputs))(x))
    reference = keras.applications.resnet.preprocess_input(x.copy())
    old = keras.ops.convert_to_numpy(legacy.ResNetPreprocess()(x))
    np.testing.assert_array_equal(new, reference)
    np.testing.assert_array_equal(new, old)
    np.testing.assert_array_equal(new[..., 0], x[..., 2] - np.float32(IMAGENET_BGR_MEAN[0]))


def test_same_probabilities_as_the_previous_model_on_the_same_weights(tmp_path):
    keras.utils.set_random_seed(3)
    new, old = build_model(2, SIZE), _legacy_model(2, SIZE)
    for layer in old.layers:
        if layer.weights:
            new.get_layer(layer.name).set_weights(layer.get_weights())
    x = np.random.default_rng(1).uniform(0, 255, (6, SIZE, SIZE, 3)).astype(np.float32)
    expected = old.predict(x, verbose=0)
    # Bit-equal on CPU (identical preprocessing output, identical backbone ops); the tolerance
    # is for a GPU, where cuDNN may pick another convolution algorithm for each model.
    np.testing.assert_allclose(new.predict(x, verbose=0), expected, rtol=0, atol=1e-6)
    # and a model saved by the previous version still loads (with its custom layers) and agrees
    old.save(tmp_path / "old.keras")
    np.testing.assert_allclose(load_model(tmp_path / "old.keras").predict(x, verbose=0),
                               expected, rtol=0, atol=1e-6)


def test_model_has_standard_layers_only_and_nothing_random(trained):
    with zipfile.ZipFile(trained / "models" / "model.keras") as z:
        config = z.read("config.json").decode()
    assert "crackxai>" not in config  # no registered custom class (e.g. crackxai>RandomFlip)
    modules = {layer["module"] for layer in json.loads(config)["config"]["layers"]}
    assert modules <= {"keras.layers"}, modules
    model = load_model(trained / "models" / "model.keras")
    assert not [layer.name for layer in model.layers if "Random" in type(layer).__name__]
    x = np.random.default_rng(2).uniform(0, 255, (3, SIZE, SIZE, 3)).astype(np.float32)
    # every inference call path gives the same probabilities: no layer augments or drops out
    eager = keras.ops.convert_to_numpy(model(x))
    np.testing.assert_allclose(eager, model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(eager, keras.ops.convert_to_numpy(model.predict_on_batch(x)),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(eager, keras.ops.convert_to_numpy(model(x)))


def test_plain_keras_loads_the_model_where_crackxai_is_not_importable(trained, images, expected,
                                                                      tmp_path):
    """`python -I -S` (no PYTHONPATH, no user site, no .pth files: the editable crackxai install
    is invisible) with only site-packages on sys.path, from an empty folder."""
    np.save(tmp_path / "x.npy", images)
    site_dirs = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    code = "\n".join([
        "import sys",
        f"sys.path.extend({site_dirs!r})",
        "try:",
        "    import crackxai",
        "except ModuleNotFoundError:",
        "    pass",
        "else:",
        "    sys.exit('crackxai is importable: the test proves nothing')",
        "import numpy as np, keras",
        f"model = keras.saving.load_model({str(trained / 'models' / 'model.keras')!r})",
        "x = np.load('x.npy')",
        "np.save('predict.npy', model.predict(x, verbose=0))",
        "np.save('call.npy', keras.ops.convert_to_numpy(model(x)))",
    ])
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TF_CPP_MIN_LOG_LEVEL": "2",
           "KERAS_BACKEND": "tensorflow"}
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "predict.npy"), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "call.npy"), expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Augmentation in the input pipeline
# ----------------------------------------------------------------------------------------------


def _epochs(ds, n: int = 2) -> list[np.ndarray]:
    return [np.concatenate([x.numpy() for x, _ in ds]) for _ in range(n)]


def test_augmentation_is_seeded_per_epoch_and_train_only(tmp_path):
    from crackxai.data.processed import load_split

    split = load_split("train", write_processed(tmp_path, n_train=16))
    raw = np.asarray(split.images)
    first = _epochs(make_dataset(split, 8, flip=True, translate=0.1, augment_seed=5))
    again = _epochs(make_dataset(split, 8, flip=True, translate=0.1, augment_seed=5))
    other = _epochs(make_dataset(split, 8, flip=True, translate=0.1, augment_seed=6))
    np.testing.assert_array_equal(first[0], again[0])  # same seed, same augmentations
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], first[1])  # new augmentations each epoch
    assert not np.array_equal(first[0], other[0])
    assert first[0].dtype == np.float32 and first[0].min() >= 0 and first[0].max() <= 255
    assert not np.array_equal(first[0], raw)
    # no augmentation asked for (val, test): the stored uint8 images, unchanged
    plain = _epochs(make_dataset(split, 8), 1)[0]
    assert plain.dtype == np.uint8
    np.testing.assert_array_equal(plain, raw)
    # flip only: each image is itself or its mirror, and both occur
    flipped = _epochs(make_dataset(split, 8, flip=True, augment_seed=5), 1)[0]
    same = [np.array_equal(a, b) for a, b in zip(flipped, raw, strict=True)]
    mirror = [np.array_equal(a, b[:, ::-1]) for a, b in zip(flipped, raw, strict=True)]
    assert all(s or m for s, m in zip(same, mirror, strict=True)) and any(same) and any(mirror)


# ----------------------------------------------------------------------------------------------
# MLflow model and Model Registry
# ----------------------------------------------------------------------------------------------


def test_logged_model_predicts_through_pyfunc(store, run_id, images, expected):
    mlflow.set_tracking_uri(store)
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    np.testing.assert_allclose(pyfunc.predict(images)[CLASSES].to_numpy(), expected, rtol=1e-5,
                               atol=1e-6)
    signature = pyfunc.metadata.signature
    assert signature.inputs is None  # encoded files, arrays or lists: the model checks them
    assert signature.outputs.input_names()[:3] == [*CLASSES, "predicted"]
    assert {p.name: p.default for p in signature.params.params} == {"explain": "none",
                                                                     "layer": ""}
    # models from code (crackxai.tracking.served_model), the served crackxai.tracking.serving model
    assert pyfunc.metadata.flavors["python_function"]["loader_module"] == \
        "mlflow.pyfunc.loaders.code_model"


def test_model_is_not_stored_twice(store, run_id):
    client = mlflow.MlflowClient(store)
    run_files = [a.path for a in client.list_artifacts(run_id)]
    assert "model" not in run_files and "model/model.keras" not in run_files
    (logged,) = client.search_logged_models(
        experiment_ids=[client.get_run(run_id).info.experiment_id])
    assert logged.source_run_id == run_id and logged.name == "model"
    assert "model.keras" in [Path(a.path).name for a in
                             client.list_logged_model_artifacts(logged.model_id, "artifacts")]


def test_model_file_resolves_paths_run_and_registry_uris(store, run_id, images, expected):
    assert model_file("models/model.keras") == "models/model.keras"
    for uri in (f"runs:/{run_id}/model", f"models:/{NAME}/1"):
        model = load_model(model_file(uri, tracking_uri=store))
        np.testing.assert_allclose(model.predict(images, verbose=0), expected, rtol=1e-5,
                                   atol=1e-6)
    with pytest.raises(CrackxaiError, match="Cannot fetch the model 'models:/nope@champion'"):
        model_file("models:/nope@champion", tracking_uri=store)


def test_registered_version_carries_provenance_tags(trained, store, run_id):
    client = mlflow.MlflowClient(store)
    (version,) = client.search_model_versions(f"name = '{NAME}'")
    assert version.run_id == run_id and str(version.version) == "1"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=trained, capture_output=True,
                          text=True).stdout.strip()
    manifest = hashlib.sha256((trained / "data" / "manifest.csv").read_bytes()).hexdigest()
    assert version.tags["dvc.experiment"] == EXP_NAME
    assert version.tags["git.commit"] == head
    assert version.tags["data.manifest_sha256"] == manifest


def _tiny_run(store: str, experiment_id: str, metrics: dict[str, float],
              register: str | None, folder: Path) -> tuple[str, keras.Model]:
    """A second, cheap run in the store: a small model logged (and registered) like train's."""
    keras.utils.set_random_seed(7)
    model = keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Rescaling(1 / 255),
                              keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(2, activation="softmax")])
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model.keras")
    mlflow.set_tracking_uri(store)
    with mlflow.start_run(experiment_id=experiment_id, run_name="tiny") as run:
        mlflow.log_metrics(metrics)
        mlflow.set_tags({"git.commit": "abc123", "data.manifest_sha256": "0" * 64})
        logged = log_model(folder / "model.keras", CLASSES, np.zeros((1, SIZE, SIZE, 3), np.uint8),
                           register)
    assert (logged["version"] is None) == (register is None)
    return run.info.run_id, model


def test_promote_sets_champion_on_the_best_run(store, run_id, images, expected, caplog, tmp_path):
    client = mlflow.MlflowClient(store)
    experiment_id = client.get_run(run_id).info.experiment_id
    with pytest.raises(CrackxaiError, match=r"--promote test/accuracy: none of the 1 run\(s\)"):
        compare.promote("test/accuracy", uri=store)  # the trained run has no test metrics yet
    client.log_metric(run_id, "test/accuracy", 0.9)
    client.log_metric(run_id, "val/loss", 0.5)
    tiny_id, tiny = _tiny_run(store, experiment_id, {"test/accuracy": 0.6, "val/loss": 0.2}, NAME,
                              tmp_path / "a")
    _tiny_run(store, experiment_id, {"test/accuracy": 0.99}, None,  # best, but not registered
              tmp_path / "b")

    with caplog.at_level("INFO", logger="crackxai"):
        compare.main(["--promote", "test/accuracy", "--uri", store, "--no-plot"])
    assert f"{NAME} version 1 (run {EXP_NAME}, test/accuracy 0.9, the highest of 3 run(s)) is " \
           f"now models:/{NAME}@{CHAMPION_ALIAS}" in caplog.text
    assert client.get_model_version_by_alias(NAME, CHAMPION_ALIAS).run_id == run_id
    champion = mlflow.pyfunc.load_model(f"models:/{NAME}@{CHAMPION_ALIAS}")
    np.testing.assert_allclose(champion.predict(images)[CLASSES].to_numpy(), expected, rtol=1e-5,
                               atol=1e-6)

    compare.promote("val/loss", uri=store)  # a loss: lowest wins
    version = client.get_model_version_by_alias(NAME, CHAMPION_ALIAS)
    assert version.run_id == tiny_id and str(version.version) == "2"
    champion = mlflow.pyfunc.load_model(f"models:/{NAME}@{CHAMPION_ALIAS}")
    np.testing.assert_allclose(champion.predict(images)[CLASSES].to_numpy(),
                               tiny.predict(images, verbose=0), rtol=1e-5, atol=1e-6)


def test_promote_errors(store, tmp_path, capsys):
    with pytest.raises(CrackxaiError, match="none of the .* has a version of registered model "
                                            "'other'.*--registered-model NAME"):
        compare.promote("test/accuracy", uri=store, registered_model="other")
    with pytest.raises(SystemExit) as exit_:
        compare.main(["--promote", "test/nope", "--uri", store, "--no-plot"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--promote test/nope" in err and "Traceback" not in err
    # a store whose runs were never registered
    empty = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(empty)
    experiment_id = mlflow.MlflowClient(empty).create_experiment("crackxai")
    with mlflow.start_run(experiment_id=experiment_id):
        mlflow.log_metric("test/accuracy", 1.0)
    with pytest.raises(CrackxaiError, match=r"none of the 1 compared run\(s\) has a version of "
                                            "registered model 'crackxai'"):
        compare.promote("test/accuracy", uri=empty)
