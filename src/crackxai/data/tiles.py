"""Tiling a whole photo at the training patch scale, and stitching per-tile results back.

The classifier was trained on patches cropped from photos (the Kaggle data set's 227 x 227 px,
downscaled to the model input). A photo of any size is therefore cut into `tile` x `tile` squares
in *source* pixels, every `stride` pixels, the last row and column aligned to the photo's edge so
that every pixel is covered; each tile is then area-resized to the model input, exactly as the
preprocess stage resizes a patch. Nothing is stretched: a photo smaller than one tile in a
dimension is padded (mirrored, so the padding has the photo's own texture and no edge that could
look like a crack) up to the tile, and the results are cropped back to the photo.

    tiling = plan(h, w, tile=227, stride=227)
    tiles = cut(pad(photo, tiling), tiling, 64)        # (N, 64, 64, 3) uint8
    probability_map = stitch(tiling, probs, "mean")    # (h, w) float32 over the photo
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from crackxai.data.synthetic import REF_SIZE

# The data set's patch side in source pixels (the Kaggle patches; the synthetic generator draws
# its patches at this size too): the default tile.
PATCH_SIZE = REF_SIZE
REDUCTIONS = ("mean", "max")


@dataclass(frozen=True)
class Tiling:
    """Where the tiles of one photo lie. Tile i covers rows origins[i, 0] .. + tile and columns
    origins[i, 1] .. + tile of the *padded* photo, whose photo part starts at (top, left)."""

    height: int  # the photo's
    width: int
    tile: int
    stride: int
    top: int  # padding above and left of the photo (0 unless it is smaller than a tile)
    left: int
    padded_height: int
    padded_width: int
    origins: np.ndarray  # (N, 2) int: (row, column) of each tile's top-left corner, padded coords

    @property
    def padded(self) -> bool:
        return (self.padded_height, self.padded_width) != (self.height, self.width)

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, columns) of tiles."""
        return len(np.unique(self.origins[:, 0])), len(np.unique(self.origins[:, 1]))

    def __len__(self) -> int:
        return len(self.origins)

    def boxes(self) -> np.ndarray:
        """(N, 4) int [x0, y0, x1, y1) of each tile in photo pixels, clipped to the photo."""
        y0 = np.clip(self.origins[:, 0] - self.top, 0, self.height)
        x0 = np.clip(self.origins[:, 1] - self.left, 0, self.width)
        y1 = np.clip(self.origins[:, 0] - self.top + self.tile, 0, self.height)
        x1 = np.clip(self.origins[:, 1] - self.left + self.tile, 0, self.width)
        return np.stack([x0, y0, x1, y1], axis=1)


def starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile starts along one axis of `length` >= `tile` pixels: every `stride`, plus one flush
    with the far edge when the stride does not land there (so every pixel is covered)."""
    out = list(range(0, length - tile + 1, stride))
    if out[-1] + tile < length:
        out.append(length - tile)
    return out


def plan(height: int, width: int, tile: int = PATCH_SIZE, stride: int | None = None) -> Tiling:
    """The tiling of a height x width photo (stride defaults to the tile: no overlap)."""
    stride = tile if stride is None else stride
    if tile < 1 or not 1 <= stride <= tile:
        raise ValueError(f"tile {tile} and stride {stride}: need tile >= 1 and 1 <= stride <= "
                         "tile (a larger stride would leave pixels uncovered)")
    ph, pw = max(height, tile), max(width, tile)
    rows, cols = starts(ph, tile, stride), starts(pw, tile, stride)
    origins = np.array([(r, c) for r in rows for c in cols], dtype=np.int64)
    return Tiling(height, width, tile, stride, (ph - height) // 2, (pw - width) // 2, ph, pw,
                  origins)


def pad(photo: np.ndarray, tiling: Tiling) -> np.ndarray:
    """The photo mirrored out to the padded size (itself when no padding is needed)."""
    if not tiling.padded:
        return photo
    bottom = tiling.padded_height - tiling.height - tiling.top
    right = tiling.padded_width - tiling.width - tiling.left
    # BORDER_REFLECT_101 repeats the reflection when the padding exceeds the photo.
    return cv2.copyMakeBorder(photo, tiling.top, bottom, tiling.left, right,
                              cv2.BORDER_REFLECT_101)


def cut(padded: np.ndarray, tiling: Tiling, size: int | tuple[int, int]) -> np.ndarray:
    """(N, h, w, 3) uint8: each tile of the padded photo area-resized to the model input `size`
    (an int for square inputs, else (h, w)), as the preprocess stage resizes a patch."""
    h, w = (size, size) if isinstance(size, int) else size
    t = tiling.tile
    out = np.empty((len(tiling), h, w, padded.shape[2]), np.uint8)
    for i, (r, c) in enumerate(tiling.origins.tolist()):
        crop = padded[r:r + t, c:c + t]
        out[i] = crop if (h, w) == (t, t) else cv2.resize(crop, (w, h),
                                                          interpolation=cv2.INTER_AREA)
    return out


def stitch(tiling: Tiling, values: np.ndarray, reduce: str = "mean") -> np.ndarray:
    """(height, width) float32 over the photo from one value per tile (N,) or one map per tile
    (N, h, w), resized to the tile's footprint. Where tiles overlap, `reduce` is "mean" (each
    pixel the average of the tiles that see it) or "max"; pixels no tile saw (none, by
    construction) stay 0."""
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce={reduce!r}: one of {REDUCTIONS}")
    values = np.asarray(values, np.float32)
    if len(values) != len(tiling):
        raise ValueError(f"{len(values)} values for {len(tiling)} tiles")
    t = tiling.tile
    canvas = np.zeros((tiling.padded_height, tiling.padded_width), np.float32)
    count = np.zeros_like(canvas) if reduce == "mean" else None
    for (r, c), value in zip(tiling.origins.tolist(), values, strict=True):
        if value.ndim == 2 and value.shape != (t, t):
            value = cv2.resize(value, (t, t), interpolation=cv2.INTER_LINEAR)
        window = canvas[r:r + t, c:c + t]
        if count is None:
            np.maximum(window, value, out=window)
        else:
            window += value
            count[r:r + t, c:c + t] += 1
    if count is not None:
        np.divide(canvas, count, out=canvas, where=count > 0)
    return canvas[tiling.top:tiling.top + tiling.height, tiling.left:tiling.left + tiling.width]
