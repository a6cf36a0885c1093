"""How fast is `preprocess` on a Kaggle-sized set (40,000 227x227 JPEGs)?

    .venv/bin/python benchmarks/preprocess_speed.py                 # 40,000 images -> 150x150
    .venv/bin/python benchmarks/preprocess_speed.py --baseline      # also workers=0, prints ratio
    .venv/bin/python benchmarks/preprocess_speed.py --n 4000 --image-size 64

The images (concrete-like textures, half with a dark "crack" polyline, all distinct) and their
manifest are generated once into --cache and reused; generation is not timed. The stage runs
in-process on a throw-away project whose data/raw links to the cached images, exactly as
`python -m crackxai.preprocess` would run it, --repeats times (the median is the figure).
Goal (issue #14): <= 25 s at 150 px on 2 cores.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
SOURCE = 227
BASES = 16
BASE = 2 * SOURCE


def generate(cache: Path, n: int) -> Path:
    """cache/raw/{Negative,Positive}/*.jpg and cache/manifest.csv (skipped when already there)."""
    manifest = cache / "manifest.csv"
    if manifest.is_file() and len(manifest.read_text().splitlines()) == n + 1:
        return manifest
    shutil.rmtree(cache, ignore_errors=True)
    rng = np.random.default_rng(0)
    bases = [cv2.GaussianBlur(rng.normal(150, 40, (BASE, BASE, 3)).clip(0, 255).astype(np.uint8),
                              (0, 0), 1.5) for _ in range(BASES)]
    rows = []
    for k in tqdm(range(n), desc="generating (not timed)", unit="img"):
        cls = "Positive" if k % 2 else "Negative"
        # A different crop of a different base per image: every file's content is distinct.
        j = k // BASES
        y, x = j % (BASE - SOURCE), (j // (BASE - SOURCE)) % (BASE - SOURCE)
        img = bases[k % BASES][y:y + SOURCE, x:x + SOURCE].copy()
        if cls == "Positive":
            pts = np.cumsum(rng.integers(-6, 7, (12, 2)), axis=0) + rng.integers(40, 180, 2)
            cv2.polylines(img, [pts.astype(np.int32).reshape(-1, 1, 2)], False, (40, 40, 40),
                          int(rng.integers(1, 4)))
        data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
        rel = f"{cls}/{k // 2 + 1:05d}.jpg"
        (cache / "raw" / cls).mkdir(parents=True, exist_ok=True)
        (cache / "raw" / rel).write_bytes(data)
        rows.append([rel, cls, len(data), hashlib.sha256(data).hexdigest(), "benchmark", ""])
    with open(manifest, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "class", "bytes", "sha256", "source", "mask"])
        w.writerows(rows)
    return manifest


def run_stage(project: Path, image_size: int, workers: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads) of one stage run."""
    from crackxai.config import load_config
    from crackxai.stages.preprocess import main

    os.chdir(project)
    shutil.rmtree("data/processed", ignore_errors=True)
    cfg = load_config(["--params", "params.yaml", f"preprocess.image_size={image_size}",
                       f"preprocess.workers={workers}"])
    start, cpu = time.perf_counter(), time.process_time()
    main(cfg)
    return time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40_000)
    ap.add_argument("--image-size", type=int, default=150, help="150 = the kaggle experiment")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--baseline", action="store_true", help="also run with workers=0")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/crackxai-bench"))
    args = ap.parse_args()

    cache = args.cache / f"n{args.n}"
    manifest = generate(cache, args.n)
    project = args.cache / "project"
    shutil.rmtree(project, ignore_errors=True)
    (project / "data").mkdir(parents=True)
    shutil.copytree(REPO / "conf", project / "conf")
    shutil.copy(REPO / "params.yaml", project / "params.yaml")
    (project / "data" / "raw").symlink_to(cache / "raw")
    shutil.copy(manifest, project / "data" / "manifest.csv")

    print(f"cores: {os.cpu_count()}, load average before: {os.getloadavg()}")
    runs = [args.workers] + ([0] if args.baseline else [])
    times = {w: [run_stage(project, args.image_size, w) for _ in range(args.repeats)]
             for w in runs}
    print(f"load average after: {os.getloadavg()}")
    median = {}
    for w, results in times.items():
        walls = sorted(t for t, _ in results)
        median[w] = walls[len(walls) // 2]
        print(f"preprocess {args.n} images {SOURCE}->{args.image_size}, workers={w}: median "
              f"{median[w]:.1f} s of {', '.join(f'{t:.1f}' for t, _ in results)} s, "
              f"{args.n / median[w]:.0f} images/s, CPU s {', '.join(f'{c:.1f}' for _, c in results)} "
              f"({'within' if median[w] <= 25 else 'over'} the 25 s goal at 150 px)")
    if args.baseline:
        print(f"speed-up workers={args.workers} vs 0: {median[0] / median[args.workers]:.2f}x")
    shutil.rmtree(project / "data" / "processed", ignore_errors=True)


if __name__ == "__main__":
    main()
