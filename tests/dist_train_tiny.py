"""One training process for tests/test_distribute.py and benchmarks/scaling.py: a tiny CNN with
trained BatchNorm, fitted by crackxai.models.training.run_phases under a crackxai.models.distribute
strategy, as the train stage does it. Run as a script, a fresh process per device configuration
(logical devices and collectives must be set up before any TensorFlow op):

    python tests/dist_train_tiny.py OUT_DIR DISTRIBUTION [--logical-cpus N] [--n 64] [--size 16]
                                    [--batch 16] [--epochs 2] [--no-sync-bn] [--no-augment]
                                    [--model tiny|resnet50] [--lr 1e-2] [--sgd]
                                    [--precision float32|float64] [--permute]

TF_CONFIG in the environment makes it one worker of a cluster. Writes, on the chief only,
OUT_DIR/weights.npz (every weight, in model.weights order), OUT_DIR/model.keras and
OUT_DIR/predictions.npy (the trained model on the val images); every worker writes its own
OUT_DIR/worker<i>.json (steps, seconds of the fit, images/s of its last epoch, replicas).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def tiny_model(size: int, seed: int):
    import keras
    from keras import layers

    inputs = keras.Input((size, size, 3))
    x = layers.Rescaling(1 / 255)(inputs)
    # no conv bias before a BatchNorm: its gradient is zero in exact arithmetic, so Adam's
    # normalised step would follow rounding noise (ResNet50's convs have one; see the test)
    x = layers.Conv2D(8, 3, padding="same", use_bias=False,
                      kernel_initializer=keras.initializers.GlorotUniform(seed))(x)
    x = layers.BatchNormalization(momentum=0.9)(x)
    x = layers.ReLU()(x)
    x = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False,
                      kernel_initializer=keras.initializers.GlorotUniform(seed + 1))(x)
    x = layers.BatchNormalization(momentum=0.9)(x)
    x = layers.ReLU()(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(2, activation="softmax",
                           kernel_initializer=keras.initializers.GlorotUniform(seed + 2))(x)
    return keras.Model(inputs, outputs)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("distribution")
    p.add_argument("--logical-cpus", type=int, default=0)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--no-sync-bn", action="store_true")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--model", choices=("tiny", "resnet50"), default="tiny",
                   help="resnet50: crackxai's own model from random init (benchmarks)")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--sgd", action="store_true",
                   help="plain SGD instead of the stage's Adam: a step is lr * gradient, so a "
                        "gradient difference shows (Adam's first steps are lr * sign(g))")
    p.add_argument("--precision", default="float32", help="the Keras policy (train.precision)")
    p.add_argument("--permute", action="store_true",
                   help="the same images, each batch's rows in another order: how far float32 "
                        "rounding alone moves this run (the tolerance of a distributed one)")
    a = p.parse_args()
    if a.sgd:  # run_phases compiles with keras.optimizers.Adam(lr)
        import keras

        keras.optimizers.Adam = lambda lr, **kwargs: keras.optimizers.SGD(lr)

    from crackxai.models import distribute

    # first: before any TensorFlow op
    strategy = distribute.make_strategy(a.distribution, a.logical_cpus)
    worker = distribute.worker_from_env()

    import numpy as np
    import pandas as pd

    from crackxai.data.processed import Split
    from crackxai.models.training import Phase, configure_runtime, make_dataset, run_phases

    configure_runtime(a.precision, 0, True)
    rng = np.random.default_rng(0)
    labels = (np.arange(a.n) % 2).astype(np.int64)
    images = rng.integers(0, 120, (a.n, a.size, a.size, 3), dtype=np.uint8)
    images[labels == 1, :, a.size // 2] = 250  # a bright line: learnable in a few steps
    split = Split("train", images, labels, None, pd.DataFrame(), ["Negative", "Positive"])
    train_ds = make_dataset(split, a.batch, shuffle_seed=0, flip=not a.no_augment, augment_seed=0)
    if a.permute:  # the same batches, rows reversed: the same step in exact arithmetic
        import tensorflow as tf

        train_ds = train_ds.map(lambda x, y: (tf.reverse(x, [0]), tf.reverse(y, [0])))
    train_ds = distribute.shard_by_data(train_ds)
    val_ds = distribute.shard_by_data(make_dataset(split, a.batch))

    a.out.mkdir(parents=True, exist_ok=True)
    # non-chief workers write into a throw-away folder; each worker its own train state
    scratch = a.out if worker.is_chief else Path(tempfile.mkdtemp(prefix="crackxai-worker"))
    import keras

    class EpochTimer(keras.callbacks.Callback):
        """Seconds per epoch: the last one is past tracing (the benchmark's figure)."""

        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.start)

    timer = EpochTimer()
    with strategy.scope():
        if a.model == "resnet50":
            from crackxai.models.resnet import build_model

            model = build_model(2, a.size, None, 0.0, seed=0)
        else:
            model = tiny_model(a.size, 0)
        if not a.no_sync_bn:
            distribute.synchronize_batchnorm(model)
        start = time.perf_counter()
        run_phases(model, [Phase("phase1", a.epochs, a.lr, None)], train_ds, val_ds,
                   a.out / f"state{worker.index}", scratch / "history.csv", patience=10,
                   callbacks=[timer])
        seconds = time.perf_counter() - start
    distribute.synchronize_batchnorm(model, on=False)
    from crackxai.models.io import save_model

    save_model(model, scratch / "model.keras")  # every worker: saving may read synced variables
    trained = model.predict(images, verbose=0)  # collective: every worker calls it
    steps = a.epochs * -(-a.n // a.batch)
    (a.out / f"worker{worker.index}.json").write_text(json.dumps(
        {"seconds": seconds, "steps": steps, "images_per_s": a.n / timer.seconds[-1],
         "replicas": strategy.num_replicas_in_sync}))
    if worker.is_chief:
        np.savez(a.out / "weights.npz", *[np.asarray(w) for w in model.weights])
        plain = keras.saving.load_model(a.out / "model.keras")  # outside any strategy
        np.save(a.out / "predictions.npy", plain.predict(images, verbose=0))
        np.save(a.out / "trained_predictions.npy", trained)


if __name__ == "__main__":
    sys.exit(main())
