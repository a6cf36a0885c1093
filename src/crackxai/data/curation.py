"""Curation: de-duplication, the seeded stratified split and the data-quality report."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import numpy as np
import pandas as pd

from crackxai.data.groups import group_split
from crackxai.data.processed import SPLITS


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


def choose_split(group_by: str, labels: np.ndarray, groups: np.ndarray,
                 fractions: dict[str, float], seed: int
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(the split preprocess uses, the plain stratified one), indices into `labels`: the plain
    one unless `group_by` groups the rows (then no group straddles two splits)."""
    random_split = stratified_split(labels, fractions, seed)
    if group_by == "none":
        return random_split, random_split
    return group_split(labels, groups, fractions, seed), random_split


def quality_report(rows: pd.DataFrame, keep: np.ndarray, duplicates: list[dict],
                   conflicts: list[dict], classes: list[str], min_good_fraction: float,
                   image_size: int, seed: int, caveat: str) -> dict[str, Any]:
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
        "min_good_fraction": min_good_fraction,
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
        "image_size": image_size,
        "seed": seed,
        "per_class": per_class,
        "notes": [*([caveat] if caveat else []), "good = decodable, supported and large enough; duplicates and "
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


def split_summary(rows: pd.DataFrame, splits: dict[str, np.ndarray],
                  classes: list[str]) -> dict[str, Any]:
    """Per split: images, images with a mask, images per class."""
    labels, has_mask = rows["label"].to_numpy(), rows["has_mask"].to_numpy()
    return {name: {"total": len(idx), "with_mask": int(has_mask[idx].sum()),
                   "per_class": {c: int((labels[idx] == k).sum()) for k, c in enumerate(classes)}}
            for name, idx in splits.items()}
