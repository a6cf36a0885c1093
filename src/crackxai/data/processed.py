"""The preprocessed dataset on disk, as written by `preprocess` and read by every later stage.

data/processed/
  classes.json             {"classes": [...], "image_size": S}   class index = position
  {split}_images.npy       uint8 (N, S, S, 3) RGB, memory-mappable
  {split}_labels.npy       int64 (N,)
  {split}_masks.npy        uint8 (N, S, S) 0/1 crack masks (only when the source has masks)
  {split}.csv              one row per image: index, path, label, class, sha256, has_mask
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crackxai.core.errors import DataError
from crackxai.core.io import NpyRows

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    name: str
    images: np.ndarray  # (N, S, S, 3) uint8, memory-mapped
    labels: np.ndarray  # (N,) int64
    masks: np.ndarray | None  # (N, S, S) uint8 or None when the data has no masks
    records: pd.DataFrame  # per-row source file, class, sha256, has_mask
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def has_mask(self) -> np.ndarray:
        if self.masks is None:
            return np.zeros(len(self), dtype=bool)
        return self.records["has_mask"].to_numpy(dtype=bool)


def read_classes(processed_dir: str | Path) -> list[str]:
    return list(_read_meta(Path(processed_dir))["classes"])


def _read_meta(processed_dir: Path) -> dict[str, Any]:
    """classes.json as a dict with a list of str "classes" (and usually an int "image_size")."""
    path = processed_dir / "classes.json"
    if not path.is_file():
        raise DataError(
            f"'{path}' not found: the preprocessed dataset is missing. "
            "Run `dvc repro preprocess` (or `python -m crackxai.preprocess`) first."
        )
    try:
        meta = json.loads(path.read_text())
        classes, size = meta["classes"], meta.get("image_size")
        if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)
                and (size is None or isinstance(size, int))):
            raise ValueError("'classes' is not a list of names or 'image_size' not an integer")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        # garbled bytes (UnicodeDecodeError/JSONDecodeError are ValueErrors) or the wrong keys
        raise _unreadable(path, processed_dir, exc) from None
    return meta


def load_split(name: str, processed_dir: str | Path, mmap: bool = True) -> Split:
    """Load one split; images are memory-mapped so large sets do not have to fit in RAM."""
    if name not in SPLITS:
        raise DataError(f"Unknown split '{name}'. Allowed: {', '.join(SPLITS)}.")
    d = Path(processed_dir)
    meta = _read_meta(d)
    classes = list(meta["classes"])
    files = {k: d / f"{name}_{k}.npy" for k in ("images", "labels", "masks")}
    for key in ("images", "labels"):
        if not files[key].is_file():
            raise DataError(
                f"'{files[key]}' not found. Rerun `dvc repro preprocess` to rebuild {d}."
            )
    mode = "r" if mmap else None
    images = _load_npy(files["images"], mode, d)
    labels = _load_npy(files["labels"], None, d)
    masks = _load_npy(files["masks"], mode, d) if files["masks"].is_file() else None
    table = d / f"{name}.csv"
    try:
        records = pd.read_csv(table)
    except (OSError, ValueError) as exc:  # missing, empty or garbled (pandas errors are ValueErrors)
        raise _unreadable(table, d, exc) from None
    _check_consistent(d, name, images, labels, masks, records, classes, meta.get("image_size"))
    return Split(name, images, labels, masks, records, classes)


def _check_consistent(d: Path, name: str, images: np.ndarray, labels: np.ndarray,
                      masks: np.ndarray | None, records: pd.DataFrame, classes: list[str],
                      size: int | None) -> None:
    """Catch what np.load and read_csv accept but is wrong: a flipped .npy header byte can turn
    (N, S, S, 3) into (N, S, S, 2) or int64 into bytes, and a flipped label byte gives a label
    outside the classes or another class. Cheap: dtype/shape and O(N) label checks only."""
    s = size if size is not None else (images.shape[1] if images.ndim == 4 else -1)
    n = len(labels) if labels.ndim == 1 else -1
    problem = {}
    if images.dtype != np.uint8 or images.shape != (n, s, s, 3):
        problem[f"{name}_images.npy"] = (f"holds {images.dtype} {images.shape}, expected uint8 "
                                         f"({n}, {s}, {s}, 3) for the {n} labels in {name}_labels.npy and "
                                         f"image_size {s} in classes.json")
    if labels.dtype != np.int64 or labels.ndim != 1:
        problem[f"{name}_labels.npy"] = f"holds {labels.dtype} {labels.shape}, expected int64 (N,)"
    elif len(labels) and not ((labels >= 0) & (labels < len(classes))).all():
        problem[f"{name}_labels.npy"] = (f"holds labels outside [0, {len(classes)}) of the "
                                         f"{len(classes)} classes in classes.json")
    if masks is not None and (masks.dtype != np.uint8 or masks.shape != (n, s, s)):
        problem[f"{name}_masks.npy"] = (f"holds {masks.dtype} {masks.shape}, expected uint8 "
                                        f"({n}, {s}, {s})")
    missing = [c for c in RECORD_COLUMNS if c not in records.columns]
    if missing or len(records) != n:
        problem[f"{name}.csv"] = (f"has {len(records)} rows for the {n} labels in {name}_labels.npy"
                                  + (f" and lacks column(s) {', '.join(missing)}" if missing else ""))
    elif records["has_mask"].dtype != bool:
        problem[f"{name}.csv"] = "has a has_mask column that is not all True/False"
    elif f"{name}_labels.npy" not in problem and (
            not np.array_equal(records["label"].to_numpy(), labels)
            or list(records["class"]) != [classes[k] for k in labels]):
        problem[f"{name}.csv"] = (f"disagrees with {name}_labels.npy and classes.json on "
                                  "some rows' label or class")
    if problem:
        found = "; ".join(f"'{d / f}' {why}" for f, why in problem.items())
        raise DataError(
            f"The processed dataset does not add up: {found}. A file was damaged or comes from "
            f"another run: rebuild {d} with `dvc repro preprocess` (or `dvc checkout {d}` to "
            "restore the last good copy from the DVC cache)."
        )


def _load_npy(path: Path, mmap_mode: str | None, processed_dir: Path) -> np.ndarray:
    """np.load with a one-paragraph DataError for a truncated or corrupt file: numpy says
    'mmap length is greater than file size' or 'cannot reshape array', which name neither the
    file nor the fix."""
    try:
        return np.load(path, mmap_mode=mmap_mode)
    except Exception as exc:  # a garbled header also leaks tokenize.TokenError, SyntaxError, ...
        raise _unreadable(path, processed_dir, exc) from None


def _unreadable(path: Path, processed_dir: Path, exc: BaseException) -> DataError:
    reason = (str(exc).splitlines() or [type(exc).__name__])[0]
    return DataError(
        f"'{path}' is truncated or corrupt ({path.stat().st_size if path.exists() else 0} bytes; "
        f"{reason}). Rebuild {processed_dir} with `dvc repro preprocess` (or `dvc checkout "
        f"{processed_dir}` to restore the last good copy from the DVC cache)."
    )


RECORD_COLUMNS = ("path", "label", "class", "sha256", "has_mask")  # {split}.csv, after "index"
CHUNK = 2048  # rows copied at a time: memory stays flat however large the split


def write_classes(out: str | Path, classes: list[str], image_size: int) -> None:
    """classes.json: the class names (index = position) and the image side."""
    Path(out, "classes.json").write_text(
        json.dumps({"classes": list(classes), "image_size": int(image_size)}, indent=2) + "\n")


def write_split(out: str | Path, name: str, images: np.ndarray, labels: np.ndarray,
                records: pd.DataFrame, masks: np.ndarray | None = None,
                idx: np.ndarray | None = None) -> None:
    """{name}_images.npy, _labels.npy, (_masks.npy) and {name}.csv from the rows `idx` of the
    given arrays (all rows when None), copied in chunks so memory-mapped sources stay on disk.

    `records` holds RECORD_COLUMNS for the same rows as `images` (indexed like them)."""
    out = Path(out)
    idx = np.arange(len(labels)) if idx is None else np.asarray(idx)
    size = images.shape[1]
    with NpyRows(out / f"{name}_images.npy", (len(idx), size, size, 3), np.uint8) as dst:
        copy_rows(dst, images, idx)
    if masks is not None:
        with NpyRows(out / f"{name}_masks.npy", (len(idx), size, size), np.uint8) as dst:
            copy_rows(dst, masks, idx)
    write_split_tables(out, name, labels, records, idx)


def copy_rows(dst: NpyRows, src: Any, idx: np.ndarray) -> None:
    """Row k of `dst` from `src[idx[k]]`, CHUNK rows at a time (memory stays flat), each chunk
    read in source order (a memory-mapped source is read front to back)."""
    for start in range(0, len(idx), CHUNK):
        part = idx[start:start + CHUNK]
        order = np.argsort(part, kind="stable")
        rows = np.empty((len(part), *dst.shape[1:]), dst.dtype)
        rows[order] = src[part[order]]
        dst.write(start, rows)


def write_split_tables(out: str | Path, name: str, labels: np.ndarray, records: pd.DataFrame,
                       idx: np.ndarray) -> None:
    """{name}_labels.npy and {name}.csv of the rows `idx` (the arrays are written apart)."""
    np.save(Path(out) / f"{name}_labels.npy", np.asarray(labels)[idx].astype(np.int64))
    table = records.iloc[idx][list(RECORD_COLUMNS)].reset_index(drop=True)
    table.insert(0, "index", np.arange(len(idx)))
    table.to_csv(Path(out) / f"{name}.csv", index=False)
