"""Data-parallel training (crackxai.models.distribute): real processes, each its own device
configuration; multi-worker clusters are real TF_CONFIG workers on loopback ports.

Tolerance. A tiny CNN with two trained BatchNorm layers is fitted for 2 epochs (8 steps, Adam
lr 1e-2, flip augmentation, reshuffled each epoch) in one process, on 2 logical CPU devices
(MirroredStrategy) and by 2 workers (MultiWorkerMirroredStrategy). Every weight (kernels,
BatchNorm gamma/beta/moving statistics, head) agrees within 1e-4 absolute, the saved models'
predictions within 1e-5: the replicas sum their gradients in another order than one process, so
bit-equality is not promised. The tiny model's convolutions have no bias: a bias feeding a
BatchNorm has a zero gradient in exact arithmetic, and Adam's normalised step follows its
rounding noise (up to lr per step, carried into the moving mean) without changing any output.

A random-init ResNet50 is compared in float64 (`--precision float64`, `train.precision=float64`):
in float32 its gradient is dominated by rounding, so that one process fed the same batches with
their rows reversed, the same step in exact arithmetic, moves it as far as 2 replicas do
(test_resnet50_on_two_devices_trains_as_one_in_float64).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from crackxai.core.errors import CrackxaiError
from crackxai.models import distribute
from tests.conftest import free_ports

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "dist_train_tiny.py"
WEIGHT_ATOL = 1e-4
PRED_ATOL = 1e-5
TIMEOUT = 600


def env(tf_config: dict | None = None) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    out["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), out.get("PYTHONPATH", "")])
    if tf_config is not None:
        out["TF_CONFIG"] = json.dumps(tf_config)
    return out


def train(out: Path, distribution: str, *args: str) -> Path:
    subprocess.run([sys.executable, str(SCRIPT), str(out), distribution, *args], env=env(),
                   check=True, timeout=TIMEOUT, capture_output=True)
    return out


def train_cluster(out: Path, workers: int, *args: str) -> Path:
    """`workers` real processes on loopback ports, one TF_CONFIG each, all started at once."""
    hosts = [f"localhost:{p}" for p in free_ports(workers)]
    procs = [subprocess.Popen([sys.executable, str(SCRIPT), str(out), "multi_worker", *args],
                              env=env(distribute.tf_config(hosts, i)), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(workers)]
    try:
        logs = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for i, p in enumerate(procs):
        assert p.returncode == 0, f"worker {i} failed:\n{logs[i][-3000:]}"
    return out


def weights(folder: Path) -> list[np.ndarray]:
    data = np.load(folder / "weights.npz")
    return [data[f"arr_{i}"] for i in range(len(data.files))]


def predictions(folder: Path, name: str = "predictions") -> np.ndarray:
    return np.load(folder / f"{name}.npy")


def assert_same_training(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert len(wa) == len(wb)
    for i, (x, y) in enumerate(zip(wa, wb, strict=True)):
        np.testing.assert_allclose(x, y, atol=WEIGHT_ATOL, err_msg=f"weight {i}")
    np.testing.assert_allclose(predictions(a), predictions(b), atol=PRED_ATOL)


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(tmp_path_factory.mktemp("single"), "none")


def test_two_logical_devices_train_as_one(single: Path, tmp_path: Path) -> None:
    mirrored = train(tmp_path / "mirrored", "mirrored", "--logical-cpus", "2")
    assert json.loads((mirrored / "worker0.json").read_text())["replicas"] == 2
    assert_same_training(single, mirrored)
    # synchronized BatchNorm: the saved model predicts what the trained one did
    np.testing.assert_allclose(predictions(mirrored),
                               predictions(mirrored, "trained_predictions"), atol=1e-6)


def test_two_workers_train_as_one_and_only_the_chief_writes(single: Path, tmp_path: Path) -> None:
    out = train_cluster(tmp_path / "cluster", 2)
    assert_same_training(single, out)
    assert json.loads((out / "worker1.json").read_text())["replicas"] == 2
    # the model and history exist once, the chief's; each worker kept its own train state
    assert sorted(p.name for p in out.iterdir()) == [
        "history.csv", "model.keras", "predictions.npy", "state0", "state1",
        "trained_predictions.npy", "weights.npz", "worker0.json", "worker1.json"]


def test_unsynchronized_batchnorm_trains_differently(single: Path, tmp_path: Path) -> None:
    """Why synchronize_batchnorm exists: without it each replica normalises by its own half of
    the batch, and the training is no longer the single-process one."""
    out = train(tmp_path / "unsynced", "mirrored", "--logical-cpus", "2", "--no-sync-bn")
    gap = max(np.abs(x - y).max() for x, y in zip(weights(single), weights(out), strict=True))
    assert gap > 100 * WEIGHT_ATOL


# The train stage's model and optimiser: ResNet50 from random init (every BatchNorm trains), 32 px,
# 2 Adam steps of a global batch of 16.
RESNET_ARGS = ["--model", "resnet50", "--size", "32", "--n", "32", "--batch", "16", "--epochs",
               "1", "--lr", "1e-3", "--no-augment"]
RESNET_F64_ATOL = 1e-8  # measured: weights within 2e-9, predictions within 1.2e-10


@pytest.mark.slow  # four ResNet50 trainings, ~3 min on a quiet 2-core machine
def test_resnet50_on_two_devices_trains_as_one_in_float64(tmp_path: Path) -> None:
    """2 logical devices compute one process's ResNet50 steps: in float64 every weight and the
    predictions agree. In float32 they cannot be held to that, and not because of the
    distribution: reversing the rows of each batch in one process, the same step in exact
    arithmetic, moves the predictions as far (measured 0.081; 2 devices 0.102): a random-init
    ResNet50's float32 gradient is dominated by rounding."""
    f64 = ["--precision", "float64"]
    one = train(tmp_path / "one", "none", *RESNET_ARGS, *f64)
    two = train(tmp_path / "two", "mirrored", "--logical-cpus", "2", *RESNET_ARGS, *f64)
    assert json.loads((two / "worker0.json").read_text())["replicas"] == 2
    for i, (x, y) in enumerate(zip(weights(one), weights(two), strict=True)):
        np.testing.assert_allclose(x, y, rtol=0, atol=RESNET_F64_ATOL, err_msg=f"weight {i}")
    np.testing.assert_allclose(predictions(one), predictions(two), rtol=0, atol=RESNET_F64_ATOL)

    # why float64: in float32 one process is not even its own reference
    f32 = train(tmp_path / "f32", "none", *RESNET_ARGS)
    reversed_rows = train(tmp_path / "f32-reversed", "none", *RESNET_ARGS, "--permute")
    floor = np.abs(predictions(f32) - predictions(reversed_rows)).max()
    print(f"float32, one process vs rows reversed: predictions {floor:.3g} apart")
    assert floor > 1e5 * RESNET_F64_ATOL


# A process with 2 logical devices: the variance synchronized BatchNorm normalises by, against
# one process's tf.nn.moments over the same batch.
MOMENTS_SCRIPT = """
import json

import numpy as np

from keras.src.backend.tensorflow import nn  # before the shim replaces its function

keras_moments = nn._compute_moments_sync
from crackxai.models import distribute  # noqa: E402

strategy = distribute.make_strategy("mirrored", 2)  # installs the shim
import tensorflow as tf  # noqa: E402

# a channel whose mean is large against its spread (a random-init ResNet50 has such channels)
x = (1000 + np.random.default_rng(0).normal(0, 0.01, (8, 4, 4, 3))).astype("float32")
batch = next(iter(strategy.experimental_distribute_dataset(
    tf.data.Dataset.from_tensor_slices(x).batch(8))))


def synced_variance(fn):
    step = tf.function(lambda b: fn(b, [0, 1, 2], False)[1])
    return strategy.experimental_local_results(strategy.run(step, args=(batch,)))[0].numpy()


print(json.dumps({"replicas": strategy.num_replicas_in_sync,
                  "one_process": tf.nn.moments(tf.constant(x), [0, 1, 2])[1].numpy().tolist(),
                  "keras": synced_variance(keras_moments).tolist(),
                  "shim": synced_variance(nn._compute_moments_sync).tolist()}))
"""


def test_synchronized_batchnorm_variance_is_the_one_process_variance() -> None:
    """Where E[x^2] - E[x]^2 cancels in float32 (mean 1000, spread 0.01), Keras 3.15's synced
    variance is off by orders of magnitude (0 or 0.06 instead of 1e-4); the shim's two-pass
    variance is one process's to float precision."""
    out = subprocess.run([sys.executable, "-c", MOMENTS_SCRIPT], env=env(), check=True,
                         timeout=TIMEOUT, capture_output=True, text=True).stdout
    got = json.loads(out.strip().splitlines()[-1])
    assert got["replicas"] == 2
    one = np.array(got["one_process"])
    np.testing.assert_allclose(got["shim"], one, rtol=1e-3)
    assert np.abs(np.array(got["keras"]) - one).max() > 100 * one.max()  # why the shim exists


def test_tf_config_and_worker_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = distribute.tf_config(["a:1", "b:2"], 1)
    monkeypatch.setenv("TF_CONFIG", json.dumps(cfg))
    assert distribute.worker_from_env() == distribute.Worker(1, 2)
    assert not distribute.worker_from_env().is_chief
    monkeypatch.delenv("TF_CONFIG")
    assert distribute.worker_from_env().is_chief


@pytest.mark.parametrize("workers,index", [([], 0), (["nohost"], 0), (["a:x"], 0),
                                           (["a:1", "b:2"], 2)])
def test_bad_cluster_is_one_paragraph(workers: list[str], index: int) -> None:
    with pytest.raises(CrackxaiError, match="host:port|index") as err:
        distribute.tf_config(workers, index)
    assert "\n" not in str(err.value)


def test_bad_tf_config_and_missing_tf_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(CrackxaiError, match="train_worker"):
        distribute.worker_from_env()
    monkeypatch.delenv("TF_CONFIG")
    with pytest.raises(CrackxaiError, match="train_worker"):
        distribute.make_strategy("multi_worker")
    with pytest.raises(CrackxaiError, match="none, mirrored, multi_worker"):
        distribute.make_strategy("horovod")


def test_shim_refuses_another_keras(monkeypatch: pytest.MonkeyPatch) -> None:
    distribute.check_shim_target()  # the pinned Keras passes
    monkeypatch.setattr(distribute.keras, "__version__", "3.99.0")
    with pytest.raises(CrackxaiError, match="keras-team/keras#20585"):
        distribute.check_shim_target()
    monkeypatch.undo()
    trainer = distribute._trainer_module()  # noqa: SLF001
    monkeypatch.setattr(trainer, "reduce_per_replica", lambda values, strategy: values)
    with pytest.raises(CrackxaiError, match="3.15.1"):
        distribute.check_shim_target()


# ---------------------------------------------------------------------------------------------
# The train stage on 2 loopback workers (crackxai train_worker), ResNet50 at 32 px from random
# init (BatchNorm trains), 2 steps: against the same stage in one process.
# ---------------------------------------------------------------------------------------------

# model.dropout=0: a dropout mask is drawn per replica, for its part of the batch, so with
# dropout the runs agree in distribution only (measured: predictions 0.017 apart after 2 steps).
# train.precision=float64: in float32 a random-init ResNet50's steps follow rounding (see
# test_resnet50_on_two_devices_trains_as_one_in_float64); in float64 the runs must agree.
STAGE_ARGS = ["train.epochs=1", "train.batch_size=16", "train.patience=1",
              "tracking.registered_model=null", "model.dropout=0", "train.precision=float64"]
STAGE_PRED_ATOL = 1e-8


def stage_project(root: Path) -> Path:
    from tests.test_train import write_processed

    root.mkdir(parents=True)
    import shutil

    shutil.copytree(REPO / "conf", root / "conf")
    write_processed(root, n_train=32, n_val=16)
    return root


def stage_env() -> dict[str, str]:
    out = env()
    for var in ("DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME", "MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID"):
        out.pop(var, None)
    return out


def runs_in(root: Path) -> list:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    return [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


@pytest.mark.slow  # three ResNet50 trainings; ~2 min on a quiet 2-core machine
def test_train_stage_on_two_workers_writes_once_and_matches_one_process(tmp_path: Path) -> None:
    single = stage_project(tmp_path / "single")
    subprocess.run([sys.executable, "-m", "crackxai.train", *STAGE_ARGS], cwd=single,
                   env=stage_env(), check=True, timeout=TIMEOUT, capture_output=True)
    cluster = stage_project(tmp_path / "cluster")  # one folder for both: a shared file system
    hosts = ",".join(f"localhost:{p}" for p in free_ports(2))
    procs = [subprocess.Popen([sys.executable, "-m", "crackxai.train_worker", "--workers", hosts,
                               "--index", str(i), *STAGE_ARGS], cwd=cluster, env=stage_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    try:
        logs = [p.communicate(timeout=3 * TIMEOUT)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "worker 1 of 2" in logs[1]

    # one model, one history, one run file; no worker state left behind; one MLflow run
    assert sorted(p.name for p in (cluster / "models").iterdir()) == [
        "mlflow_run.json", "model.keras", "model.ood.npz"]
    runs = runs_in(cluster)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["train.distribution"] == "multi_worker"
    assert len((cluster / "reports" / "train_history.csv").read_text().splitlines()) == 2

    import keras

    images = np.load(single / "data" / "processed" / "val_images.npy")
    a = keras.saving.load_model(single / "models" / "model.keras").predict(images, verbose=0)
    b = keras.saving.load_model(cluster / "models" / "model.keras").predict(images, verbose=0)
    gap = float(np.abs(a - b).max())
    print(f"stage predictions: largest gap {gap:.3g}")  # the figure, with -s
    assert gap <= STAGE_PRED_ATOL
