"""Reading image and mask files: one decode path for training data, folders and single photos."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import pandas as pd

from crackxai.core.errors import DataError
from crackxai.core.progress import progress

PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk's type and CRC: the last 8 bytes of a whole PNG
MAP_CHUNK = 1024  # files in flight per Executor.map call
DECODE_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR  # keeps 16-bit, drops alpha, applies EXIF


def decode_image(data: bytes, size: int,
                 min_source_size: int) -> tuple[np.ndarray | None, str, str, tuple[int, int]]:
    """Bytes of one file -> (RGB uint8 (size, size, 3), "", note, source (h, w)) or
    (None, reason, detail, (0, 0)). `note` names a conversion ("grayscale", "16-bit") or is "".
    """
    img, reason, detail = decode_rgb(data, min_source_size)
    if img is None:
        return None, reason, detail, (0, 0)
    return (cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA), "", detail,
            (img.shape[0], img.shape[1]))


def decode_rgb(data: bytes, min_source_size: int = 1) -> tuple[np.ndarray | None, str, str]:
    """Bytes of one file -> (RGB uint8 (h, w, 3) at the source resolution, "", note) or
    (None, reason, detail): decode_image without the resize, for whole photos."""
    if not data:
        return None, "empty", "zero bytes"
    # A JPEG without its end-of-image marker was cut short; some decoders return a partial image.
    if data[:2] == b"\xff\xd8" and not data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
        return None, "truncated", "JPEG without its end-of-image marker (FFD9)"
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), DECODE_FLAGS)
    except cv2.error as exc:
        return None, "not_an_image", f"OpenCV cannot decode it: {str(exc).strip()[:120]}"
    if img is None:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and not data.rstrip(b"\x00\r\n ").endswith(PNG_END):
            return None, "truncated", "PNG without its end chunk (IEND)"
        # A whole PNG that fails is damaged inside (a chunk CRC or the zlib stream), not cut short.
        return None, "not_an_image", "OpenCV cannot decode it"
    h, w = img.shape[:2]
    if h < min_source_size or w < min_source_size:
        return None, "too_small", f"{w}x{h} < preprocess.min_source_size={min_source_size}"
    channels = 1 if img.ndim == 2 else img.shape[2]
    if img.dtype not in (np.uint8, np.uint16) or channels not in (1, 3):
        return None, "unsupported_format", f"{channels} channel(s) of {img.dtype}"
    note = ""
    if img.dtype == np.uint16:
        img = np.round(img.astype(np.float32) * (255.0 / 65535.0)).astype(np.uint8)
        note = "16-bit"
    if channels == 1:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
        note = note or "grayscale"
    else:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return img, "", note


def fit_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """`image` (h, w, 3) at (height, width): area-resized as the preprocess stage resizes, or
    returned as it is when it already has that size (no copy, no rounding)."""
    if image.shape[:2] == (height, width):
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def decode_to(data: bytes, height: int, width: int) -> np.ndarray:
    """RGB uint8 (height, width, 3) from the bytes of an image file, decoded as the preprocess
    stage decodes training images. DataError "not a usable image (reason: detail)" when the
    bytes do not decode: the caller says which image and what to do."""
    image, reason, detail, _ = decode_image(data, max(height, width), 1)
    if image is None:
        raise DataError(f"not a usable image ({reason}: {detail})")
    return fit_to(image, height, width)


def decode_mask(data: bytes, shape: tuple[int, int], size: int) -> tuple[np.ndarray | None, str]:
    """Bytes of a crack mask -> ((size, size) uint8 0/1, "") or (None, problem).

    Any non-zero source pixel is crack. Area-resizing gives each output pixel its crack fraction;
    keeping every pixel > 0 means a one-pixel crack survives a 227 -> 64 downscale.
    """
    try:
        m = cv2.imdecode(np.frombuffer(data, np.uint8), DECODE_FLAGS) if data else None
    except cv2.error:
        m = None
    if m is None:
        return None, "mask cannot be decoded"
    if m.shape[:2] != shape:
        return None, f"mask is {m.shape[1]}x{m.shape[0]}, image is {shape[1]}x{shape[0]}"
    if m.ndim == 3:
        m = m.max(axis=2)
    crack = (m > 0).astype(np.float32)
    return (cv2.resize(crack, (size, size), interpolation=cv2.INTER_AREA) > 0).astype(np.uint8), ""


def load_file(job: tuple[str, str, int, int]) -> dict[str, Any]:
    """Read, hash, check and resize one file (and its mask); never raises on a bad file."""
    path, mask_path, size, min_source_size = job
    out: dict[str, Any] = {"sha256": "", "reason": "", "detail": "", "note": "",
                           "image": None, "mask": None, "mask_problem": ""}
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        out.update(reason="missing", detail="listed in the manifest but not on disk")
        return out
    except OSError as exc:
        out.update(reason="unreadable", detail=exc.strerror or type(exc).__name__)
        return out
    out["sha256"] = hashlib.sha256(data).hexdigest()
    image, reason, info, shape = decode_image(data, size, min_source_size)
    if image is None:
        out.update(reason=reason, detail=info)
        return out
    out.update(image=image, note=info)
    if mask_path:
        try:
            out["mask"], out["mask_problem"] = decode_mask(Path(mask_path).read_bytes(), shape, size)
        except OSError as exc:
            out["mask_problem"] = f"mask cannot be read: {exc.strerror or type(exc).__name__}"
    return out


class RowSink(Protocol):
    def write(self, row: int, data: np.ndarray) -> None: ...


def decode_all(jobs: list[tuple[str, str, int, int]], images: RowSink, masks: RowSink | None,
               workers: int) -> list[dict[str, Any]]:
    """Run `load_file` on every job, writing row i of `images` (and `masks`) as it goes.

    Threads, not processes: OpenCV's decode/resize, hashlib and file reads release the GIL, and
    there is neither fork (a forked child can deadlock in OpenCV's thread pool) nor the start-up
    cost of spawn. OpenCV's own threads are switched off meanwhile: `workers` is the parallelism.
    """
    def load_row(i: int) -> dict[str, Any]:
        res = load_file(jobs[i])
        image, mask = res.pop("image"), res.pop("mask")
        if image is not None:
            images.write(i, image)
        if mask is not None and masks is not None:
            masks.write(i, mask)
        res["has_mask"] = mask is not None
        return res

    cv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            # Executor.map submits everything at once (a Future per file); in chunks, the
            # pending Futures stay a fixed number however many files there are.
            it = (res for start in range(0, len(jobs), MAP_CHUNK)
                  for res in (pool.map if workers else map)(
                      load_row, range(start, min(start + MAP_CHUNK, len(jobs)))))
            return list(progress(it, total=len(jobs), desc="decode+resize", unit="img"))
    finally:
        cv2.setNumThreads(cv_threads)


def decode_rows(rows: pd.DataFrame, raw_dir: Path, size: int, min_source_size: int,
                workers: int, classes: list[str], images: RowSink,
                masks: RowSink | None) -> pd.DataFrame:
    """Decode every manifest row i into row i of `images` (its mask into `masks`).

    Returns the rows with the per-file results (sha256, reason, detail, note, has_mask,
    mask_problem) and `good` and `label` columns added."""
    jobs = [(str(raw_dir / r.path), str(raw_dir / r.mask) if r.mask else "", size,
             min_source_size) for r in rows.itertuples()]
    results = decode_all(jobs, images, masks, workers)
    rows = pd.concat([rows, pd.DataFrame(results)], axis=1)
    rows["good"] = rows["reason"] == ""
    rows["label"] = rows["class"].map({c: i for i, c in enumerate(classes)}).astype(np.int64)
    return rows
