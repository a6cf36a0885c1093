"""Train stage: real ResNet50 models on a tiny generated dataset, a real MLflow store."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import h5py
import keras
import mlflow
import numpy as np
import pandas as pd
import pytest

from crackxai.config import load_config
from crackxai.config.entry import run_stage
from crackxai.core.errors import CrackxaiError
from crackxai.data.processed import write_classes, write_split
from crackxai.models.io import load_model
from crackxai.models.resnet import (
    LAST_CONV_LAYER,
    RESNET50_NOTOP_FILE,
    backbone_layers,
    build_model,
    imagenet_reachable,
    set_backbone_trainable,
)
from crackxai.models.training import ResumableEarlyStopping, backup_dir
from crackxai.stages.train import main
from crackxai.tracking.runs import config_params
from tests.conftest import free_ports

REPO = Path(__file__).resolve().parents[1]

CLASSES = ["Negative", "Positive"]


def write_processed(root: Path, n_train: int = 48, n_val: int = 16, size: int = 32,
                    seed: int = 0) -> Path:
    """A tiny data/processed in crackxai.data.processed's format: grey noise, a dark line on positives."""
    rng = np.random.default_rng(seed)
    out = root / "data" / "processed"
    out.mkdir(parents=True, exist_ok=True)
    write_classes(out, CLASSES, size)
    for split, n in (("train", n_train), ("val", n_val), ("test", n_val)):
        labels = rng.permutation(np.arange(n) % 2).astype(np.int64)
        images = rng.integers(140, 200, (n, size, size, 3), dtype=np.uint8)
        for img, label in zip(images, labels, strict=True):
            if label == 1:
                p, q = rng.integers(0, size, 2), rng.integers(0, size, 2)
                cv2.line(img, tuple(map(int, p)), tuple(map(int, q)), (40, 40, 40), 2)
        records = pd.DataFrame({
            "path": [f"raw/{split}/{i}.jpg" for i in range(n)], "label": labels,
            "class": [CLASSES[k] for k in labels],
            "sha256": [hashlib.sha256(im.tobytes()).hexdigest() for im in images],
            "has_mask": False})
        write_split(out, split, images, labels, records)
    (root / "data" / "manifest.csv").write_text("path,class,sha256,mask\n")
    return out


# ----------------------------------------------------------------------------------------------
# Fixtures: one tiny project trained once per module (ResNet50 builds and traces are slow)
# ----------------------------------------------------------------------------------------------

SIZE = 32
# Pretrained-style run: phase 1 (head, backbone frozen) for 2 epochs, phase 2 fine-tunes conv5_.
TINY = ["train.epochs=2", "train.batch_size=16", "train.patience=3",
        "train.fine_tune.unfreeze=1", "train.fine_tune.epochs=1", "train.fine_tune.lr=1e-4"]
ENV_LEAKS = ("DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV",
             "MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME")


def make_project(root: Path, n_train: int = 48) -> Path:
    shutil.copytree(REPO / "conf", root / "conf")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    write_processed(root, n_train=n_train)
    return root


def git_init(root: Path) -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
                              cwd=root, check=True, capture_output=True, text=True).stdout.strip()
    git("init", "-q")
    git("add", "conf", "params.yaml")
    git("commit", "-qm", "init")
    return git("rev-parse", "HEAD")


def train_in(root: Path, overrides: list[str]) -> None:
    """crackxai.stages.train.main in `root`, as the stage runs there (cwd, no leaking env)."""
    with pytest.MonkeyPatch.context() as mp:
        for var in ENV_LEAKS:
            mp.delenv(var, raising=False)
        mp.chdir(root)
        main(load_config(overrides))


@pytest.fixture(scope="module", autouse=True)
def _reset_tf_globals():
    """main() enables op determinism and sets the precision policy process-wide: undo that for
    the test modules that run after this one."""
    yield
    from tensorflow.python.framework import config as tf_config  # no public switch-off

    tf_config.disable_op_determinism()
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict:
    """A random ResNet50 (include_top=False) saved both ways a user may have one: Keras 3
    `.save_weights` (.weights.h5) and the legacy .h5 layout of Keras's own ImageNet file. BN
    moving means are randomised so that loading them is visible."""
    from keras.src.legacy.saving import legacy_h5_format

    ref = keras.applications.ResNet50(include_top=False, weights=None,
                                      input_shape=(SIZE, SIZE, 3))
    rng = np.random.default_rng(1)
    for layer in ref.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(0, 0.1, layer.moving_mean.shape))
    d = tmp_path_factory.mktemp("weights")
    ref.save_weights(d / "resnet50_notop.weights.h5")
    with h5py.File(d / "resnet50_notop_legacy.h5", "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, ref)
    return {"keras3": d / "resnet50_notop.weights.h5", "legacy": d / "resnet50_notop_legacy.h5",
            "values": {w.path: w.numpy() for w in ref.weights}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, weights) -> Path:
    root = make_project(tmp_path_factory.mktemp("trained"))
    git_init(root)
    train_in(root, [*TINY, f"model.weights={weights['keras3']}"])
    return root


@pytest.fixture(scope="module")
def model(trained) -> keras.Model:
    """The trained model as later stages load it."""
    return load_model(trained / "models" / "model.keras")


def backbone_value(model: keras.Model, path: str) -> np.ndarray:
    """A backbone variable by its path in a bare ResNet50 (e.g. 'conv1_conv/kernel')."""
    layer, name = path.split("/")
    return next(w for w in model.get_layer(layer).weights if w.name == name).numpy()


# ----------------------------------------------------------------------------------------------
# Model (src/crackxai/model.py)
# ----------------------------------------------------------------------------------------------


def test_legacy_h5_weights_load_into_flat_model(weights):
    """The layout of Keras's ImageNet notop file loads into our model with its extra layers."""
    model = build_model(2, SIZE, weights=str(weights["legacy"]))
    for path, value in weights["values"].items():
        np.testing.assert_array_equal(backbone_value(model, path), value, err_msg=path)
    assert model.get_layer(LAST_CONV_LAYER) in model.layers  # top level: tf-keras-vis reaches it


def test_bad_weights_give_short_errors(project):
    with pytest.raises(CrackxaiError, match="no such file"):
        build_model(2, SIZE, weights="missing.weights.h5")
    (project / "junk.h5").write_text("not hdf5")
    with pytest.raises(CrackxaiError, match=r"model\.weights=junk\.h5: cannot load"):
        build_model(2, SIZE, weights="junk.h5")


def test_imagenet_offline_fails_fast(project, monkeypatch):
    if imagenet_reachable():
        pytest.skip("this machine can reach the weights server")
    write_processed(project)
    home = project / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KERAS_HOME", str(home / ".keras"))
    start = time.monotonic()
    with pytest.raises(CrackxaiError) as err:
        main(load_config(["model.weights=imagenet"]))
    assert time.monotonic() - start < 15
    msg = str(err.value)
    assert str(home / ".keras" / "models" / RESNET50_NOTOP_FILE) in msg
    assert "model.weights=null" in msg and "/path/to/weights.h5" in msg
    assert not (project / "models").exists() and not (project / "mlflow.db").exists()


def test_set_backbone_trainable(model):
    backbone = backbone_layers(model)
    set_backbone_trainable(model, None)
    assert all(layer.trainable for layer in backbone)
    set_backbone_trainable(model, 0)
    assert not any(layer.trainable for layer in backbone)
    set_backbone_trainable(model, 1)
    trainable = {layer.name for layer in backbone if layer.trainable}
    assert trainable and all(name.startswith("conv5_") for name in trainable)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in backbone
                   if layer.trainable)
    assert model.get_layer("predictions").trainable
    set_backbone_trainable(model, 0)  # as loaded: trainable flags do not change predictions


# ----------------------------------------------------------------------------------------------
# Train stage
# ----------------------------------------------------------------------------------------------


def test_outputs_and_history(trained):
    assert (trained / "models" / "model.keras").is_file()
    assert not (trained / "models" / ".train_state").exists()  # removed after a clean finish
    history = pd.read_csv(trained / "reports" / "train_history.csv")
    assert list(history.columns) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]
    assert history["epoch"].tolist() == [1, 2, 3]  # 2 in phase 1, then 1 of fine-tuning
    assert history.notna().all().all()
    run = json.loads((trained / "models" / "mlflow_run.json").read_text())
    assert run["run_id"] and run["tracking_uri"] == f"sqlite:///{trained / 'mlflow.db'}"


def test_saved_model_predicts_raw_uint8_in_fresh_process(trained, model):
    images = np.load(trained / "data" / "processed" / "val_images.npy")[:6]
    np.save(trained / "probe.npy", images)
    # an eager call: the same computation as predict() without tracing a graph (test speed)
    code = ("import numpy as np, keras; from crackxai.models.io import load_model; "
            "m = load_model('models/model.keras'); "
            "np.save('probe_out.npy', keras.ops.convert_to_numpy(m(np.load('probe.npy'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=trained, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    fresh = np.load(trained / "probe_out.npy")
    assert fresh.shape == (6, 2) and fresh.dtype == np.float32
    np.testing.assert_allclose(fresh.sum(axis=1), 1, rtol=1e-5)
    first, second = model.predict(images, verbose=0), model.predict(images, verbose=0)
    np.testing.assert_array_equal(first, second)  # nothing random at inference
    np.testing.assert_allclose(first, fresh, rtol=1e-5, atol=1e-6)


def test_phases_freeze_and_fine_tune_the_right_layers(model, weights):
    """Phase 1 trained the head only; phase 2 changed conv5_ convolutions but no BatchNorm
    statistics (inference mode) and nothing below conv5_."""
    values = weights["values"]
    for path in ("conv1_conv/kernel", "conv4_block6_3_conv/kernel", "conv5_block3_3_bn/moving_mean",
                 "conv5_block1_1_bn/moving_variance", "conv2_block1_0_bn/moving_mean"):
        np.testing.assert_array_equal(backbone_value(model, path), values[path], err_msg=path)
    assert not np.array_equal(backbone_value(model, "conv5_block3_3_conv/kernel"),
                              values["conv5_block3_3_conv/kernel"])


def test_same_config_twice_gives_identical_results(trained, model, weights, tmp_path):
    again = make_project(tmp_path / "again")
    train_in(again, [*TINY, f"model.weights={weights['keras3']}"])
    first = pd.read_csv(trained / "reports" / "train_history.csv")
    second = pd.read_csv(again / "reports" / "train_history.csv")
    pd.testing.assert_frame_equal(first, second, check_exact=True)
    images = np.load(again / "data" / "processed" / "val_images.npy")
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(model(images)),
        keras.ops.convert_to_numpy(load_model(again / "models" / "model.keras")(images)))


def test_mlflow_run_content(trained):
    uri = f"sqlite:///{trained / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("crackxai")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_id == json.loads((trained / "models/mlflow_run.json").read_text())["run_id"]
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["train.lr"] == "0.001" and params["train.fine_tune.unfreeze"] == "1"
    assert params["model.weights"].endswith("resnet50_notop.weights.h5")
    assert len(params) == len(config_params(load_config(TINY)))
    for name in ("train/loss", "train/accuracy", "val/loss", "val/accuracy"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, name)] == [1, 2, 3]
    history = pd.read_csv(trained / "reports" / "train_history.csv")
    logged = [m.value for m in client.get_metric_history(run.info.run_id, "val/loss")]
    np.testing.assert_allclose(logged, history["val_loss"], rtol=1e-6)
    # the model is an MLflow model (tests/test_model_registry.py), not a plain artifact file
    assert "model" not in [a.path for a in client.list_artifacts(run.info.run_id)]
    (version,) = client.search_model_versions("name = 'crackxai'")
    assert version.run_id == run.info.run_id
    tags = run.data.tags
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=trained, capture_output=True,
                          text=True).stdout.strip()
    assert tags["git.commit"] == head and tags["git.dirty"] in ("True", "False")
    manifest = hashlib.sha256((trained / "data/manifest.csv").read_bytes()).hexdigest()
    assert tags["data.manifest_sha256"] == manifest
    assert tags["keras.backend"] == "tensorflow" and tags["version.keras"] == keras.__version__
    assert tags["crackxai.stage"] == "train"


def test_unreachable_tracking_server_fails_before_training(project, capsys):
    """Through the entry point (`python -m crackxai.train` calls run_stage; run in-process to
    spare a TensorFlow import): exit code 2, one short message, no training started."""
    write_processed(project)
    (port,) = free_ports()  # a port nothing listens on
    start = time.monotonic()
    with pytest.raises(SystemExit) as exit_:
        run_stage("train", main, [f"tracking.uri=http://127.0.0.1:{port}"])
    assert exit_.value.code == 2
    assert time.monotonic() - start < 15
    out = capsys.readouterr()
    assert "not reachable" in out.err and f"127.0.0.1:{port}" in out.err
    assert "Traceback" not in out.err and len(out.err.strip().splitlines()) == 1
    assert "building ResNet50" not in out.out
    assert not (project / "models").exists() and not (project / "reports").exists()


def test_killed_run_resumes_from_last_finished_epoch(project, weights, capsys):
    make_args = ["train.epochs=3", "train.batch_size=8", "train.patience=5",
                 f"model.weights={weights['keras3']}"]
    write_processed(project, n_train=96)
    meta = backup_dir("phase1", project / "models" / ".train_state") / "training_metadata.json"
    env = {k: v for k, v in os.environ.items() if k not in ENV_LEAKS}
    proc = subprocess.Popen([sys.executable, "-m", "crackxai.train", *make_args], cwd=project,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 400
        while not (meta.is_file() and json.loads(meta.read_text() or "{}").get("epoch", 0) >= 1):
            assert proc.poll() is None, "training ended before it could be interrupted"
            assert time.monotonic() < deadline, "epoch 1 never finished"
            time.sleep(0.05)
        time.sleep(0.2)  # into epoch 2
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = json.loads(meta.read_text())["epoch"]
    assert 1 <= done < 3
    assert not (project / "models" / "model.keras").exists()

    capsys.readouterr()
    train_in(project, make_args)  # the rerun (in-process: spares a TensorFlow import)
    out = capsys.readouterr().out
    assert f"resuming after epoch {done}" in out and "(resumed)" in out
    assert "Epoch 1/3" not in out and f"Epoch {done + 1}/3" in out
    history = pd.read_csv(project / "reports" / "train_history.csv")
    assert history["epoch"].tolist() == [1, 2, 3]
    assert not (project / "models" / ".train_state").exists()
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("crackxai").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss")]
    assert sorted(set(steps)) == [1, 2, 3]


def test_early_stopping_state_survives_a_resume(tmp_path):
    """Resumed at epoch 3 of a run whose best epoch (1) was before the kill: patience keeps
    counting from the saved history, and the best weights come back from the checkpoint."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(keras.optimizers.SGD(0.0), "sparse_categorical_crossentropy")  # loss is fixed
    x, y = np.ones((4, 2), "float32"), np.array([0, 1, 0, 1])
    val_loss = float(model.evaluate(x, y, verbose=0))
    kernel = model.layers[0].kernel
    best = tmp_path / "best.weights.h5"
    original = kernel.numpy()
    kernel.assign(np.full(kernel.shape, 0.5, "float32"))
    model.save_weights(best)
    kernel.assign(original)
    rows = [{"epoch": 1, "val_loss": val_loss - 0.1}, {"epoch": 2, "val_loss": val_loss + 0.1}]
    model._initial_epoch = 2  # what BackupAndRestore sets on a resumed run
    stop = ResumableEarlyStopping(rows, 0, best, patience=2)
    history = model.fit(x, y, validation_data=(x, y), epochs=10, callbacks=[stop], verbose=0)
    assert len(history.history["loss"]) == 1  # epoch 3 only: no improvement, patience used up
    assert stop.best_epoch == 0
    np.testing.assert_array_equal(kernel.numpy(), 0.5)


@pytest.mark.slow
def test_mixed_bfloat16_and_random_init(project):
    """precision=mixed_bfloat16 with weights=null: the whole network trains, the model saves,
    and it still outputs float32 probabilities."""
    write_processed(project)
    try:
        main(load_config(["train.epochs=1", "train.batch_size=16",
                          "train.precision=mixed_bfloat16"]))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model = load_model(project / "models" / "model.keras")
    keras.utils.set_random_seed(42)  # as main() did before building: the same initial weights
    initial = build_model(2, SIZE)
    assert not np.array_equal(backbone_value(model, "conv1_conv/kernel"),
                              backbone_value(initial, "conv1_conv/kernel"))  # backbone trained
    assert model.get_layer("conv1_conv").dtype_policy.name == "mixed_bfloat16"
    assert model.get_layer("resnet_preprocess").dtype_policy.name == "float32"
    images = np.load(project / "data" / "processed" / "val_images.npy")
    probs = model.predict(images, verbose=0)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-3)
