"""Train stage: real ResNet50 models on a tiny generated dataset, a real MLflow store."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

CLASSES = ["Negative", "Positive"]


def write_processed(root: Path, n_train: int = 48, n_val: int = 16, size: int = 32,
                    seed: int = 0) -> Path:
    """A tiny data/processed in crackxai.dataset's format: grey noise, a dark line on positives."""
    rng = np.random.default_rng(seed)
    out = root / "data" / "processed"
    out.mkdir(parents=True, exist_ok=True)
    (out / "classes.json").write_text(json.dumps({"classes": CLASSES, "image_size": size}))
    for split, n in (("train", n_train), ("val", n_val), ("test", n_val)):
        labels = rng.permutation(np.arange(n) % 2).astype(np.int64)
        images = rng.integers(140, 200, (n, size, size, 3), dtype=np.uint8)
        for img, label in zip(images, labels, strict=True):
            if label == 1:
                p, q = rng.integers(0, size, 2), rng.integers(0, size, 2)
                cv2.line(img, tuple(map(int, p)), tuple(map(int, q)), (40, 40, 40), 2)
        np.save(out / f"{split}_images.npy", images)
        np.save(out / f"{split}_labels.npy", labels)
        pd.DataFrame({"index": np.arange(n), "path": [f"raw/{split}/{i}.jpg" for i in range(n)],
                      "label": labels, "class": [CLASSES[k] for k in labels],
                      "sha256": [hashlib.sha256(im.tobytes()).hexdigest() for im in images],
                      "has_mask": False}).to_csv(out / f"{split}.csv", index=False)
    (root / "data" / "manifest.csv").write_text("path,class,sha256,mask\n")
    return out
