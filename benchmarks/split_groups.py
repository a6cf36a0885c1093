"""How the images of a class-folder dataset group: exact duplicates, near-duplicate clusters at
several Hamming thresholds, whether file numbering ties crops together, and how many groups a
random split would let straddle train/val/test. Also times the clustering.

    uv run --frozen python benchmarks/split_groups.py /work/data40k/dataset \\
        --cache /tmp/hashes40k.npz --out /tmp/split_groups_40k.json

The folder holds one sub-folder per class (Negative/, Positive/, ...). Images are decoded and
area-resized to --size (as preprocess does), then hashed with crackxai.data.groups (imagehash
phash); --cache keeps sha256s and hashes so a rerun skips the decoding. Not a test: run it by hand
on the full Kaggle set, outside the project.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from crackxai.data.curation import stratified_split
from crackxai.data.groups import (
    group_summary,
    keys_to_groups,
    near_duplicate_groups,
    perceptual_hashes,
    straddles,
)

THRESHOLDS = (0, 2, 4, 6, 8, 10, 12)
FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}
SEED = 42
CHUNK = 2048


def load(path: Path, size: int) -> tuple[str, np.ndarray]:
    data = path.read_bytes()
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    img = cv2.resize(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), (size, size),
                     interpolation=cv2.INTER_AREA)
    return hashlib.sha256(data).hexdigest(), img


def hash_folder(root: Path, size: int, workers: int) -> dict[str, np.ndarray]:
    files = sorted(p for c in sorted(root.iterdir()) if c.is_dir() and c.name[0].isupper()
                   for p in c.glob("*.jpg"))
    shas, hashes = [], []
    cv2.setNumThreads(1)
    decode = hashing = 0.0
    with ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(files), CHUNK):  # a chunk at a time: memory stays flat
            t0 = time.perf_counter()
            done = list(pool.map(lambda p: load(p, size), files[start:start + CHUNK]))
            t1 = time.perf_counter()
            shas += [sha for sha, _ in done]
            hashes.append(perceptual_hashes(np.stack([img for _, img in done])))
            decode, hashing = decode + t1 - t0, hashing + time.perf_counter() - t1
            print(f"{start + len(done)}/{len(files)}", end="\r", flush=True)
    phash = np.concatenate(hashes)
    print(f"decoded {len(files)} files in {decode:.1f} s, hashed in {hashing:.1f} s")
    return {"path": np.array([f"{p.parent.name}/{p.name}" for p in files]),
            "sha256": np.array(shas), "phash": phash}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cache", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.cache and args.cache.is_file():
        data = dict(np.load(args.cache))
    else:
        data = hash_folder(args.root, args.size, args.workers)
        if args.cache:
            np.savez(args.cache, **data)
    paths, shas, phash = data["path"], data["sha256"], data["phash"].astype(np.uint64)
    classes = np.array([p.split("/")[0] for p in paths])
    labels = np.unique(classes, return_inverse=True)[1]
    numbers = np.array([int(re.sub(r"\D", "", p.split("/")[1]) or -1) for p in paths])
    out: dict = {"images": len(paths), "per_class": {c: int((classes == c).sum())
                                                      for c in np.unique(classes)}}

    # exact duplicates
    exact = keys_to_groups(list(shas))
    s = group_summary(exact)
    cross = sum(len(set(classes[exact == g])) > 1
                for g in np.flatnonzero(np.bincount(exact) > 1))
    out["exact"] = {**s, "cross_class_groups": int(cross)}
    print(f"exact duplicates: {s['with_more_than_one']} groups holding {s['images_in_those']} "
          f"files (largest {s['largest']}), {cross} groups span two classes")

    # keep one file per content hash, as preprocess does (first in path order)
    _, first = np.unique(shas, return_index=True)
    keep = np.sort(first)
    h, y, num, cls = phash[keep], labels[keep], numbers[keep], classes[keep]
    random_split = stratified_split(y, FRACTIONS, SEED)
    out["near"] = {}
    for d in THRESHOLDS:
        t0 = time.perf_counter()
        g = near_duplicate_groups(h, d)
        secs = time.perf_counter() - t0
        s = group_summary(g)
        s["cluster_seconds"] = round(secs, 2)
        s["straddles_random_split"] = straddles(g, random_split)
        s["cross_class_groups"] = int(sum(len(set(cls[g == k])) > 1
                                          for k in np.flatnonzero(np.bincount(g) > 1)))
        # do members of a group have nearby file numbers?
        gaps = [np.ptp(num[g == k]) for k in np.flatnonzero(np.bincount(g) > 1)[:2000]]
        s["median_number_span_in_group"] = float(np.median(gaps)) if gaps else None
        out["near"][str(d)] = s
        print(f"phash <= {d:2d} bits: {s['with_more_than_one']:5d} groups of >1 holding "
              f"{s['images_in_those']:5d} images, largest {s['largest']:4d}, "
              f"{s['cross_class_groups']} cross-class, random split straddles "
              f"{s['straddles_random_split']:5d}; clustered in {secs:.1f} s")

    # file numbering: are consecutive numbers (same class) more alike than random pairs?
    rng = np.random.default_rng(SEED)
    order = np.lexsort((num, cls))
    same = cls[order][1:] == cls[order][:-1]
    consecutive = np.bitwise_count(h[order][1:] ^ h[order][:-1])[same]
    a, b = rng.integers(0, len(h), (2, 200_000))
    pair_ok = (cls[a] == cls[b]) & (a != b)
    random_pairs = np.bitwise_count(h[a] ^ h[b])[pair_ok]
    out["numbering"] = {
        "consecutive_median_bits": float(np.median(consecutive)),
        "random_same_class_median_bits": float(np.median(random_pairs)),
        **{f"consecutive_within_{d}": float((consecutive <= d).mean()) for d in (4, 8, 12)},
        **{f"random_within_{d}": float((random_pairs <= d).mean()) for d in (4, 8, 12)},
    }
    print("numbering:", json.dumps(out["numbering"]))
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
