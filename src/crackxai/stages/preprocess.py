"""Preprocess: check, de-duplicate, resize and split the raw images into memory-mappable arrays.

    python -m crackxai.preprocess [preprocess.image_size=150 ...]
    python -m crackxai.preprocess --params params.yaml          # how dvc.yaml runs it

Reads `data/manifest.csv` (written by `download`) and the files under `data/raw/<class>/`, and
writes `data/processed/` (format: crackxai.data.processed) plus `reports/data_quality.json`.

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
   in two splits. With `preprocess.split.group_by` (near_duplicates, filename_regex, column; see
   crackxai.data.groups) images of one group never straddle two splits, and the split is
   stratified by class as far as the groups allow; `groups` in the report gives their count, the
   largest, and how many straddle splits in this split and would in a random one. Rows of each
   split are in a seeded random order (any prefix mixes the classes).

Caveat: the 40,000 patches of the surface-crack dataset are 227x227 crops of 458 photos, and no
photo IDs are published, so crops of one photo can land in train and test. Test accuracy is then
an optimistic estimate of accuracy on new photos (the same note is in the report).

Decoding runs in `preprocess.workers` threads and writes each image straight to its place in
its split's file (crackxai.data.placement), so memory stays flat however large the dataset is
and a clean data set's pixels are written once.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from crackxai.config import Config
from crackxai.config.entry import run_stage
from crackxai.core.entry import log
from crackxai.core.errors import DataError
from crackxai.core.io import atomic_dir, write_json
from crackxai.core.paths import DATA_QUALITY, MANIFEST, PROCESSED_DIR, RAW_DIR
from crackxai.data.curation import choose_split, deduplicate, quality_report, split_summary
from crackxai.data.decode import decode_rows
from crackxai.data.groups import (
    check_column,
    check_regex_matches,
    find_groups,
    group_summary,
    straddles,
)
from crackxai.data.kaggle import LEAK_CAVEAT, is_kaggle_data
from crackxai.data.manifest import RERUN_DOWNLOAD, find_classes, read_manifest
from crackxai.data.placement import RowStore, provisional_split
from crackxai.data.processed import SPLITS, write_classes, write_split_tables

STAGE = "preprocess"


def _fail(report: dict[str, Any], message: str) -> None:
    """Write the report (it explains the failure) and stop with a one-paragraph error."""
    write_json(DATA_QUALITY, report)
    raise DataError(message)


def main(cfg: Config) -> dict[str, Any]:
    p = cfg.preprocess
    size = p.image_size
    classes = find_classes(RAW_DIR)
    rows = read_manifest(MANIFEST, RAW_DIR, classes)
    n = len(rows)
    if n == 0:
        raise DataError(f"'{MANIFEST}' lists no images. {RERUN_DOWNLOAD}.")
    group_by = p.split.group_by
    if group_by == "filename_regex":  # before any decoding: a regex that groups nothing fails
        check_regex_matches(rows["path"].tolist(), p.split.group_regex, str(MANIFEST))
    if group_by == "column":
        check_column(list(rows.columns), p.split.group_column, str(MANIFEST))
    log(STAGE, f"{n} files in {len(classes)} classes {classes} from {MANIFEST}; decoding -> "
               f"{size}x{size} RGB with {p.workers or 'no'} worker thread(s)")

    fractions = {"train": p.split.train, "val": p.split.val, "test": p.split.test}
    provisional = provisional_split(rows, classes, group_by, fractions, cfg.seed,
                                    p.split.group_column, p.split.group_regex)
    with atomic_dir(PROCESSED_DIR) as out:
        # 1. Read, hash, check, resize: each image straight to its place in a split file.
        stores = [RowStore(out, "images", (size, size, 3), provisional, n)]
        if bool((rows["mask"] != "").any()):
            stores.append(RowStore(out, "masks", (size, size), provisional, n))
        rows = decode_rows(rows, RAW_DIR, size, p.min_source_size, p.workers, classes,
                           stores[0], stores[1] if len(stores) > 1 else None)
        for store in stores:
            store.close()

        # 2. Quality report and de-duplication.
        keep, duplicates, conflicts = deduplicate(rows)
        report = quality_report(rows, keep, duplicates, conflicts, classes, p.min_good_fraction,
                                size, cfg.seed,
                                LEAK_CAVEAT if is_kaggle_data(rows) else "")
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

        # 3. Groups, the split (no group in two splits); the split files already hold their
        # images unless the real split differs from the provisional one (then gathered once).
        kept_rows = rows.iloc[keep]
        groups = find_groups(group_by, kept_rows["path"].tolist(), stores[0], keep,
                             kept_rows[p.split.group_column].tolist() if group_by == "column"
                             else None, p.split.group_regex, p.split.hash_distance)
        chosen, random_split = choose_split(group_by, kept_labels, groups, fractions, cfg.seed)
        report["groups"] = {"by": group_by, **group_summary(groups),
                            "straddles": straddles(groups, chosen),
                            "straddles_random_split": straddles(groups, random_split)}
        log(STAGE, f"groups ({group_by}): {report['groups']['count']}, largest "
                   f"{report['groups']['largest']}; {report['groups']['straddles_random_split']} "
                   f"would straddle splits in a random split, {report['groups']['straddles']} do")
        empty = [s for s, idx in chosen.items() if len(idx) == 0]
        if empty:
            _fail(report, (
                f"preprocess.split.group_by={group_by} leaves the {', '.join(empty)} split(s) "
                f"empty: the {len(keep)} images form only {report['groups']['count']} group(s) "
                f"(the largest has {report['groups']['largest']} images) and a group cannot be "
                f"divided. See 'groups' in '{DATA_QUALITY}'; use a finer grouping (a smaller "
                "preprocess.split.hash_distance, another group_regex or group_column) or more "
                "data."
            ))
        splits = {s: keep[idx] for s, idx in chosen.items()}
        hashes = [set(rows["sha256"].to_numpy()[idx]) for idx in splits.values()]
        assert not (hashes[0] & hashes[1] or hashes[0] & hashes[2] or hashes[1] & hashes[2]), \
            "a content hash is in two splits"
        for store in stores:
            store.finish(splits)
        for name, idx in splits.items():
            write_split_tables(out, name, rows["label"].to_numpy(), rows, idx)
        report["per_split"] = split_summary(rows, splits, classes)
        write_classes(out, classes, size)
    write_json(DATA_QUALITY, report)
    sizes = ", ".join(f"{s} {v['total']}" for s, v in report["per_split"].items())
    log(STAGE, f"wrote {PROCESSED_DIR} ({sizes}) and {DATA_QUALITY}")
    return report


if __name__ == "__main__":
    run_stage(STAGE, main)
