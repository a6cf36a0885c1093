"""Random initialisation vs a warm start, on real images: test accuracy, and the epoch and minutes
at which validation accuracy first reaches --target (0.98).

    uv run --frozen python benchmarks/warm_start_real.py --source models/model.keras
    uv run --frozen python benchmarks/warm_start_real.py --source models:/crackxai@champion \\
        --tracking-uri sqlite:///$PWD/mlflow.db

--source is what `model.weights` takes: the synthetic-trained default model (a .keras file or an
MLflow model URI). The stages run as `python -m crackxai.<stage>` in a throw-away project under
--workdir: download and preprocess once (`experiment=real_sample`: ../shared/crack-sample, 64 px),
then train and evaluate for each variant. Random init: the preset (whole network, 6 epochs).
Warm start: the head for --head-epochs, then the top --unfreeze ResNet stages for --ft-epochs at
--ft-lr (the two-phase schedule). Minutes to the target count the train stage's wall time up to
that epoch, pro rata per epoch.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def stage(project: Path, name: str, overrides: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", f"crackxai.{name}", *overrides], cwd=project, check=True,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", required=True, help="model.weights for the warm start")
    ap.add_argument("--tracking-uri", help="the store of an MLflow model URI source")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "crack-sample")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/crackxai-warm"))
    ap.add_argument("--target", type=float, default=0.98)
    ap.add_argument("--head-epochs", type=int, default=2)
    ap.add_argument("--unfreeze", type=int, default=4)
    ap.add_argument("--ft-epochs", type=int, default=4)
    ap.add_argument("--ft-lr", type=float, default=1e-4)
    args = ap.parse_args()

    source = args.source if ":/" in args.source else str(Path(args.source).resolve())
    project = args.workdir
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir(parents=True)
    shutil.copytree(REPO / "conf", project / "conf")
    base = ["experiment=real_sample", f"data.path={args.data.resolve()}", "tracking.registered_model=null"]
    if args.tracking_uri:
        base.append(f"tracking.uri={args.tracking_uri}")
    for name in ("download", "preprocess"):
        stage(project, name, base)
    variants = {
        "random init": [],
        "warm start": [f"model.weights={source}", f"train.epochs={args.head_epochs}",
                       f"train.fine_tune.unfreeze={args.unfreeze}",
                       f"train.fine_tune.epochs={args.ft_epochs}", f"train.fine_tune.lr={args.ft_lr}"],
    }
    rows = []
    for name, extra in variants.items():
        seconds = stage(project, "train", [*base, *extra])
        stage(project, "evaluate", [*base, *extra])
        with open(project / "reports" / "train_history.csv") as fh:
            history = list(csv.DictReader(fh))
        metrics = json.loads((project / "reports" / "metrics.json").read_text())
        reached = next((int(r["epoch"]) for r in history
                        if float(r["val_accuracy"]) >= args.target), None)
        rows.append({"variant": name, "test_accuracy": metrics["test"]["accuracy"],
                     "epochs": len(history), "epoch_to_target": reached,
                     "minutes_to_target": (round(seconds / 60 * reached / len(history), 2)
                                           if reached else None),
                     "train_minutes": round(seconds / 60, 2),
                     "best_val_accuracy": max(float(r["val_accuracy"]) for r in history)})
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n| variant | test accuracy | epochs run | epoch to val acc >= {args.target} | "
          f"minutes to it | train minutes |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['test_accuracy']:.3f} | {r['epochs']} | "
              f"{r['epoch_to_target'] or 'never'} | {r['minutes_to_target'] or '-'} | "
              f"{r['train_minutes']} |")


if __name__ == "__main__":
    main()
