"""Is the training input pipeline a bottleneck? Steps/s through the real pipeline vs in memory.

    .venv/bin/python benchmarks/train_pipeline.py                   # ResNet50 64x64, head training
    .venv/bin/python benchmarks/train_pipeline.py --mode full       # whole network trainable
    .venv/bin/python benchmarks/train_pipeline.py --n 4096 --steps 40 --repeats 3

A processed split of --n random 64x64 images is written to a temp folder as preprocess writes it,
then loaded memory-mapped with crackxai.data.processed.load_split. The same model (built, compiled and
configured as crackxai.stages.train does it: seeds, op determinism, float32) trains --steps steps per
measurement on (a) crackxai.stages.train.make_dataset over the memory map (shuffled, gathered per batch,
prefetched) and (b) the same images as in-memory tensors (tf.data slices of a constant). The two
alternate --repeats times after a warm-up of each (tracing is not timed); the best of each is
kept. A ratio near 1.0 means the pipeline keeps up with the model; the pipeline's own rate
without a model is printed too (its headroom). `--mode head` (the default,
the backbone frozen as in phase 1 with pretrained weights) has the cheapest steps, so it is the
hardest case for the pipeline.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from crackxai.config import default_config
from crackxai.data.processed import load_split, write_classes, write_split
from crackxai.models.resnet import build_model, set_backbone_trainable
from crackxai.models.training import configure_runtime, make_dataset


def make_split(root: Path, n: int, size: int) -> Path:
    """A processed 'train' split of random images in crackxai.data.processed's format."""
    out = root / "processed"
    out.mkdir(parents=True)
    classes = ["Negative", "Positive"]
    write_classes(out, classes, size)
    # Random pixels generated chunk by chunk into a scratch memory map, then written as the split.
    images = np.lib.format.open_memmap(root / "scratch.npy", mode="w+", dtype=np.uint8,
                                       shape=(n, size, size, 3))
    rng = np.random.default_rng(0)
    for start in range(0, n, 1024):
        stop = min(n, start + 1024)
        images[start:stop] = rng.integers(0, 256, (stop - start, size, size, 3), dtype=np.uint8)
    labels = (np.arange(n) % 2).astype(np.int64)
    records = pd.DataFrame({"path": "", "label": labels, "class": [classes[k] for k in labels],
                            "sha256": "", "has_mask": False})
    write_split(out, "train", images, labels, records)
    (root / "scratch.npy").unlink()
    return out


def steps_per_second(model: keras.Model, ds: tf.data.Dataset, steps: int) -> float:
    start = time.perf_counter()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
    return steps / (time.perf_counter() - start)


def batches_per_second(ds: tf.data.Dataset, batches: int) -> float:
    it = iter(ds)
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2048, help="images in the split")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--mode", choices=("head", "full"), default="head")
    args = parser.parse_args()

    cfg = default_config()
    configure_runtime(cfg.train.precision, cfg.seed, cfg.train.deterministic)
    with tempfile.TemporaryDirectory() as tmp:
        split = load_split("train", make_split(Path(tmp), args.n, args.size))
        model = build_model(2, args.size, seed=cfg.seed)
        set_backbone_trainable(model, 0 if args.mode == "head" else None)
        model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
                      metrics=["accuracy"])

        pipeline = make_dataset(split, args.batch, shuffle_seed=cfg.seed).repeat()
        in_memory = (tf.data.Dataset.from_tensor_slices((tf.constant(np.asarray(split.images)),
                                                         tf.constant(split.labels)))
                     .batch(args.batch).repeat().prefetch(tf.data.AUTOTUNE))

        for ds in (pipeline, in_memory):  # warm-up: tracing, thread pools, page cache
            steps_per_second(model, ds, 3)
        results: dict[str, list[float]] = {"pipeline": [], "in_memory": []}
        for _ in range(args.repeats):
            results["pipeline"].append(steps_per_second(model, pipeline, args.steps))
            results["in_memory"].append(steps_per_second(model, in_memory, args.steps))
        alone = batches_per_second(make_dataset(split, args.batch, cfg.seed).repeat(), 100)

    best = {k: max(v) for k, v in results.items()}
    print(f"ResNet50 {args.size}x{args.size}, batch {args.batch}, {args.mode} training, "
          f"{args.steps} steps x {args.repeats}, op determinism on, {args.n} images memory-mapped")
    for name, values in results.items():
        print(f"  {name:10s} {best[name]:7.2f} steps/s  (runs: "
              + ", ".join(f"{v:.2f}" for v in values) + ")")
    print(f"  pipeline alone (no model): {alone:.1f} batches/s, "
          f"{alone / best['pipeline']:.0f}x the training step rate")
    print(f"ratio pipeline / in-memory: {best['pipeline'] / best['in_memory']:.3f}")


if __name__ == "__main__":
    main()
