"""Groups of images that must stay in one split (`preprocess.split.group_by`), and the split.

    none             every image is its own group: the plain stratified split
    near_duplicates  images whose perceptual hashes (imagehash.phash, 64 bits) differ in at most
                     `preprocess.split.hash_distance` bits, joined transitively
    filename_regex   images whose path gives the same key under `preprocess.split.group_regex`
                     (the first capture group if it has one, else the whole match)
    column           images with the same value in the manifest column `preprocess.split.group_column`

Import-light (numpy only at import time): the config layer imports GROUP_BY to check the key.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from crackxai.core.errors import DataError
from crackxai.core.progress import progress

GROUP_BY = ("none", "near_duplicates", "filename_regex", "column")
HASH_BITS = 64  # imagehash.phash with its default hash_size=8
PAIR_BUDGET = 1 << 22  # hash pairs compared per numpy step: ~40 MB of temporaries, whatever n


def perceptual_hashes(images: np.ndarray, rows: np.ndarray | None = None,
                      chunk: int = 1024) -> np.ndarray:
    """imagehash.phash of the (S, S, 3) uint8 RGB images `images[rows]` (all when None), each
    packed into a uint64. Reads `chunk` rows at a time, so a memory map stays on disk."""
    import imagehash
    from PIL import Image

    rows = np.arange(len(images)) if rows is None else np.asarray(rows)
    out = np.empty(len(rows), dtype=np.uint64)
    starts = range(0, len(rows), chunk)
    for start in progress(starts, total=len(starts), desc="perceptual hashes", unit="chunk"):
        for i, img in enumerate(images[rows[start:start + chunk]]):
            bits = imagehash.phash(Image.fromarray(img)).hash  # (8, 8) bools
            out[start + i] = np.packbits(bits).view(">u8")[0]
    return out


def _components(n: int, pairs_a: np.ndarray, pairs_b: np.ndarray) -> np.ndarray:
    """Connected components of n nodes and the given edges, as labels 0..k-1 in first-seen order."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(pairs_a), dtype=np.int8), (pairs_a, pairs_b)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return _renumber(labels)


def _renumber(keys: np.ndarray | Sequence[Any]) -> np.ndarray:
    """Group ids 0..k-1 numbered in order of first appearance (stable across runs)."""
    _, first, inverse = np.unique(np.asarray(keys), return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inverse].astype(np.int64)


def _near_pairs(hashes: np.ndarray, idx: np.ndarray, max_distance: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of `idx` whose hashes differ in at most `max_distance` bits, compared in
    blocks of about PAIR_BUDGET pairs (each pair once)."""
    h = hashes[idx]
    n = len(h)
    rows = max(1, PAIR_BUDGET // max(n, 1))
    found_a, found_b = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    for start in range(0, n, rows):
        # this block against itself and everything after it
        near = np.bitwise_count(h[start:start + rows, None] ^ h[None, start:]) <= max_distance
        a, b = np.nonzero(near)
        keep = a < b  # no self-pairs, no pair twice within the block
        found_a.append(idx[a[keep] + start])
        found_b.append(idx[b[keep] + start])
    return np.concatenate(found_a), np.concatenate(found_b)


def near_duplicate_groups(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    """Group id per hash: hashes within `max_distance` bits are linked, groups are the connected
    components.

    Multi-index hashing (pigeonhole): cut the 64 bits into max_distance + 1 bands; two hashes
    within max_distance bits agree exactly on at least one band, so only hashes sharing a band
    value are compared. 40,000 photo hashes at distance 6 are a few million comparisons instead of
    800 million (benchmarks/split_groups.py); when the bands are too coarse to help, every pair
    is compared. Either way the temporaries stay the same size for any n."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    n = len(hashes)
    bands = max_distance + 1
    edges = np.linspace(0, HASH_BITS, bands + 1).astype(int)
    keys = [(hashes >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
            for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    buckets = [np.unique(k, return_inverse=True, return_counts=True)[1:] for k in keys]
    candidates = sum(int((counts.astype(np.int64) ** 2).sum()) // 2 for _, counts in buckets)
    if candidates >= n * n // 2:
        pairs_a, pairs_b = _near_pairs(hashes, np.arange(n), max_distance)
        return _components(n, pairs_a, pairs_b)
    found_a, found_b = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    for inverse, counts in buckets:
        order = np.argsort(inverse, kind="stable")
        ends = np.cumsum(counts)
        for b in np.flatnonzero(counts > 1):
            a_, b_ = _near_pairs(hashes, order[ends[b] - counts[b]:ends[b]], max_distance)
            found_a.append(a_)
            found_b.append(b_)
    return _components(n, np.concatenate(found_a), np.concatenate(found_b))


def regex_keys(paths: Sequence[str], pattern: str) -> list[str | None]:
    """The group key of each path under `pattern` (re.search): the first capture group if the
    pattern has one, else the whole match; None where it does not match."""
    rx = re.compile(pattern)
    keys: list[str | None] = []
    for p in paths:
        m = rx.search(p)
        keys.append(None if m is None else (m.group(1) if rx.groups else m.group(0)))
    return keys


def check_regex_matches(paths: Sequence[str], pattern: str, source: str) -> None:
    """Fail before any work when `pattern` matches none of the paths (a typo would otherwise
    make every image its own group, silently a plain random split)."""
    if paths and all(k is None for k in regex_keys(paths, pattern)):
        raise DataError(
            f"preprocess.split.group_regex={pattern!r} matches none of the {len(paths)} paths in "
            f"'{source}' (e.g. {paths[0]!r}), so it would group nothing. Write a regex that "
            "re.search finds in the paths, with one capture group for the group key, e.g. "
            r"preprocess.split.group_regex='^[^/]+/(\w+)_\d+\.jpg$' for photo_crop.jpg names."
        )


def check_column(columns: Sequence[str], column: str | None, source: str) -> None:
    if column not in columns:
        raise DataError(
            f"preprocess.split.group_column={column!r} is not a column of '{source}' (it has "
            f"{', '.join(columns)}). Add that column (one group key per row, e.g. a photo id) to "
            "the manifest, or set preprocess.split.group_column to one of its columns."
        )


def keys_to_groups(keys: Sequence[str | None]) -> np.ndarray:
    """Group ids for keys; a missing key (None or "") makes the image a group of its own."""
    filled = [k if k else f"\0row{i}" for i, k in enumerate(keys)]
    return _renumber(filled)


def group_split(labels: np.ndarray, groups: np.ndarray, fractions: dict[str, float],
                seed: int) -> dict[str, np.ndarray]:
    """Indices per split such that every group lies in exactly one split, stratified by class as
    far as the groups allow.

    Groups go largest first (ties in a seeded random order) to the split whose per-class counts
    lag furthest behind their targets (fraction x class size), weighted by the group's classes:
    the usual greedy for a grouped, stratified split. With every group a single image this is a
    stratified random split. Rows of each split are in a seeded random order."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    rng = np.random.default_rng(seed)
    names = list(fractions)
    classes, y = np.unique(labels, return_inverse=True)
    gid, g = np.unique(groups, return_inverse=True)
    counts = np.zeros((len(gid), len(classes)), dtype=np.int64)  # group x class
    np.add.at(counts, (g, y), 1)
    target = np.array([fractions[s] for s in names])[:, None] * counts.sum(axis=0)[None, :]
    have = np.zeros_like(target)
    order = rng.permutation(len(gid))
    order = order[np.argsort(-counts.sum(axis=1)[order], kind="stable")]
    home = np.empty(len(gid), dtype=np.int64)
    for k in order:
        # the need of each split for this group's classes, relative to the split's size
        size = np.maximum(target.sum(axis=1), 1)
        need = ((target - have) * counts[k][None, :]).sum(axis=1) / size
        # ties (e.g. a group of a class no split holds yet) go to the emptiest split, so that
        # with at least three groups no split is left empty
        need -= 1e-9 * have.sum(axis=1) / size
        home[k] = int(np.argmax(need))
        have[home[k]] += counts[k]
    sizes = counts.sum(axis=1)
    for empty in [i for i in range(len(names)) if not (home == i).any()]:
        # the greedy can starve a tiny split; give it the smallest group of the split with the
        # most groups (always possible with at least as many groups as splits)
        donor = int(np.argmax(np.bincount(home, minlength=len(names))))
        if (home == donor).sum() > 1:
            members = np.flatnonzero(home == donor)
            home[members[np.argmin(sizes[members])]] = empty
    where = home[g]
    return {s: rng.permutation(np.flatnonzero(where == i)) for i, s in enumerate(names)}


def straddles(groups: np.ndarray, splits: dict[str, np.ndarray]) -> int:
    """How many groups have images in more than one split (the leak a group split prevents)."""
    groups = np.asarray(groups)
    seen = [np.unique(groups[idx]) for idx in splits.values()]
    _, n_splits = np.unique(np.concatenate(seen), return_counts=True)
    return int((n_splits > 1).sum())


def group_summary(groups: np.ndarray) -> dict[str, int]:
    """count, largest, and how many groups (and images in them) have more than one image."""
    sizes = np.bincount(np.asarray(groups)) if len(groups) else np.zeros(0, np.int64)
    sizes = sizes[sizes > 0]
    multi = sizes[sizes > 1]
    return {"count": len(sizes), "largest": int(sizes.max()) if len(sizes) else 0,
            "with_more_than_one": len(multi), "images_in_those": int(multi.sum())}


def find_groups(by: str, paths: Sequence[str], images: np.ndarray, rows: np.ndarray,
                column: Sequence[str] | None = None, regex: str | None = None,
                hash_distance: int = 0) -> np.ndarray:
    """Group id for each of `rows` (indices into `images`; `paths` and `column` are per row),
    by one of GROUP_BY."""
    if by == "near_duplicates":
        return near_duplicate_groups(perceptual_hashes(images, rows), hash_distance)
    if by == "filename_regex":
        return keys_to_groups(regex_keys(paths, regex or ""))
    if by == "column":
        return keys_to_groups(list(column or []))
    return np.arange(len(rows), dtype=np.int64)
