"""Which test images to explain, and what the model says about them.

`select` takes the explicit indices if given, else `n_images` drawn with the seed: the
misclassified ones first (up to `max_misclassified`), then correctly classified ones, alternating
between classes. The explained class is `target`, else the predicted one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from crackxai.core.errors import ConfigError
from crackxai.data.processed import Split

Predict = Callable[[np.ndarray], np.ndarray]


def select_images(
    labels: np.ndarray,
    predict_labels: Callable[[np.ndarray], np.ndarray],
    n_images: int,
    max_misclassified: int,
    seed: int,
    chunk: int = 256,
) -> np.ndarray:
    """`n_images` test indices: misclassified first (up to `max_misclassified`), then correct ones
    alternating between classes. Candidates are visited in a seeded random order and predicted
    chunk by chunk, stopping as soon as there are enough of each kind (not the whole split)."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    order = np.random.default_rng(seed).permutation(len(labels))
    n = min(n_images, len(labels))
    want_wrong = min(max_misclassified, n)
    wrong: list[int] = []
    right: dict[int, list[int]] = {int(c): [] for c in classes}
    for start in range(0, len(order), chunk):
        idx = order[start:start + chunk]
        for i, p in zip(idx, predict_labels(idx), strict=True):
            (wrong if p != labels[i] else right[int(labels[i])]).append(int(i))
        if len(wrong) >= want_wrong and all(len(r) >= n for r in right.values()):
            break
    picks = wrong[:want_wrong]
    # fill up from correct ones, the class least represented so far first
    queues = {c: list(r) for c, r in right.items()}
    queues[-1] = wrong[want_wrong:]  # last resort: more misclassified ones
    while len(picks) < n:
        counts = {c: sum(labels[i] == c for i in picks) for c in right}
        for c in sorted(right, key=lambda c: (counts[c], c)) + [-1]:
            if queues[c]:
                picks.append(queues[c].pop(0))
                break
    return np.array(sorted(picks, key=lambda i: (labels[i], i)), dtype=np.int64)


def explicit_images(images: Sequence[int], n_test: int) -> np.ndarray:
    """The given test indices, checked, in order, repeats dropped."""
    bad = [i for i in images if not 0 <= i < n_test]
    if bad:
        raise ConfigError(
            f"explain.images has indices {bad} outside the test split, which has {n_test} images "
            f"(valid: 0..{n_test - 1}). Fix explain.images, or set it to [] to pick "
            "explain.n_images images automatically."
        )
    return np.array(list(dict.fromkeys(images)), dtype=np.int64)  # order kept, repeats dropped


@dataclass
class Selection:
    """The images to explain, with what the model says about them."""

    rows: np.ndarray  # test-split indices
    images: np.ndarray  # (N, H, W, 3) uint8
    targets: np.ndarray  # class explained per image
    masks: list[np.ndarray | None]  # crack mask, or None
    info: pd.DataFrame  # one row per image: labels, prediction, probability, ...

    @property
    def names(self) -> list[str]:
        """File names of the images' maps and overlays: <row>_<test index>."""
        return [f"{row:03d}_{index}" for row, index in enumerate(self.rows)]

    def row_titles(self) -> list[str]:
        """Grid row titles: index, true class, predicted class and probability (and the
        explained class where it is not the predicted one)."""
        return [_row_title(r) for _, r in self.info.iterrows()]


def _row_title(r: pd.Series) -> str:
    title = f"#{r['index']}  true {r['true_class']}\npred {r['predicted_class']} " \
            f"({r['probability']:.2f})"
    return title + (f"\nexplained: {r['target_class']}" if r["target"] != r["predicted"] else "")


def select(test: Split, predictor: Predict, *, images: Sequence[int], n_images: int,
           max_misclassified: int, target: int | None, seed: int) -> Selection:
    """The images to explain (`images` if given, else `select_images`) and their predictions."""
    if images:
        rows = explicit_images(list(images), len(test))
    else:
        rows = select_images(test.labels, lambda idx: predictor(test.images[idx]).argmax(1),
                             n_images, max_misclassified, seed)
    chosen = np.asarray(test.images[rows])
    labels = test.labels[rows]
    probs = predictor(chosen)
    predicted = probs.argmax(1)
    targets = predicted if target is None else np.full(len(rows), target)
    has_mask = test.has_mask[rows]
    masks = [np.asarray(test.masks[i]) if ok else None for i, ok in zip(rows, has_mask, strict=True)]
    n = np.arange(len(rows))
    info = pd.DataFrame({
        "row": n, "index": rows, "label": labels, "true_class": [test.classes[i] for i in labels],
        "predicted": predicted, "predicted_class": [test.classes[i] for i in predicted],
        "probability": probs[n, predicted], "target": targets,
        "target_class": [test.classes[i] for i in targets], "target_probability": probs[n, targets],
        "misclassified": predicted != labels, "has_mask": has_mask,
    })
    return Selection(rows, chosen, targets, masks, info)
