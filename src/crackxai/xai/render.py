"""Pictures of attribution maps: jet overlays, the image x method comparison grid, PNG writing.

Overlays show the *positive* evidence for the target class: negative values (signed SHAP and LIME
maps) are clipped to 0, then the map is divided by its maximum, so every method is drawn on the
same 0 (blue) .. strongest evidence (red) scale and 0 always means "no evidence for the class".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import matplotlib
import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from crackxai.core.io import atomic_path

# matplotlib's object API: a Figure renders to PNG with Agg by itself, so no backend is chosen
# at import (that would change global state) and no pyplot figure is left open.
JET = matplotlib.colormaps["jet"]


def positive_evidence(attribution: np.ndarray) -> np.ndarray:
    """(H, W) map -> [0, 1]: negatives clipped, divided by the maximum (all zeros stays zeros)."""
    a = np.clip(np.nan_to_num(np.asarray(attribution, dtype=np.float32)), 0.0, None)
    peak = a.max()
    return a / peak if peak > 0 else a


def overlay(image: np.ndarray, attribution: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the jet-coloured positive evidence over the image: uint8 (H, W, 3) RGB."""
    image = np.asarray(image)
    h, w = image.shape[:2]
    heat = positive_evidence(attribution)
    if heat.shape != (h, w):
        heat = cv2.resize(heat, (w, h), interpolation=cv2.INTER_LINEAR)
    colour = JET(heat)[..., :3] * 255.0
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colour
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def save_png(path: str | Path, rgb: np.ndarray) -> None:
    """Write an RGB (or grey) uint8 array as PNG, atomically."""
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(tmp, format="PNG")


def comparison_grid(
    images: np.ndarray,
    maps_by_method: dict[str, np.ndarray],
    titles: Sequence[str],
    path: str | Path,
    alpha: float = 0.5,
) -> None:
    """One PNG: a row per image (titled with `titles[i]`), columns = the original, then each
    method's overlay. `maps_by_method[m]` is (N, H, W)."""
    methods = list(maps_by_method)
    n_rows, n_cols = len(images), 1 + len(methods)
    fig = Figure(figsize=(2.0 * n_cols, 2.2 * n_rows + 0.4))
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for i, image in enumerate(images):
        cells = [image] + [overlay(image, maps_by_method[m][i], alpha) for m in methods]
        for j, cell in enumerate(cells):
            ax = axes[i, j]
            ax.imshow(cell, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title("image" if j == 0 else methods[j - 1], fontsize=10, fontweight="bold")
        axes[i, 0].set_ylabel(titles[i], fontsize=8, rotation=0, ha="right", va="center",
                              labelpad=6)
    fig.suptitle("Positive evidence for the explained class (jet: blue = none, red = strongest)",
                 fontsize=9)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
