"""How long the synthetic generator takes for 2,000 images (1,000 per class, 227x227).

    .venv/bin/python benchmarks/synthetic_speed.py [n_per_class]

Prints the wall time of one in-process run and of the default parallel run, the images per
second and their ratio, and checks that both runs wrote byte-identical files.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from crackxai.data.synthetic import write_dataset


def timed(out: Path, n: int, workers: int) -> tuple[float, list]:
    start = time.perf_counter()
    samples = write_dataset(out, n, workers=workers, progress=False)
    return time.perf_counter() - start, samples


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    auto = min(os.cpu_count() or 1, 8)
    with tempfile.TemporaryDirectory() as tmp:
        t1, s1 = timed(Path(tmp) / "serial", n, workers=1)
        tn, sn = timed(Path(tmp) / "parallel", n, workers=auto)
    total = 2 * n
    same = [s.sha256 for s in s1] == [s.sha256 for s in sn]
    print(f"images: {total} ({n} per class, 227x227), cpus: {os.cpu_count()}")
    print(f"serial:        {t1:6.2f} s  {total / t1:7.1f} img/s")
    print(f"{auto} workers:     {tn:6.2f} s  {total / tn:7.1f} img/s  speed-up x{t1 / tn:.2f}")
    print(f"identical files serial vs parallel: {same}")


if __name__ == "__main__":
    main()
