"""How often the out-of-distribution detector (crackxai.models.ood) flags real test images and
images unlike the training data, for a trained project.

    python benchmarks/ood_rates.py PROJECT [--quantiles 0.95,0.99]

PROJECT holds data/processed and models/model.keras (e.g. a `dvc exp run -S
experiment=real_sample` checkout). The detector is refit from the project's train and val splits
for each quantile, exactly as the train stage fits it, then applied to the test split, uniform
noise, blank frames (black, white, 17 grey levels) and scikit-image's bundled photos. Prints one
table of flagged rates.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from crackxai.data.processed import load_split
from crackxai.models.io import load_model
from crackxai.models.ood import FeatureExtractor, fit_detector


def outsiders(size: int) -> dict[str, np.ndarray]:
    from skimage import data

    def fit(photo: np.ndarray) -> np.ndarray:
        photo = np.repeat(photo[..., None], 3, -1) if photo.ndim == 2 else photo[..., :3]
        return cv2.resize(photo, (size, size), interpolation=cv2.INTER_AREA)[None]

    rng = np.random.default_rng(0)
    sets = {"noise (uniform)": rng.integers(0, 256, (100, size, size, 3), np.uint8),
            "noise (grey, sd 30)": np.clip(rng.normal(128, 30, (100, size, size, 3)), 0, 255)
            .astype(np.uint8),
            "blank frames": np.stack([np.full((size, size, 3), v, np.uint8)
                                      for v in range(0, 256, 15)])}
    for name in ("astronaut", "coffee", "chelsea", "camera", "rocket", "horse", "page", "text",
                 "brick", "grass", "gravel", "moon"):
        photo = getattr(data, name)()
        if photo.dtype != np.uint8:
            photo = (255 * photo.astype(np.float64) / max(photo.max(), 1)).astype(np.uint8)
        sets[name] = fit(photo)
    return sets


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("project", type=Path)
    p.add_argument("--quantiles", default="0.95,0.99")
    args = p.parse_args()
    processed = args.project / "data" / "processed"
    model = load_model(args.project / "models" / "model.keras")
    train, val, test = (load_split(s, processed) for s in ("train", "val", "test"))
    extractor = FeatureExtractor(model, 64)
    features = {"train": extractor(train.images)[1], "val": extractor(val.images)[1]}
    probs, features["test"] = extractor(test.images)
    accuracy = float(np.mean(probs.argmax(1) == test.labels))
    sets = {name: extractor(images)[1] for name, images in outsiders(model.input_shape[1]).items()}
    quantiles = [float(q) for q in args.quantiles.split(",")]
    detectors = [fit_detector(features["train"], features["val"], q, train.labels)
                 for q in quantiles]
    print(f"{len(train)} train / {len(val)} val / {len(test)} test images, test accuracy "
          f"{accuracy:.3f}; flagged out of distribution at train.ood_quantile =")
    print(f"{'':24s}" + "".join(f"{q:>10}" for q in quantiles))
    for name, f in [("val", features["val"]), ("test (real)", features["test"]), *sets.items()]:
        print(f"{name + f' ({len(f)})':24s}" + "".join(f"{d.flags(f).mean():>10.1%}"
                                                      for d in detectors))


if __name__ == "__main__":
    main()
