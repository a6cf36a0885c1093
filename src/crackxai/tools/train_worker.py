"""Start this host's worker of a multi-worker training: the same command on every host.

    crackxai train_worker --workers node1:12345,node2:12345 --index 0 [--params params.yaml] [k=v ...]
    crackxai train_worker --workers node1:12345,node2:12345 --index 1 [--params params.yaml] [k=v ...]

It writes TF_CONFIG for worker `--index` of `--workers` (the same list everywhere; index 0 is the
chief, which writes models/, reports/ and the MLflow run) and runs the train stage with
`train.distribution=multi_worker` and the remaining arguments (Hydra overrides or --params), in
the current folder; it exits with the stage's status. Slurm, Kubernetes or Ray Train can run it
as their per-host command (e.g. `--index $SLURM_PROCID`). Every host needs the project, the same
data/processed and the same config; the chief's models/.train_state and the others'
models/.train_state-worker<i> let a killed cluster resume when all workers are restarted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys

from crackxai.models.cluster import TF_CONFIG, tf_config

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(
        prog="crackxai train_worker",
        description="Run this host's worker of a multi-worker training (train.distribution="
                    "multi_worker). Other arguments go to the train stage.")
    p.add_argument("--workers", required=True,
                   help="comma-separated host:port of every worker, the same on every host; "
                        "the first is the chief")
    p.add_argument("--index", required=True, type=int,
                   help="this host's position in --workers (0: the chief)")
    return p.parse_known_args(argv)


def main(argv: list[str] | None = None) -> None:
    args, stage_args = parse_args(argv)
    workers = [w.strip() for w in args.workers.split(",") if w.strip()]
    env = {**os.environ, TF_CONFIG: json.dumps(tf_config(workers, args.index))}
    role = "chief" if args.index == 0 else "worker"
    logger.info(f"worker {args.index} of {len(workers)} ({role}) in {workers}")
    cmd = [sys.executable, "-m", "crackxai.train", *stage_args, "train.distribution=multi_worker"]
    code = subprocess.run(cmd, env=env, check=False).returncode
    if code:
        sys.exit(code)
