"""Pictures and pages of a whole-photo inspection: the per-photo overlay and the folder summary.

The overlay tints the photo with a heat map on an *absolute* 0..1 scale (a crack probability, or
a Grad-CAM map weighted by its tile's probability), transparent where the heat is 0, so a clean
photo stays a clean photo; flagged regions are drawn as red boxes labelled with their peak
probability. Large photos are drawn at most OVERLAY_MAX_SIDE px a side (a 4000 x 3000 PNG would
be tens of MB); the JSON keeps every box in source pixels. The summary page is
templates/inspect.html rendered by Jinja2 with autoescaping, like the explain report.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import jinja2
import numpy as np

from crackxai.xai.render import JET

OVERLAY_MAX_SIDE = 1600
BOX_RGB = (255, 32, 32)
HEAT_ALPHA = 0.6  # opacity of the colour where the heat is 1
TEMPLATE = "inspect.html"


def overlay(photo: np.ndarray, heat: np.ndarray, regions: Sequence[Mapping[str, Any]],
            max_side: int = OVERLAY_MAX_SIDE) -> np.ndarray:
    """RGB uint8: `photo` (H, W, 3) tinted with jet(`heat`) where heat (H, W, in [0, 1]) is > 0,
    each region's "box" outlined and labelled with its "max_p"; at most `max_side` px a side."""
    h, w = photo.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = photo if scale == 1.0 else cv2.resize(photo, size, interpolation=cv2.INTER_AREA)
    heat = np.clip(np.asarray(heat, np.float32), 0.0, 1.0)
    if scale != 1.0:
        heat = cv2.resize(heat, size, interpolation=cv2.INTER_AREA)
    alpha = (HEAT_ALPHA * heat)[..., None]
    out = small.astype(np.float32) * (1 - alpha) + JET(heat)[..., :3].astype(np.float32) * 255 * alpha
    out = np.clip(np.round(out), 0, 255).astype(np.uint8)
    thickness = max(2, round(max(size) / 400))
    for region in regions:
        x0, y0, x1, y1 = (round(v * scale) for v in region["box"])
        cv2.rectangle(out, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), BOX_RGB, thickness)
        cv2.putText(out, f"{region['max_p']:.2f}", (x0 + 2, max(12, y0 - 4)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thickness, BOX_RGB, max(1, thickness // 2),
                    cv2.LINE_AA)
    return out


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("crackxai.evaluation", "templates"),
                              autoescape=jinja2.select_autoescape(["html"]),
                              keep_trailing_newline=True, undefined=jinja2.StrictUndefined)


def summary_html(photos: Sequence[Mapping[str, Any]], *, model: str, tile: int, stride: int,
                 threshold: float, explain: str | None) -> str:
    """The folder's index page: one row per photo in the given order (the summary rows: photo,
    status, crack_score, flagged_tiles, tiles, regions, width, height, padded, overlay, json,
    error), unreadable photos as error rows."""
    return _environment().get_template(TEMPLATE).render(
        photos=list(photos), errors=sum(p["status"] != "ok" for p in photos), model=model,
        tile=tile, stride=stride, threshold=threshold, explain=explain)
