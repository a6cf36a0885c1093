"""Train: fine-tune ResNet50 on data/processed, track it in MLflow, write models/model.keras.

    python -m crackxai.train [train.epochs=3 model.weights=imagenet ...]
    python -m crackxai.train --params params.yaml          # how dvc.yaml runs it

Phase 1 trains the head with the backbone frozen (pretrained weights) or the whole network
(`model.weights=null`: a frozen random backbone would be useless). Phase 2, when
`train.fine_tune.unfreeze` and `train.fine_tune.epochs` are both > 0, fine-tunes the top
`unfreeze` ResNet stages at `train.fine_tune.lr` with BatchNorm kept in inference mode. Epochs are
numbered continuously across phases (1-based) in reports/train_history.csv and in MLflow.

A killed run resumes when rerun: models/.train_state holds Keras's BackupAndRestore state per
phase, the history so far, the best checkpoint and the MLflow run id, and is removed after a
successful finish. It is discarded when the configuration or the data changed in between.

Outputs: models/model.keras (raw 0-255 RGB in, softmax over classes.json's classes out),
models/mlflow_run.json (the run later stages log into), reports/train_history.csv.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from crackxai.cli import log, run_stage
from crackxai.config import Config, to_dict
from crackxai.dataset import Split, load_split
from crackxai.errors import DataError
from crackxai.io import atomic_path, write_json, write_text
from crackxai.model import build_model, resolve_weights, set_backbone_trainable
from crackxai.paths import MANIFEST, MODEL_FILE, PROCESSED_DIR, TRAIN_HISTORY, TRAIN_STATE_DIR

STAGE = "train"
HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy")
MLFLOW_METRICS = {"loss": "train/loss", "accuracy": "train/accuracy",
                  "val_loss": "val/loss", "val_accuracy": "val/accuracy"}


# ----------------------------------------------------------------------------------------------
# Input pipeline
# ----------------------------------------------------------------------------------------------


def make_dataset(split: Split, batch_size: int, shuffle_seed: int | None = None) -> tf.data.Dataset:
    """Batches of (uint8 images, int64 labels) gathered from the memory-mapped arrays.

    Only indices go through tf.data (shuffled with the seed, a new order each epoch); each batch
    is one numpy gather from the memory map, so memory stays bounded whatever the dataset size.
    The gather is declared stateless: under op determinism tf.data then still runs it in parallel
    and prefetches.
    """
    images, labels = split.images, split.labels
    size = images.shape[1]

    def gather(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.sort(idx)  # sequential reads from the memory map; order within a batch is moot
        return np.ascontiguousarray(images[idx]), labels[idx]

    def load(idx: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        x, y = tf.numpy_function(gather, [idx], (tf.uint8, tf.int64), stateful=False)
        x.set_shape((None, size, size, 3))
        y.set_shape((None,))
        return x, y

    ds = tf.data.Dataset.range(len(labels))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(labels), seed=shuffle_seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).map(load, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
        tf.data.AUTOTUNE)


def load_data(processed_dir: Path = PROCESSED_DIR) -> tuple[Split, Split]:
    train, val = load_split("train", processed_dir), load_split("val", processed_dir)
    for split in (train, val):
        if len(split) == 0:
            raise DataError(f"The {split.name} split in '{processed_dir}' is empty. Rerun "
                            "preprocess with more data or other preprocess.split fractions.")
        if split.images.dtype != np.uint8 or split.images.ndim != 4 or split.images.shape[3] != 3:
            raise DataError(f"'{processed_dir}/{split.name}_images.npy' is not uint8 (N, S, S, 3) "
                            f"(got {split.images.dtype} {split.images.shape}). Rerun preprocess.")
        if len(split.images) != len(split.labels):
            raise DataError(f"'{processed_dir}/{split.name}_images.npy' and its labels differ in "
                            "length. Rerun preprocess.")
    if len(train.classes) < 2:
        raise DataError(f"'{processed_dir}/classes.json' lists {train.classes}: a classifier "
                        "needs at least two classes.")
    return train, val


# ----------------------------------------------------------------------------------------------
# Callbacks
# ----------------------------------------------------------------------------------------------


class HistoryLogger(keras.callbacks.Callback):
    """Keeps the per-epoch history (1-based, continuous across phases and resumed runs) in the
    train state and in reports/train_history.csv, both rewritten atomically after every epoch."""

    def __init__(self, rows: list[dict], state_file: Path, csv_file: Path = TRAIN_HISTORY):
        super().__init__()
        self.rows, self.state_file, self.csv_file = rows, state_file, csv_file

    def on_epoch_begin(self, epoch, logs=None):
        # A resumed run redoes the epoch it was killed in: forget anything logged from there on.
        self.rows[:] = [row for row in self.rows if row["epoch"] <= epoch]

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append({"epoch": epoch + 1, **{k: float(logs[k]) for k in HISTORY_COLUMNS[1:]}})
        write_json(self.state_file, self.rows)
        write_history_csv(self.rows, self.csv_file)


class MlflowLogger(keras.callbacks.Callback):
    """train/loss, train/accuracy, val/loss, val/accuracy into the active MLflow run, step=epoch."""

    def on_epoch_end(self, epoch, logs=None):
        import mlflow

        mlflow.log_metrics({name: float(logs[key]) for key, name in MLFLOW_METRICS.items()},
                           step=epoch + 1)


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping on val_loss whose state survives a kill, and which keeps the best checkpoint.

    Every improvement is also saved to `best_path`. On a resumed run (BackupAndRestore, listed
    before this callback, has set the epoch to continue from) the epochs already done are
    replayed from the saved history, so patience keeps counting; if the best epoch was one of
    them, its weights come back from `best_path` at the end.
    """

    def __init__(self, rows: list[dict], first_epoch: int, best_path: Path, **kwargs):
        super().__init__(monitor="val_loss", restore_best_weights=True, **kwargs)
        self.rows, self.first_epoch, self.best_path = rows, first_epoch, best_path
        self.resumed_at = first_epoch

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.resumed_at = self.model._initial_epoch or self.first_epoch  # noqa: SLF001
        for row in self.rows:
            if self.first_epoch < row["epoch"] <= self.resumed_at:
                if self.best is None or row["val_loss"] < self.best:
                    self.best, self.best_epoch, self.wait = row["val_loss"], row["epoch"] - 1, 0
                else:
                    self.wait += 1
        if self.best is not None:  # keeps the base class from taking the next epoch as the best
            self.best_weights = self.model.get_weights()

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if self.best_epoch == epoch:
            with atomic_path(self.best_path, suffix=".weights.h5") as tmp:
                self.model.save_weights(tmp)

    def on_train_end(self, logs=None):
        if self.best_epoch < self.resumed_at and self.best_path.is_file():
            self.best_weights = None
            self.model.load_weights(self.best_path)
            log(STAGE, f"restored the best epoch ({self.best_epoch + 1}) from {self.best_path}")
        super().on_train_end(logs)


def write_history_csv(rows: list[dict], path: Path = TRAIN_HISTORY) -> None:
    lines = [",".join(HISTORY_COLUMNS)]
    lines += [",".join(str(row[c]) for c in HISTORY_COLUMNS) for row in rows]
    write_text(path, "\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------------
# Train state (resume after a kill)
# ----------------------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    epochs: int
    lr: float
    unfreeze: int | None  # set_backbone_trainable: None = everything, k = top k stages


def phases(cfg: Config) -> list[Phase]:
    pretrained = resolve_weights(cfg.model.weights) is not None
    out = [Phase("phase1", cfg.train.epochs, cfg.train.lr, 0 if pretrained else None)]
    ft = cfg.train.fine_tune
    if ft.unfreeze > 0 and ft.epochs > 0:
        out.append(Phase("phase2", ft.epochs, ft.lr, ft.unfreeze))
    return out


def backup_dir(phase: str, state_dir: Path = TRAIN_STATE_DIR) -> Path:
    """Keras BackupAndRestore's folder for one phase (nothing else may be written there)."""
    return state_dir / phase / "backup"


def fingerprint(cfg: Config, train: Split, val: Split) -> str:
    """What a resumed run must share with the interrupted one: config that shapes training
    (not tracking), class list and split shapes."""
    c = to_dict(cfg)
    key = {"seed": c["seed"], "model": c["model"], "train": c["train"], "classes": train.classes,
           "shapes": [list(train.images.shape), list(val.images.shape)]}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def open_state(state_dir: Path, fp: str) -> dict:
    """The interrupted run's state ({} for a fresh start); stale state is discarded."""
    state_file = state_dir / "state.json"
    if not state_file.is_file():
        shutil.rmtree(state_dir, ignore_errors=True)
        return {}
    state = json.loads(state_file.read_text())
    if state.get("fingerprint") == fp:
        return state
    log(STAGE, f"configuration or data changed since the interrupted run: discarding {state_dir}")
    if state.get("run_id"):
        _terminate_run(state["run_id"])
    shutil.rmtree(state_dir, ignore_errors=True)
    return {}


def _terminate_run(run_id: str) -> None:
    import mlflow

    with contextlib.suppress(Exception):  # a run in another store or deleted: nothing to close
        mlflow.MlflowClient().set_terminated(run_id, status="KILLED")


# ----------------------------------------------------------------------------------------------
# Stage
# ----------------------------------------------------------------------------------------------


def configure_runtime(cfg: Config) -> None:
    """Seeds, op determinism and the precision policy: all before any model is built."""
    keras.mixed_precision.set_global_policy(cfg.train.precision)
    keras.utils.set_random_seed(cfg.seed)
    if cfg.train.deterministic:
        tf.config.experimental.enable_op_determinism()


def fit_phase(model: keras.Model, phase: Phase, train_ds: tf.data.Dataset,
              val_ds: tf.data.Dataset, first_epoch: int, rows: list[dict], cfg: Config,
              state_dir: Path) -> None:
    set_backbone_trainable(model, phase.unfreeze)
    model.compile(optimizer=keras.optimizers.Adam(phase.lr),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model._initial_epoch = None  # noqa: SLF001 - BackupAndRestore of an earlier phase set it
    backup = keras.callbacks.BackupAndRestore(str(backup_dir(phase.name, state_dir)),
                                              double_checkpoint=True)
    callbacks = [
        HistoryLogger(rows, state_dir / "history.json"),
        MlflowLogger(),
        backup,  # before early stopping: it sets the epoch a resumed run continues from
        ResumableEarlyStopping(rows, first_epoch, state_dir / phase.name / "best.weights.h5",
                               patience=cfg.train.patience),
    ]
    meta = backup_dir(phase.name, state_dir) / "training_metadata.json"
    if meta.is_file():
        epoch = json.loads(meta.read_text())["epoch"]
        log(STAGE, f"{phase.name}: resuming after epoch {epoch} from {backup.backup_dir}")
    model.fit(train_ds, validation_data=val_ds, initial_epoch=first_epoch,
              epochs=first_epoch + phase.epochs, callbacks=callbacks, shuffle=False,
              verbose=1 if sys.stdout.isatty() else 2)


def describe(phase: Phase, first_epoch: int) -> str:
    what = {None: "the whole network", 0: "the head (backbone frozen)"}.get(
        phase.unfreeze, f"the head and the top {phase.unfreeze} ResNet stage(s), BatchNorm frozen")
    first, last = first_epoch + 1, first_epoch + phase.epochs
    span = f"epoch {first}" if first == last else f"epochs {first}-{last}"
    return f"{phase.name}: training {what} for up to {phase.epochs} epoch(s) ({span}), " \
           f"Adam lr={phase.lr:g}"


def save_model(model: keras.Model, path: Path = MODEL_FILE) -> None:
    """Atomically, without the optimizer: an uncompiled model sharing the trained layers is
    saved, so the file holds the weights only once (a third of the size with Adam's state)."""
    inference = keras.Model(model.input, model.output, name=model.name)
    with atomic_path(path, suffix=".keras") as tmp:
        inference.save(tmp)


def manifest_sha256(path: Path = MANIFEST) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def main(cfg: Config) -> Path:
    import mlflow

    from crackxai.tracking import connect, resolve_tracking_uri, start_model_run, write_run_file

    configure_runtime(cfg)
    train, val = load_data()
    size = train.images.shape[1]
    log(STAGE, f"data: {len(train)} train / {len(val)} val images {size}x{size} from "
               f"{PROCESSED_DIR}, classes {train.classes} (output index = position)")
    plan = phases(cfg)  # also fails fast on unavailable weights (no network, missing file)
    uri = resolve_tracking_uri(cfg.tracking.uri)
    connect(uri, cfg.tracking.experiment)  # fails fast on an unreachable store

    state_dir = TRAIN_STATE_DIR
    fp = fingerprint(cfg, train, val)
    state = open_state(state_dir, fp)
    tags = {"data.manifest_sha256": manifest_sha256() or "", "train.precision": cfg.train.precision}
    run = start_model_run(cfg, STAGE, extra_tags={k: v for k, v in tags.items() if v},
                          run_id=state.get("run_id"))
    write_json(state_dir / "state.json", {"fingerprint": fp, "run_id": run.info.run_id})
    log(STAGE, f"MLflow run {run.info.run_id} ({'resumed' if state else 'new'}) in experiment "
               f"'{cfg.tracking.experiment}' at {mlflow.get_tracking_uri()}; "
               f"train state in {state_dir}")
    try:
        log(STAGE, f"building ResNet50 (weights={cfg.model.weights}, {cfg.train.precision})")
        model = build_model(len(train.classes), size, cfg.model.weights, cfg.model.dropout,
                            cfg.model.augment.flip, cfg.model.augment.translate, cfg.seed)
        train_ds = make_dataset(train, cfg.train.batch_size, shuffle_seed=cfg.seed)
        val_ds = make_dataset(val, cfg.train.batch_size)
        history_file = state_dir / "history.json"
        rows = json.loads(history_file.read_text()) if history_file.is_file() else []
        epoch = 0
        for phase in plan:
            done_file = state_dir / phase.name / "done.json"
            if done_file.is_file():  # finished before the interruption
                epoch = json.loads(done_file.read_text())["epoch"]
                model.load_weights(state_dir / phase.name / "done.weights.h5")
                log(STAGE, f"{phase.name}: already finished (epoch {epoch}) in {state_dir}")
                continue
            log(STAGE, describe(phase, epoch))
            fit_phase(model, phase, train_ds, val_ds, epoch, rows, cfg, state_dir)
            best = min((r for r in rows if r["epoch"] > epoch), key=lambda r: r["val_loss"])
            log(STAGE, f"{phase.name}: kept epoch {best['epoch']} (lowest val_loss "
                       f"{best['val_loss']:.4f}, val_accuracy {best['val_accuracy']:.4f})")
            epoch = rows[-1]["epoch"]
            with atomic_path(state_dir / phase.name / "done.weights.h5", ".weights.h5") as tmp:
                model.save_weights(tmp)
            write_json(done_file, {"epoch": epoch})

        save_model(model, MODEL_FILE)
        write_history_csv(rows)
        log(STAGE, f"wrote {MODEL_FILE} and {TRAIN_HISTORY} ({len(rows)} epochs)")
        mlflow.log_artifact(str(MODEL_FILE), artifact_path="model")
        write_run_file(run)
    except BaseException as exc:  # the state stays: a rerun resumes this run
        mlflow.end_run(status="KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    mlflow.end_run()
    shutil.rmtree(state_dir, ignore_errors=True)
    log(STAGE, f"logged to MLflow run {run.info.run_id}; run id in models/mlflow_run.json")
    return MODEL_FILE


if __name__ == "__main__":
    run_stage(STAGE, main)
