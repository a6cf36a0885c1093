"""Training library: the input pipeline, the per-epoch history, resumable early stopping and the two-phase schedule."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from crackxai.core.errors import DataError
from crackxai.core.io import atomic_path, write_json, write_text
from crackxai.core.progress import RateLogger, clock
from crackxai.data.processed import Split, load_split
from crackxai.models.resnet import set_backbone_trainable

logger = logging.getLogger(__name__)

HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy")


def augment_batch(images: tf.Tensor, seed: tf.Tensor, flip: bool, translate: float) -> tf.Tensor:
    """Random horizontal flips and translations of a batch, a function of `seed` (shape (2,)).

    What Keras's RandomFlip("horizontal") and RandomTranslation(translate, translate,
    fill_mode="reflect") do (the same bilinear ImageProjectiveTransformV3 op), but with
    stateless random ops: the result depends on the seed only, never on how many times a layer
    ran, so a seeded pipeline is reproducible. Returns float32 0-255 images.
    """
    x = tf.cast(images, tf.float32)
    if flip:
        x = tf.image.stateless_random_flip_left_right(x, seed=seed)
    if translate > 0:
        shape = tf.shape(x)
        n, height, width = shape[0], tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
        shift = tf.random.stateless_uniform((n, 2), seed=seed + [0, 1], minval=-translate,
                                            maxval=translate)
        dx, dy = shift[:, 0] * width, shift[:, 1] * height
        one, zero = tf.ones_like(dx), tf.zeros_like(dx)
        # output pixel (x, y) reads input pixel (x - dx, y - dy): a shift by (dx, dy)
        transforms = tf.stack([one, zero, -dx, zero, one, -dy, zero, zero], axis=1)
        x = tf.raw_ops.ImageProjectiveTransformV3(
            images=x, transforms=transforms, output_shape=shape[1:3], fill_value=0.0,
            interpolation="BILINEAR", fill_mode="REFLECT")
    return x


def make_dataset(split: Split, batch_size: int, shuffle_seed: int | None = None,
                 flip: bool = False, translate: float = 0.0,
                 augment_seed: int = 0) -> tf.data.Dataset:
    """Batches of (images, int64 labels) gathered from the memory-mapped arrays.

    Only indices go through tf.data (shuffled with the seed, a new order each epoch); each batch
    is one numpy gather from the memory map, so memory stays bounded whatever the dataset size.
    The gather is declared stateless: under op determinism tf.data then still runs it in parallel
    and prefetches.

    With `flip` or `translate` (the training split only) each batch is augmented by
    `augment_batch` with a seed drawn from a `Dataset.random(augment_seed)` stream that is
    re-drawn each epoch: new augmentations every epoch, the same ones for the same seed. Images
    are then float32 0-255, else the stored uint8. The model itself holds no augmentation layer.
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
    ds = ds.batch(batch_size).map(load, num_parallel_calls=tf.data.AUTOTUNE)
    if flip or translate > 0:
        seeds = tf.data.Dataset.random(seed=augment_seed, rerandomize_each_iteration=True)
        seeds = seeds.batch(2)  # a stateless seed is a pair of integers

        def augment(batch: tuple[tf.Tensor, tf.Tensor], seed: tf.Tensor):
            x, y = batch
            x = augment_batch(x, seed, flip, translate)
            x.set_shape((None, size, size, 3))
            return x, y

        ds = tf.data.Dataset.zip(ds, seeds).map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


class HistoryLogger(keras.callbacks.Callback):
    """Keeps the per-epoch history (1-based, continuous across phases and resumed runs) in the
    train state and in reports/train_history.csv, both rewritten atomically after every epoch."""

    def __init__(self, rows: list[dict], state_file: Path, csv_file: Path):
        super().__init__()
        self.rows, self.state_file, self.csv_file = rows, state_file, csv_file

    def on_epoch_begin(self, epoch, logs=None):
        # A resumed run redoes the epoch it was killed in: forget anything logged from there on.
        self.rows[:] = [row for row in self.rows if row["epoch"] <= epoch]

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append({"epoch": epoch + 1, **{k: float(logs[k]) for k in HISTORY_COLUMNS[1:]}})
        write_json(self.state_file, self.rows)
        write_history_csv(self.rows, self.csv_file)


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
            logger.info(f"restored the best epoch ({self.best_epoch + 1}) from {self.best_path}")
        super().on_train_end(logs)


class EtaLogger(keras.callbacks.Callback):
    """For logs, not terminals: Keras's verbose=2 prints one line per epoch and nothing within
    one (an epoch on 40,000 images on a CPU takes long), so log the progress within the epoch
    with its ETA, and after each epoch the time left in the phase (if early stopping does not
    end it sooner)."""

    def __init__(self, phase: str, last_epoch: int):
        super().__init__()
        self.phase, self.last_epoch = phase, last_epoch
        self.rate: RateLogger | None = None
        self.durations: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.rate = RateLogger(self.params.get("steps"), f"{self.phase} epoch {epoch + 1}",
                               "batches")

    def on_train_batch_end(self, batch, logs=None):
        if self.rate is not None:
            self.rate.update(batch + 1)

    def on_epoch_end(self, epoch, logs=None):
        if self.rate is None:
            return
        self.durations.append(self.rate.elapsed())
        left = self.last_epoch - (epoch + 1)
        mean = sum(self.durations) / len(self.durations)
        logger.info(f"{self.phase}: epoch {epoch + 1}/{self.last_epoch} took "
                    f"{clock(self.durations[-1])}" + (
                        f"; ETA {clock(left * mean)} for the {left} epoch(s) left (less if "
                        "early stopping ends the phase)" if left else ""))


def write_history_csv(rows: list[dict], path: Path) -> None:
    lines = [",".join(HISTORY_COLUMNS)]
    lines += [",".join(str(row[c]) for c in HISTORY_COLUMNS) for row in rows]
    write_text(path, "\n".join(lines) + "\n")


@dataclass
class Phase:
    name: str
    epochs: int
    lr: float
    unfreeze: int | None  # set_backbone_trainable: None = everything, k = top k stages


def backup_dir(phase: str, state_dir: Path) -> Path:
    """Keras BackupAndRestore's folder for one phase (nothing else may be written there)."""
    return state_dir / phase / "backup"


def describe(phase: Phase, first_epoch: int) -> str:
    what = {None: "the whole network", 0: "the head (backbone frozen)"}.get(
        phase.unfreeze, f"the head and the top {phase.unfreeze} ResNet stage(s), BatchNorm frozen")
    first, last = first_epoch + 1, first_epoch + phase.epochs
    span = f"epoch {first}" if first == last else f"epochs {first}-{last}"
    return f"{phase.name}: training {what} for up to {phase.epochs} epoch(s) ({span}), " \
           f"Adam lr={phase.lr:g}"


def load_train_val(processed_dir: Path) -> tuple[Split, Split]:
    """The train and val splits, checked for what training needs."""
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


def plan_phases(pretrained: bool, epochs: int, lr: float, fine_tune_unfreeze: int,
                fine_tune_epochs: int, fine_tune_lr: float) -> list[Phase]:
    """Phase 1 trains the head (pretrained backbone frozen) or everything (random init); phase 2,
    when asked for, fine-tunes the top `fine_tune_unfreeze` ResNet stages."""
    out = [Phase("phase1", epochs, lr, 0 if pretrained else None)]
    if fine_tune_unfreeze > 0 and fine_tune_epochs > 0:
        out.append(Phase("phase2", fine_tune_epochs, fine_tune_lr, fine_tune_unfreeze))
    return out


def configure_runtime(precision: str, seed: int, deterministic: bool) -> None:
    """Seeds, op determinism and the precision policy: all before any model is built."""
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def open_state(state_dir: Path, fp: str, on_discard: Callable[[dict], None]) -> dict:
    """The interrupted run's state ({} for a fresh start); stale state is discarded (after
    `on_discard(state)`, e.g. closing its MLflow run)."""
    state_file = state_dir / "state.json"
    if not state_file.is_file():
        shutil.rmtree(state_dir, ignore_errors=True)
        return {}
    state = json.loads(state_file.read_text())
    if state.get("fingerprint") == fp:
        return state
    logger.info(f"configuration or data changed since the interrupted run: discarding {state_dir}")
    on_discard(state)
    shutil.rmtree(state_dir, ignore_errors=True)
    return {}


def fit_phase(model: keras.Model, phase: Phase, train_ds: tf.data.Dataset,
              val_ds: tf.data.Dataset, first_epoch: int, rows: list[dict], state_dir: Path,
              history_csv: Path, patience: int, callbacks: list[keras.callbacks.Callback]) -> None:
    """Compile and fit one phase, resumable from `state_dir`; `callbacks` run first."""
    set_backbone_trainable(model, phase.unfreeze)
    model.compile(optimizer=keras.optimizers.Adam(phase.lr),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model._initial_epoch = None  # noqa: SLF001 - BackupAndRestore of an earlier phase set it
    backup = keras.callbacks.BackupAndRestore(str(backup_dir(phase.name, state_dir)),
                                              double_checkpoint=True)
    callbacks = [
        HistoryLogger(rows, state_dir / "history.json", history_csv),
        *callbacks,
        backup,  # before early stopping: it sets the epoch a resumed run continues from
        ResumableEarlyStopping(rows, first_epoch, state_dir / phase.name / "best.weights.h5",
                               patience=patience),
    ]
    meta = backup_dir(phase.name, state_dir) / "training_metadata.json"
    if meta.is_file():
        epoch = json.loads(meta.read_text())["epoch"]
        logger.info(f"{phase.name}: resuming after epoch {epoch} from {backup.backup_dir}")
    tty = sys.stdout.isatty()  # a bar with an ETA; else one line per epoch, plus EtaLogger's
    if not tty:
        callbacks.append(EtaLogger(phase.name, first_epoch + phase.epochs))
    model.fit(train_ds, validation_data=val_ds, initial_epoch=first_epoch,
              epochs=first_epoch + phase.epochs, callbacks=callbacks, shuffle=False,
              verbose=1 if tty else 2)


def run_phases(model: keras.Model, plan: list[Phase], train_ds: tf.data.Dataset,
               val_ds: tf.data.Dataset, state_dir: Path, history_csv: Path, patience: int,
               callbacks: list[keras.callbacks.Callback]) -> list[dict]:
    """Every phase in order, skipping those an interrupted run finished; returns the history."""
    history_file = state_dir / "history.json"
    rows = json.loads(history_file.read_text()) if history_file.is_file() else []
    epoch = 0
    for phase in plan:
        done_file = state_dir / phase.name / "done.json"
        if done_file.is_file():  # finished before the interruption
            epoch = json.loads(done_file.read_text())["epoch"]
            model.load_weights(state_dir / phase.name / "done.weights.h5")
            logger.info(f"{phase.name}: already finished (epoch {epoch}) in {state_dir}")
            continue
        logger.info(describe(phase, epoch))
        fit_phase(model, phase, train_ds, val_ds, epoch, rows, state_dir, history_csv, patience,
                  callbacks)
        best = min((r for r in rows if r["epoch"] > epoch), key=lambda r: r["val_loss"])
        logger.info(f"{phase.name}: kept epoch {best['epoch']} (lowest val_loss "
                    f"{best['val_loss']:.4f}, val_accuracy {best['val_accuracy']:.4f})")
        epoch = rows[-1]["epoch"]
        with atomic_path(state_dir / phase.name / "done.weights.h5", ".weights.h5") as tmp:
            model.save_weights(tmp)
        write_json(done_file, {"epoch": epoch})
    return rows
