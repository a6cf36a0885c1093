"""What a whole-photo inspection concludes from its stitched crack-probability map.

- flagged regions: the map thresholded, split into 8-connected components, each reported as a
  bounding box in photo pixels with the component's area and its max / mean probability;
- the photo's crack score: its largest tile probability (one confident tile is a crack, however
  clean the rest of the photo is);
- localisation against a ground-truth crack mask (synthetic surfaces): the pointing game of
  crackxai.xai.metrics (the map's maximum within `tolerance` px of the mask) and the IoU of the
  thresholded map with the mask, each beside what a *random* map scores: for the pointing game a
  map of independent noise, whose maximum is a uniformly random pixel (it hits with the
  probability of the dilated mask's area); for the IoU the same tile values dealt to randomly
  permuted tiles and stitched the same way (as much flagged area, in random places). (The
  permuted map's maximum is no fair pointing baseline: with overlapping tiles averaged, a high
  value peaks where fewest tiles overlap it, at the photo's edges, away from most cracks.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from crackxai.xai import metrics as xai_metrics


def crack_score(tile_probabilities: np.ndarray) -> float:
    """The photo's score: its largest tile probability (0 for a photo without tiles)."""
    p = np.asarray(tile_probabilities, np.float64)
    return float(p.max()) if p.size else 0.0


def flagged_regions(probability_map: np.ndarray, threshold: float) -> list[dict[str, Any]]:
    """Connected regions (8-connectivity) where the map is >= threshold, largest max first:
    {"box": [x0, y0, x1, y1) in photo pixels, "area": pixels, "max_p", "mean_p"}."""
    pmap = np.asarray(probability_map, np.float32)
    n, labels, stats, _ = cv2.connectedComponentsWithStats((pmap >= threshold).astype(np.uint8),
                                                           connectivity=8)
    if n <= 1:
        return []
    # One pass for every sum (scipy.ndimage.mean/maximum with many labels take seconds on a
    # 12-megapixel map); each peak from its own bounding box only.
    sums = np.bincount(labels.ravel(), weights=pmap.ravel(), minlength=n)
    regions = []
    for i, (x, y, w, h, area) in enumerate(stats.tolist()[1:], start=1):
        box = (slice(y, y + h), slice(x, x + w))
        peak = pmap[box][labels[box] == i].max()
        regions.append({"box": [x, y, x + w, y + h], "area": area,
                        "max_p": round(float(peak), 4), "mean_p": round(float(sums[i] / area), 4)})
    return sorted(regions, key=lambda r: (-r["max_p"], r["box"]))


def iou(score_map: np.ndarray, mask: np.ndarray, threshold: float) -> float:
    """IoU of {map >= threshold} with the mask (> 0); 0 when both are empty."""
    hit, truth = np.asarray(score_map) >= threshold, np.asarray(mask) > 0
    union = np.count_nonzero(hit | truth)
    return float(np.count_nonzero(hit & truth) / union) if union else 0.0


def localisation(score_map: np.ndarray, mask: np.ndarray, threshold: float,
                 tolerance: int) -> dict[str, float]:
    """{"pointing_game", "iou"} of a stitched map against a crack mask of the same shape."""
    return {"pointing_game": xai_metrics.pointing_game(score_map, mask, tolerance),
            "iou": iou(score_map, mask, threshold)}


def random_localisation(tile_values: np.ndarray, stitch: Callable[[np.ndarray], np.ndarray],
                        mask: np.ndarray, threshold: float, tolerance: int, draws: int = 20,
                        seed: int = 0) -> dict[str, float]:
    """`localisation` of a random map (module docstring): the pointing game's chance level, and
    the IoU averaged over `draws` maps made of the same per-tile values (scalars or maps) given
    to randomly permuted tiles and put together by `stitch` (e.g.
    `lambda v: crackxai.data.tiles.stitch(tiling, v)`)."""
    rng = np.random.default_rng(seed)
    values = np.asarray(tile_values)
    ious = [iou(stitch(values[rng.permutation(len(values))]), mask, threshold)
            for _ in range(draws)]
    return {"pointing_game": xai_metrics.pointing_game_chance(mask, tolerance),
            "iou": float(np.mean(ious))}
