"""Scaling out on this machine: training images/s with 2 workers vs 1, explaining images/s with
2 Ray actors vs the local runner; the ratios of one run.

    .venv/bin/python benchmarks/scaling.py                       # ResNet50 from random init, 32 px
    .venv/bin/python benchmarks/scaling.py --train-n 256 --size 64 --explain-n 32

Training: tests/dist_train_tiny.py --model resnet50 (crackxai's model, random init, so BatchNorm
trains and is synchronized; the global batch is the same in both runs) as one process
(train.distribution=none) and as 2 MultiWorkerMirroredStrategy workers on loopback ports; the
images/s of the last epoch (past tracing; the chief's figure).
Explaining: Grad-CAM of the same model over --explain-n images, the local runner vs Ray with 2
actors on a private local cluster (its start-up not timed; the actors' model loads are).

Both "2" cases share this machine's cores with the "1" case's single process: TensorFlow already
spreads one process over every core, so on one host the ratio is at most ~1 and shows the
overhead (gradient all-reduce over gRPC, actor start and model load); the gain comes from more
hosts or GPUs. Requires the `ray` group (uv sync --group ray).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "dist_train_tiny.py"


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def train_rate(out: Path, workers: int, args: list[str]) -> float:
    from crackxai.models.cluster import tf_config

    hosts = [f"localhost:{p}" for p in free_ports(workers)]
    dist = "none" if workers == 1 else "multi_worker"
    procs = []
    for i in range(workers):
        env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
        if workers > 1:
            env["TF_CONFIG"] = json.dumps(tf_config(hosts, i))
        procs.append(subprocess.Popen([sys.executable, str(SCRIPT), str(out), dist, *args],
                                      env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
    if any(p.wait() for p in procs):
        raise SystemExit(f"training with {workers} worker(s) failed")
    return json.loads((out / "worker0.json").read_text())["images_per_s"]


def explain_rates(n: int, size: int, actors: int) -> tuple[float, float]:
    from crackxai.models.resnet import build_model
    from crackxai.xai import runners

    with tempfile.TemporaryDirectory() as tmp:
        model_path, images_path = Path(tmp) / "model.keras", Path(tmp) / "images.npy"
        build_model(2, size, None, 0.0, seed=0).save(model_path)
        np.save(images_path, np.random.default_rng(0).integers(0, 255, (n, size, size, 3),
                                                                dtype=np.uint8))
        job = runners.Job(str(model_path), str(images_path), "gradcam",
                          {"seed": 0, "cam_min_size": 1}, layer="conv3_block4_out", seed=0)
        rows, targets = np.arange(n), np.zeros(n, np.int64)
        start = time.perf_counter()
        local = runners.explain_maps("local", job, rows, targets)
        local_rate = n / (time.perf_counter() - start)
        with runners.ray_cluster(None):
            start = time.perf_counter()
            remote = runners.explain_maps("ray", job, rows, targets, num_actors=actors)
            ray_rate = n / (time.perf_counter() - start)
        assert np.allclose(local.maps, remote.maps, atol=1e-5), "the runners' maps differ"
    return local_rate, ray_rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train-n", type=int, default=128)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--explain-n", type=int, default=16)
    a = p.parse_args()
    args = ["--model", "resnet50", "--n", str(a.train_n), "--size", str(a.size),
            "--batch", str(a.batch), "--epochs", str(a.epochs), "--no-augment"]
    with tempfile.TemporaryDirectory() as tmp:
        one = train_rate(Path(tmp) / "one", 1, args)
        two = train_rate(Path(tmp) / "two", 2, args)
    print(f"train   ResNet50 {a.size}px, {a.train_n} images x {a.epochs} epochs, global batch "
          f"{a.batch}: 1 worker {one:.1f} img/s, 2 workers {two:.1f} img/s, ratio {two / one:.2f}")
    local, ray = explain_rates(a.explain_n, a.size, 2)
    print(f"explain Grad-CAM, {a.explain_n} images {a.size}px: local {local:.1f} img/s, "
          f"Ray 2 actors {ray:.1f} img/s, ratio {ray / local:.2f}")
    print(f"cpus: {os.cpu_count()}; load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
