"""Training library: the input pipeline, the per-epoch history, resumable early stopping and the two-phase schedule."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from crackxai.core.io import atomic_path, write_json, write_text
from crackxai.data.processed import Split

logger = logging.getLogger(__name__)

HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy")


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
