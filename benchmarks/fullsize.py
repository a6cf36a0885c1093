"""The whole pipeline on the full Kaggle set, measured stage by stage, DVC's own overhead included.

    uv run --frozen python benchmarks/fullsize.py /data/surface-crack       # Negative/ Positive/
    uv run --frozen python benchmarks/fullsize.py /data/surface-crack --set preprocess.split.group_by=near_duplicates --stages download preprocess train evaluate

A throw-away clone of this repository (HEAD, under --workdir) gets its params.yaml composed with
`experiment=kaggle_local data.path=<folder>` plus the --set overrides, as `python -m crackxai.params`
composes it. Each stage then runs as dvc.yaml runs it (`python -m crackxai.<stage> --params
params.yaml`), in its own process, and `dvc commit -f <stage>` records its outputs: hashing and
caching them is exactly what `dvc repro` adds to the stage, so the two rows together are what a
user waits for. Last, `dvc status` and a no-op `dvc repro` on the finished pipeline.

Per stage: wall seconds, images per second (the images the stage handles: listed, decoded, trained
on (train rows x epochs run), tested, explained), the kernel's peak resident set (VmHWM: it counts
the pages of memory-mapped arrays the kernel kept resident, reclaimable) and the sampled peak of
anonymous memory (RssAnon: heap and tensors, the part that must not grow with the data set).
A JSON copy goes to <workdir>/fullsize.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
STAGES = ["validate", "download", "preprocess", "train", "evaluate", "explain"]


def run_measured(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> dict[str, float]:
    """Run `cmd`; wall seconds, peak RSS (wait4's ru_maxrss) and sampled peak RssAnon, in MB."""
    peak_anon = 0
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        done = threading.Event()

        def sample() -> None:
            nonlocal peak_anon
            status = Path(f"/proc/{proc.pid}/status")
            while not done.is_set():
                try:
                    for line in status.read_text().splitlines():
                        if line.startswith("RssAnon:"):
                            peak_anon = max(peak_anon, int(line.split()[1]))
                except OSError:
                    return
                done.wait(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        done.set()
        sampler.join()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {os.waitstatus_to_exitcode(status)}); "
                         f"see {log}")
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "peak_anon_mb": peak_anon / 1024,
            "cpu_s": usage.ru_utime + usage.ru_stime}


def images_handled(project: Path, stage: str) -> int | None:
    """How many images `stage` processed, read from its outputs."""
    reports = project / "reports"
    if stage in ("download", "preprocess"):
        return sum(1 for _ in (project / "data/manifest.csv").open()) - 1
    if stage == "train":
        epochs = len(pd.read_csv(reports / "train_history.csv"))
        return epochs * (len(pd.read_csv(project / "data/processed/train.csv"))
                         + len(pd.read_csv(project / "data/processed/val.csv")))
    if stage == "evaluate":
        return len(pd.read_csv(project / "data/processed/test.csv"))
    if stage == "explain":
        return int(pd.read_csv(reports / "explain/per_image.csv")["row"].nunique())
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="a folder with one sub-folder per class")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/crackxai-fullsize"))
    ap.add_argument("--set", nargs="*", default=[], help="more Hydra overrides, key=value")
    ap.add_argument("--stages", nargs="*", default=STAGES, choices=STAGES)
    args = ap.parse_args()

    project = args.workdir / "project"
    shutil.rmtree(project, ignore_errors=True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "clone", "-q", str(REPO), str(project)], check=True)
    env = {**os.environ, "PATH": f"{REPO / '.venv/bin'}:{os.environ['PATH']}",
           "PYTHONPATH": str(project / "src")}
    env.pop("VIRTUAL_ENV", None)
    log = args.workdir / "fullsize.log"
    log.write_text("")
    overrides = ["experiment=kaggle_local", f"data.path={args.data.resolve()}", *args.set]
    subprocess.run(["python", "-m", "crackxai.params", *overrides], cwd=project, env=env,
                   check=True, stdout=subprocess.DEVNULL)
    print(f"cores: {os.cpu_count()}, load average before: {os.getloadavg()}; overrides: "
          f"{' '.join(overrides)}", flush=True)

    rows = []
    for stage in args.stages:
        m = run_measured(["python", "-m", f"crackxai.{stage}", "--params", "params.yaml"],
                         project, env, log)
        n = images_handled(project, stage)
        rows.append({"step": stage, **m, "images": n,
                     "images_per_s": n / m["wall_s"] if n else None})
        dvc = run_measured(["dvc", "commit", "-f", stage], project, env, log)
        rows.append({"step": f"dvc commit {stage}", **dvc})
        print(f"{stage}: {m['wall_s']:.1f} s, {n} images, peak RSS {m['peak_rss_mb']:.0f} MB, "
              f"anon {m['peak_anon_mb']:.0f} MB; dvc commit {dvc['wall_s']:.1f} s", flush=True)
    for step, cmd in (("dvc status", ["dvc", "status"]), ("dvc repro (no-op)", ["dvc", "repro"])):
        rows.append({"step": step, **run_measured(cmd, project, env, log)})
    print(f"load average after: {os.getloadavg()}")

    quality = json.loads((project / "reports/data_quality.json").read_text())
    results = {"overrides": overrides, "rows": rows, "groups": quality.get("groups"),
               "metrics": json.loads((project / "reports/metrics.json").read_text())
               if (project / "reports/metrics.json").is_file() else None}
    (args.workdir / "fullsize.json").write_text(json.dumps(results, indent=2, default=float))
    print("\n| step | wall | images/s | peak RSS | peak anon |\n|---|---|---|---|---|")
    for r in rows:
        v = r.get("images_per_s")
        rate = "" if not v else f"{v:,.0f}" if v >= 100 else f"{v:.1f}" if v >= 1 else f"{v:.3f}"
        print(f"| {r['step']} | {r['wall_s']:.1f} s | {rate} | {r['peak_rss_mb']:.0f} MB | "
              f"{r['peak_anon_mb']:.0f} MB |")
    print(f"test metrics: {json.dumps(results['metrics'])[:600]}")
    print(f"groups: {json.dumps(results['groups'])}")


if __name__ == "__main__":
    main()
