"""Preprocess: check, de-duplicate, resize and split the raw images into memory-mappable arrays.

    python -m crackxai.preprocess [preprocess.image_size=150 ...]
    python -m crackxai.preprocess --params params.yaml          # how dvc.yaml runs it

Reads `data/manifest.csv` (written by `download`) and the files under `data/raw/<class>/`, and
writes `data/processed/` (format: crackxai.dataset) plus `reports/data_quality.json`.

1. Every listed file is read once; its sha256 and its decode come from the same bytes. Bad files
   (missing, empty, truncated, not an image, unsupported pixel format, smaller than
   `preprocess.min_source_size`) are rejected and listed with the reason; grayscale, RGBA and
   16-bit images are converted to 8-bit RGB. The stage fails if fewer than
   `preprocess.min_good_fraction` of the files are good. Raw files are never modified.
2. Exact duplicates (same sha256) are kept once, the first in sorted path order; content found
   under two classes is dropped from both (its label is ambiguous).
3. Images are resized to `preprocess.image_size` with cv2.INTER_AREA. Crack masks, where the
   source has them, are area-resized and thresholded at > 0 so one-pixel cracks survive.
4. A stratified split seeded by `seed`. Duplicates are removed first, so no content hash can land
   in two splits. Rows of each split are in a seeded random order (any prefix mixes the classes).

Caveat: the 40,000 patches of the surface-crack dataset are 227x227 crops of 458 photos, and no
photo IDs are published, so crops of one photo can land in train and test. Test accuracy is then
an optimistic estimate of accuracy on new photos (the same note is in the report).

Decoding runs in `preprocess.workers` threads and goes straight into a memory-mapped staging
array, so memory stays flat however large the dataset is.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from crackxai.cli import log, run_stage
from crackxai.config import Config
from crackxai.dataset import SPLITS
from crackxai.errors import DataError
from crackxai.io import atomic_dir, write_json
from crackxai.paths import DATA_QUALITY, MANIFEST, PROCESSED_DIR, RAW_DIR

STAGE = "preprocess"
MANIFEST_COLUMNS = ("path", "class", "sha256", "mask")
DECODE_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR  # keeps 16-bit, drops alpha, applies EXIF
RERUN_DOWNLOAD = "Rerun the download stage (`dvc repro download` or `python -m crackxai.download`)"
CAVEAT = (
    "The 40,000 patches of the surface-crack dataset are crops of 458 photos and no photo IDs are "
    "available, so crops of one photo can be in train and test: test accuracy is an optimistic "
    "estimate of accuracy on new photos."
)


# ---------------------------------------------------------------------------------------------
# Reading one image (runs in worker threads)
# ---------------------------------------------------------------------------------------------


def decode_image(data: bytes, size: int,
                 min_source_size: int) -> tuple[np.ndarray | None, str, str, tuple[int, int]]:
    """Bytes of one file -> (RGB uint8 (size, size, 3), "", note, source (h, w)) or
    (None, reason, detail, (0, 0)). `note` names a conversion ("grayscale", "16-bit") or is "".
    """
    if not data:
        return None, "empty", "zero bytes", (0, 0)
    # A JPEG without its end-of-image marker was cut short; some decoders return a partial image.
    if data[:2] == b"\xff\xd8" and not data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
        return None, "truncated", "JPEG without its end-of-image marker (FFD9)", (0, 0)
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), DECODE_FLAGS)
    except cv2.error as exc:
        return None, "not_an_image", f"OpenCV cannot decode it: {str(exc).strip()[:120]}", (0, 0)
    if img is None:
        reason = "truncated" if data[:8] == b"\x89PNG\r\n\x1a\n" else "not_an_image"
        return None, reason, "OpenCV cannot decode it", (0, 0)
    h, w = img.shape[:2]
    if h < min_source_size or w < min_source_size:
        return None, "too_small", f"{w}x{h} < preprocess.min_source_size={min_source_size}", (0, 0)
    channels = 1 if img.ndim == 2 else img.shape[2]
    if img.dtype not in (np.uint8, np.uint16) or channels not in (1, 3):
        return None, "unsupported_format", f"{channels} channel(s) of {img.dtype}", (0, 0)
    note = ""
    if img.dtype == np.uint16:
        img = np.round(img.astype(np.float32) * (255.0 / 65535.0)).astype(np.uint8)
        note = "16-bit"
    if channels == 1:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
        note = note or "grayscale"
    else:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA), "", note, (h, w)


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


def decode_all(jobs: list[tuple[str, str, int, int]], staged: np.ndarray,
               staged_masks: np.ndarray | None, workers: int) -> list[dict[str, Any]]:
    """Run `load_file` on every job, writing row i of `staged` (and `staged_masks`) as it goes.

    Threads, not processes: OpenCV's decode/resize, hashlib and file reads release the GIL, and
    there is neither fork (a forked child can deadlock in OpenCV's thread pool) nor the start-up
    cost of spawn. OpenCV's own threads are switched off meanwhile: `workers` is the parallelism.
    """
    def load_row(i: int) -> dict[str, Any]:
        res = load_file(jobs[i])
        image, mask = res.pop("image"), res.pop("mask")
        if image is not None:
            staged[i] = image
        if mask is not None and staged_masks is not None:
            staged_masks[i] = mask
        res["has_mask"] = mask is not None
        return res

    cv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            it = pool.map(load_row, range(len(jobs))) if workers else map(load_row, range(len(jobs)))
            return list(tqdm(it, total=len(jobs), desc="decode+resize", unit="img"))
    finally:
        cv2.setNumThreads(cv_threads)


# ---------------------------------------------------------------------------------------------
# Inputs: class folders and the manifest
# ---------------------------------------------------------------------------------------------


def find_classes(raw_dir: Path) -> list[str]:
    """Class names = sub-folders of data/raw (not `_*` or `.*`), sorted: position = class index."""
    if not raw_dir.is_dir():
        raise DataError(f"'{raw_dir}' not found: there are no raw images yet. {RERUN_DOWNLOAD}.")
    classes = sorted(d.name for d in raw_dir.iterdir()
                     if d.is_dir() and not d.name.startswith(("_", ".")))
    if len(classes) < 2:
        raise DataError(
            f"'{raw_dir}' has {len(classes)} class folder(s) {classes}; a classifier needs at least "
            f"two (one sub-folder per class, e.g. Negative/ and Positive/). Check data.source and "
            f"data.path. {RERUN_DOWNLOAD}."
        )
    return classes


def read_manifest(manifest: Path, raw_dir: Path, classes: list[str]) -> pd.DataFrame:
    """The manifest, sorted by path, after checking it against what is really in data/raw."""
    if not manifest.is_file():
        raise DataError(f"'{manifest}' not found. {RERUN_DOWNLOAD}.")
    try:
        df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"Cannot parse '{manifest}': {str(exc).splitlines()[0]}. "
                        f"{RERUN_DOWNLOAD}.") from None
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"'{manifest}' lacks column(s) {missing} (has {list(df.columns)}); it was "
                        f"written by an older or different tool. {RERUN_DOWNLOAD}.")
    folder = df["path"].str.split("/", n=1).str[0]
    bad = df[~folder.isin(classes) | df["path"].str.contains(r"(?:^|/)\.\.(?:/|$)", regex=True)
             | (folder != df["class"])]
    if len(bad):
        row = bad.iloc[0]
        raise DataError(
            f"'{manifest}' has {len(bad)} row(s) whose path is not inside a class folder of "
            f"'{raw_dir}' {classes} or whose class differs from that folder, e.g. "
            f"path={row['path']!r} class={row['class']!r}. {RERUN_DOWNLOAD}."
        )
    repeated = df["path"][df["path"].duplicated()]
    if len(repeated):
        raise DataError(f"'{manifest}' lists {repeated.iloc[0]!r} more than once. {RERUN_DOWNLOAD}.")
    # Hidden and `_` entries are skipped, as download skips them (.DS_Store, __MACOSX, ...).
    on_disk = {f.relative_to(raw_dir).as_posix() for c in classes for f in (raw_dir / c).rglob("*")
               if f.is_file() and not any(part.startswith((".", "_"))
                                          for part in f.relative_to(raw_dir).parts)}
    unlisted = sorted(on_disk - set(df["path"]))
    if unlisted:
        raise DataError(
            f"{len(unlisted)} file(s) in '{raw_dir}' are not in '{manifest}' (e.g. "
            f"{', '.join(unlisted[:3])}): the manifest is stale or files were added by hand. "
            f"{RERUN_DOWNLOAD} to rebuild the manifest, or remove those files."
        )
    df = df.rename(columns={"sha256": "sha256_manifest"})  # the real hash comes from the bytes
    return df.sort_values("path", kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Quality, de-duplication and split
# ---------------------------------------------------------------------------------------------


def deduplicate(rows: pd.DataFrame) -> tuple[np.ndarray, list[dict], list[dict]]:
    """Good rows (sorted by path) -> (kept row numbers, duplicates, cross-class groups)."""
    paths, classes, hashes = (rows[c].tolist() for c in ("path", "class", "sha256"))
    by_hash: dict[str, list[int]] = defaultdict(list)
    for i in np.flatnonzero(rows["good"].to_numpy()):
        by_hash[hashes[i]].append(int(i))
    keep, duplicates, conflicts = [], [], []
    for sha, idx in by_hash.items():
        names = sorted({classes[i] for i in idx})
        if len(names) > 1:
            conflicts.append({"sha256": sha, "classes": names, "paths": [paths[i] for i in idx]})
            continue
        keep.append(idx[0])
        duplicates += [{"path": paths[i], "duplicate_of": paths[idx[0]], "sha256": sha}
                       for i in idx[1:]]
    return np.sort(np.array(keep, dtype=np.int64)), duplicates, conflicts


def stratified_split(labels: np.ndarray, fractions: dict[str, float],
                     seed: int) -> dict[str, np.ndarray]:
    """Indices into `labels` per split: each class is cut by the same fractions; seeded."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = max(1, round(len(idx) * fractions["val"]))
        n_test = max(1, round(len(idx) * fractions["test"]))
        parts["val"].append(idx[:n_val])
        parts["test"].append(idx[n_val:n_val + n_test])
        parts["train"].append(idx[n_val + n_test:])
    return {s: rng.permutation(np.concatenate(parts[s])) for s in SPLITS}


def _fail(report: dict[str, Any], message: str) -> None:
    """Write the report (it explains the failure) and stop with a one-paragraph error."""
    write_json(DATA_QUALITY, report)
    raise DataError(message)


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------


def main(cfg: Config) -> dict[str, Any]:
    p = cfg.preprocess
    size = p.image_size
    classes = find_classes(RAW_DIR)
    rows = read_manifest(MANIFEST, RAW_DIR, classes)
    n = len(rows)
    if n == 0:
        raise DataError(f"'{MANIFEST}' lists no images. {RERUN_DOWNLOAD}.")
    with_masks = bool((rows["mask"] != "").any())
    log(STAGE, f"{n} files in {len(classes)} classes {classes} from {MANIFEST}; decoding -> "
               f"{size}x{size} RGB with {p.workers or 'no'} worker thread(s)")

    with atomic_dir(PROCESSED_DIR) as out:
        # 1. Read, hash, check, resize: straight into memory-mapped staging arrays, in path order.
        staged = np.lib.format.open_memmap(out / "_staging_images.npy", mode="w+", dtype=np.uint8,
                                           shape=(n, size, size, 3))
        staged_masks = (np.lib.format.open_memmap(out / "_staging_masks.npy", mode="w+",
                                                  dtype=np.uint8, shape=(n, size, size))
                        if with_masks else None)
        jobs = [(str(RAW_DIR / r.path), str(RAW_DIR / r.mask) if r.mask else "", size,
                 p.min_source_size) for r in rows.itertuples()]
        results = decode_all(jobs, staged, staged_masks, p.workers)
        rows = pd.concat([rows, pd.DataFrame(results)], axis=1)
        rows["good"] = rows["reason"] == ""
        rows["label"] = rows["class"].map({c: i for i, c in enumerate(classes)}).astype(np.int64)

        # 2. Quality report and de-duplication.
        keep, duplicates, conflicts = deduplicate(rows)
        report = quality_report(rows, keep, duplicates, conflicts, classes, cfg)
        log(STAGE, f"{report['good']}/{n} good ({report['good_fraction']:.1%}), "
                   f"{report['rejected']} rejected {report['rejected_by_reason']}, "
                   f"{report['duplicates']} duplicates, {report['cross_class_conflicts']} files "
                   f"with content under two classes")
        if report["sha256_mismatches"]:
            log(STAGE, f"warning: {report['sha256_mismatches']} file(s) changed since the manifest "
                       f"was written (sha256 differs); using the bytes on disk, see {DATA_QUALITY}")
        if report["good_fraction"] < p.min_good_fraction:
            _fail(report, (
                f"Only {report['good_fraction']:.1%} of the {n} images listed in '{MANIFEST}' are "
                f"usable, below preprocess.min_good_fraction={p.min_good_fraction}. "
                f"'{DATA_QUALITY}' lists every rejected file with its reason "
                f"({report['rejected_by_reason']}). Fix or remove those files and rerun download "
                f"and preprocess, or lower preprocess.min_good_fraction if the loss is acceptable."
            ))
        kept_labels = rows["label"].to_numpy()[keep]
        counts = np.bincount(kept_labels, minlength=len(classes))
        if counts.min() < len(SPLITS):
            _fail(report, (
                f"Class '{classes[int(counts.argmin())]}' has only {int(counts.min())} usable "
                f"image(s) after removing bad files and duplicates; each class needs at least "
                f"{len(SPLITS)} (one per split). See '{DATA_QUALITY}' and add images to "
                f"{RAW_DIR / classes[int(counts.argmin())]} (or its source), then rerun download."
            ))

        # 3. Split and write each split's arrays, gathered from the staging arrays in chunks.
        fractions = {"train": p.split.train, "val": p.split.val, "test": p.split.test}
        splits = {s: keep[idx] for s, idx in stratified_split(kept_labels, fractions, cfg.seed).items()}
        hashes = [set(rows["sha256"].to_numpy()[idx]) for idx in splits.values()]
        assert not (hashes[0] & hashes[1] or hashes[0] & hashes[2] or hashes[1] & hashes[2]), \
            "a content hash is in two splits"
        for name, idx in splits.items():
            write_split(out, name, idx, rows, staged, staged_masks)
        report["per_split"] = {
            name: {"total": len(idx), "with_mask": int(rows["has_mask"].to_numpy()[idx].sum()),
                   "per_class": {c: int((rows["label"].to_numpy()[idx] == k).sum())
                                 for k, c in enumerate(classes)}}
            for name, idx in splits.items()
        }
        (out / "classes.json").write_text(json.dumps({"classes": classes, "image_size": size},
                                                     indent=2) + "\n")
        del staged, staged_masks
        for f in out.glob("_staging_*.npy"):
            f.unlink()
    write_json(DATA_QUALITY, report)
    sizes = ", ".join(f"{s} {v['total']}" for s, v in report["per_split"].items())
    log(STAGE, f"wrote {PROCESSED_DIR} ({sizes}) and {DATA_QUALITY}")
    return report


def write_split(out: Path, name: str, idx: np.ndarray, rows: pd.DataFrame,
                staged: np.ndarray, staged_masks: np.ndarray | None) -> None:
    """{name}_images.npy, _labels.npy, (_masks.npy) and {name}.csv for the rows `idx`."""
    size = staged.shape[1]
    images = np.lib.format.open_memmap(out / f"{name}_images.npy", mode="w+", dtype=np.uint8,
                                       shape=(len(idx), size, size, 3))
    masks = (np.lib.format.open_memmap(out / f"{name}_masks.npy", mode="w+", dtype=np.uint8,
                                       shape=(len(idx), size, size))
             if staged_masks is not None else None)
    for start in range(0, len(idx), 2048):
        part = idx[start:start + 2048]
        images[start:start + len(part)] = staged[part]
        if masks is not None:
            masks[start:start + len(part)] = staged_masks[part]
    images.flush()
    if masks is not None:
        masks.flush()
    np.save(out / f"{name}_labels.npy", rows["label"].to_numpy()[idx].astype(np.int64))
    records = rows.loc[idx, ["path", "label", "class", "sha256", "has_mask"]].reset_index(drop=True)
    records.insert(0, "index", np.arange(len(idx)))
    records.to_csv(out / f"{name}.csv", index=False)


def quality_report(rows: pd.DataFrame, keep: np.ndarray, duplicates: list[dict],
                   conflicts: list[dict], classes: list[str], cfg: Config) -> dict[str, Any]:
    """reports/data_quality.json: numbers at the top level (DVC shows them as metrics), file
    lists in lists (DVC's metrics view skips lists)."""
    n, good = len(rows), int(rows["good"].sum())
    rejected = rows[~rows["good"]]
    changed = rows[(rows["sha256"] != "") & (rows["sha256"] != rows["sha256_manifest"])]
    dup_paths = {d["path"] for d in duplicates}
    conflict_paths = {p for g in conflicts for p in g["paths"]}
    kept = rows.loc[keep]
    per_class = {}
    for c in classes:
        in_c = rows["class"] == c
        per_class[c] = {
            "total": int(in_c.sum()), "good": int((in_c & rows["good"]).sum()),
            "rejected": int((in_c & ~rows["good"]).sum()),
            "duplicates": int(rows.loc[in_c, "path"].isin(dup_paths).sum()),
            "cross_class_conflicts": int(rows.loc[in_c, "path"].isin(conflict_paths).sum()),
            "kept": int((kept["class"] == c).sum()),
        }
    masks = rows[rows["mask"] != ""]
    return {
        "total": n,
        "good": good,
        "good_fraction": good / n,
        "min_good_fraction": cfg.preprocess.min_good_fraction,
        "rejected": n - good,
        "rejected_by_reason": dict(sorted(Counter(rejected["reason"]).items())),
        "converted": dict(sorted(Counter(rows.loc[rows["good"] & (rows["note"] != ""), "note"]).items())),
        "duplicates": len(duplicates),
        "cross_class_conflicts": len(conflict_paths),
        "cross_class_groups": len(conflicts),
        "kept": len(keep),
        "sha256_mismatches": len(changed),
        "masks_listed": len(masks),
        "mask_problems": int((masks["mask_problem"] != "").sum()),
        "image_size": cfg.preprocess.image_size,
        "seed": cfg.seed,
        "per_class": per_class,
        "notes": [CAVEAT, "good = decodable, supported and large enough; duplicates and "
                  "cross-class conflicts are good files that are not kept."],
        "rejected_files": [{"path": r.path, "reason": r.reason, "detail": r.detail}
                           for r in rejected.itertuples()],
        "duplicate_files": duplicates,
        "cross_class_files": conflicts,
        "sha256_mismatch_files": [{"path": r.path, "manifest": r.sha256_manifest, "actual": r.sha256}
                                  for r in changed.itertuples()],
        "mask_problem_files": [{"path": r.path, "mask": r.mask, "problem": r.mask_problem}
                               for r in masks[masks["mask_problem"] != ""].itertuples()],
    }


if __name__ == "__main__":
    run_stage(STAGE, main)
