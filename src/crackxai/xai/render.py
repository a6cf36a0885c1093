"""Pictures of attribution maps: jet overlays, the image x method comparison grid, PNG writing.

Overlays show the *positive* evidence for the target class: negative values (signed SHAP and LIME
maps) are clipped to 0, then the map is divided by its maximum, so every method is drawn on the
same 0 (blue) .. strongest evidence (red) scale and 0 always means "no evidence for the class".

Figures use matplotlib's object API (a Figure on its own Agg canvas): no pyplot state and no
backend chosen at import, so importing this module changes nothing for the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from crackxai.core.io import atomic_path

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
    method's overlay. `maps_by_method[m]` is (N, H, W).

    Sized for reading in a page about 1,200 px wide: 1.6 in cells at 100 dpi, 11 pt row titles
    in a column of their own (at 8 pt beside the image they came out about 6 px high once the
    browser scaled the figure down)."""
    methods = list(maps_by_method)
    n_rows, n_cols = len(images), 1 + len(methods)
    title_width, head = 2.2, 0.9  # inches: the row-title column, the space above the first row
    height = 1.75 * n_rows + head
    fig = Figure(figsize=(title_width + 1.6 * n_cols, height))
    FigureCanvasAgg(fig)  # files only: the Agg canvas, whatever pyplot's backend is
    grid = fig.add_gridspec(n_rows, n_cols + 1, width_ratios=[title_width] + [1.6] * n_cols,
                            left=0.005, right=0.995, top=1 - head / height,
                            bottom=0.01, wspace=0.04, hspace=0.08)
    for i, image in enumerate(images):
        label = fig.add_subplot(grid[i, 0])
        label.axis("off")
        label.text(0.97, 0.5, titles[i], fontsize=11, ha="right", va="center",
                   transform=label.transAxes)
        cells = [image] + [overlay(image, maps_by_method[m][i], alpha) for m in methods]
        for j, cell in enumerate(cells):
            ax = fig.add_subplot(grid[i, j + 1])
            ax.imshow(cell, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title("image" if j == 0 else methods[j - 1], fontsize=12,
                             fontweight="bold")
    fig.suptitle("Positive evidence for the explained class (jet: blue = none, red = strongest)",
                 fontsize=11, y=1 - 0.12 / height, va="top")
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def grid_rows(n_images: int, n_rows: int) -> np.ndarray:
    """Which explained images the grid shows: `n_rows` of them, evenly spaced (all if fewer)."""
    if n_images <= n_rows:
        return np.arange(n_images)
    return np.unique(np.round(np.linspace(0, n_images - 1, n_rows)).astype(int))


def interval_chart(rows: Sequence[tuple[str, Sequence[tuple[float, float, float] | None]]],
                   panels: Sequence[str], path: str | Path, chance: Sequence[float | None] = (),
                   ) -> None:
    """Dot-and-whisker panels, one per metric (`panels`: titles), a row per method:
    rows = [(method, [(mean, low, high) or None per panel]), ...] best first. `chance[k]`, where
    given, is drawn as a dashed line (the random map's mean)."""
    fig = Figure(figsize=(2.3 * len(panels), 0.42 * len(rows) + 1.1))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    y = np.arange(len(rows))[::-1]
    for k, (ax, title) in enumerate(zip(axes, panels, strict=True)):
        for yi, (_, values) in zip(y, rows, strict=True):
            v = values[k]
            if v is not None:
                ax.errorbar(v[0], yi, xerr=[[v[0] - v[1]], [v[2] - v[0]]], fmt="o", color="C0",
                            ecolor="C0", capsize=3, markersize=4)
        if k < len(chance) and chance[k] is not None:
            ax.axvline(chance[k], color="grey", linestyle="--", linewidth=1)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, [name for name, _ in rows], fontsize=9)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def curve_chart(curves: dict[str, tuple[Sequence[str], Sequence[float]]], path: str | Path,
                title: str, ylabel: str) -> None:
    """One line per method: curves = {method: (x labels, y values)}, x labels shared."""
    fig = Figure(figsize=(5.0, 3.2))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for method, (labels, values) in curves.items():
        ax.plot(range(len(values)), values, marker="o", markersize=3, label=method)
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(title, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
