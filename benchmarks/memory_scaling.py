"""Does `preprocess` (decode, de-duplicate, group, split, write) keep its memory flat as the image
count grows? Peak memory of the stage on 2,000 vs 8,000 synthetic images, each in a fresh process.

    uv run --frozen python benchmarks/memory_scaling.py                   # 2000 and 8000 images
    uv run --frozen python benchmarks/memory_scaling.py --n 2000 8000 --group-by near_duplicates

The images come from benchmarks/preprocess_speed.py's generator (cached under --cache, not
measured). Each size runs `crackxai.stages.preprocess.main` in its own subprocess, which reports
the kernel's peak resident set (VmHWM: includes pages of the memory-mapped output arrays the
kernel kept resident) and, sampled every 20 ms, the peak of anonymous memory (RssAnon: the heap,
which is what must not grow). The verdict compares RssAnon peaks: flat means the ratio stays
within --margin (default 1.25, i.e. 25 %) while the images grow 4x.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from preprocess_speed import REPO, generate, run_stage  # a sibling: benchmarks/ is on sys.path


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def child(cache: Path, n: int, image_size: int, group_by: str) -> None:
    """Run the stage once in this process and print its memory peaks as one JSON line."""
    import shutil

    project = cache / f"project{n}"
    shutil.rmtree(project, ignore_errors=True)
    (project / "data").mkdir(parents=True)
    shutil.copytree(REPO / "conf", project / "conf")
    shutil.copy(REPO / "params.yaml", project / "params.yaml")
    (project / "data" / "raw").symlink_to(cache / f"n{n}" / "raw")
    shutil.copy(cache / f"n{n}" / "manifest.csv", project / "data" / "manifest.csv")
    if group_by != "none":
        params = project / "params.yaml"
        params.write_text(params.read_text().replace("group_by: none", f"group_by: {group_by}"))
    peak_anon, done = [status_kb("RssAnon")], threading.Event()
    before = peak_anon[0]

    def sample() -> None:
        while not done.wait(0.02):
            peak_anon[0] = max(peak_anon[0], status_kb("RssAnon"))

    threading.Thread(target=sample, daemon=True).start()
    seconds, _ = run_stage(project, image_size, workers=2)
    done.set()
    print(json.dumps({"n": n, "seconds": round(seconds, 1), "vm_hwm_mb": status_kb("VmHWM") / 1024,
                      "rss_anon_peak_mb": peak_anon[0] / 1024,
                      "rss_anon_before_mb": before / 1024}))
    shutil.rmtree(project, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[2000, 8000])
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--group-by", default="none")
    ap.add_argument("--margin", type=float, default=1.25)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/crackxai-bench"))
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.cache, args.child, args.image_size, args.group_by)
        return
    results = []
    for n in args.n:
        generate(args.cache / f"n{n}", n)  # not measured
        out = subprocess.run([sys.executable, __file__, "--child", str(n), "--cache",
                              str(args.cache), "--image-size", str(args.image_size),
                              "--group-by", args.group_by],
                             check=True, capture_output=True, text=True,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = results[-1]
        print(f"{n:6d} images -> {args.image_size}px, group_by={args.group_by}: "
              f"{r['seconds']:6.1f} s, peak RssAnon {r['rss_anon_peak_mb']:7.1f} MB "
              f"(at start {r['rss_anon_before_mb']:.1f} MB), peak RSS incl. mapped files "
              f"{r['vm_hwm_mb']:7.1f} MB", flush=True)
    lo, hi = results[0], results[-1]
    ratio = hi["rss_anon_peak_mb"] / lo["rss_anon_peak_mb"]
    print(f"images x{hi['n'] / lo['n']:.0f}: peak RssAnon x{ratio:.2f}, peak RSS x"
          f"{hi['vm_hwm_mb'] / lo['vm_hwm_mb']:.2f} -> "
          f"{'flat' if ratio <= args.margin else 'GROWS'} (margin x{args.margin})")


if __name__ == "__main__":
    main()
