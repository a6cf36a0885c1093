"""Issue #13 item 4: four queued DVC experiments run at once (`dvc queue start -j 4`), on the
default SQLite store and on a real `mlflow server`.

One real DVC project: data prepared once and committed; four `train.lr` values queued and run
four at a time against the project's SQLite store, then again against a `mlflow server` on
127.0.0.1, then one after the other (`dvc exp run`, the serial reference, into a store of its
own). Each batch must give four complete experiments and four FINISHED MLflow runs, no "database
is locked" anywhere in their logs, and per learning rate the same MLflow metrics as the serial run
(training is deterministic). Every run is forced (`-f`): without it DVC would restore an earlier
run's outputs from its run cache and train nothing.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.faults_support import MlflowServer, all_runs, running, set_params, tiny_project
from tests.test_workflow import need_stages, sh, tool_env

LRS = ("1e-3", "3e-4", "1e-4", "3e-5")
COMMON = ("train.epochs=1",)  # one epoch: 12 trainings in this test
METRICS = ("train/loss", "train/accuracy", "val/loss", "val/accuracy")
# Logged params that name where a run was tracked or stored, not what it computed.
WHERE = ("tracking.",)


def queue_done(proj: Path, timeout: float) -> str:
    """Wait until `dvc queue status` lists nothing queued or running; returns the last table."""
    deadline = time.monotonic() + timeout
    while True:
        table = sh("dvc", "queue", "status", cwd=proj).stdout
        if not re.search(r"\b(Queued|Running)\b", table):
            return table
        assert time.monotonic() < deadline, table
        time.sleep(5)


def by_lr(runs: list) -> dict[str, dict]:
    """lr -> {"metrics": the final METRICS, "params": every logged param but WHERE} of each
    top-level run (one per lr)."""
    out = {}
    for run in runs:
        if "mlflow.parentRunId" in run.data.tags:
            continue
        lr = f"{float(run.data.params['train.lr']):g}"
        assert lr not in out, f"two runs for lr={lr}"
        out[lr] = {"metrics": {k: run.data.metrics.get(k) for k in METRICS},
                   "params": {k: v for k, v in run.data.params.items()
                              if not k.startswith(WHERE)}}
    return out


def run_batch(proj: Path, extra: list[str], timeout: float = 3000) -> tuple[str, str]:
    for lr in LRS:
        sh("dvc", "exp", "run", "--queue", "-f", *set_params(*COMMON, f"train.lr={lr}", *extra),
           "train", cwd=proj)
    # Not through a pipe: the workers it starts inherit it and would hold it open (sh() waits
    # for its end).
    with open(proj.parent / "queue-start.log", "a") as log:
        started = subprocess.run(["dvc", "queue", "start", "-j", "4"], cwd=proj, env=tool_env(),
                                 stdout=log, stderr=subprocess.STDOUT, timeout=300)
    assert started.returncode == 0, (proj.parent / "queue-start.log").read_text()
    table = queue_done(proj, timeout)
    logs = ""
    for name in re.findall(r"^\s*\S+\s+(\S+)\s+\S+", table, flags=re.M):
        logs += sh("dvc", "queue", "logs", name, cwd=proj, check=False).stdout
    return table, logs


@pytest.mark.slow
def test_four_queued_experiments_at_once(tmp_path: Path, fault_log) -> None:
    need_stages()
    proj = tiny_project(tmp_path / "proj", *COMMON)
    sh("dvc", "repro", "preprocess", cwd=proj, timeout=900)
    sh("git", "add", "dvc.lock", cwd=proj)
    sh("git", "commit", "-qm", "data prepared", cwd=proj)

    server = MlflowServer(tmp_path / "server")
    server.start()
    batches = {}
    try:
        for label, store, extra in (
                ("default SQLite store", f"sqlite:///{proj}/mlflow.db", []),
                ("`mlflow server`", server.uri, [f"tracking.uri={server.uri}"])):
            table, logs = run_batch(proj, extra)
            runs = all_runs(store)
            finished = [r for r in runs if r.info.status == "FINISHED"
                        and "mlflow.parentRunId" not in r.data.tags]
            locked = "database is locked" in logs
            complete = (len(finished) == 4 and not running(store) and not locked
                        and "Failed" not in table)
            batches[label] = by_lr(runs)
            fault_log.record(
                "4 queued experiments at once (`dvc queue start -j 4`)", label, complete,
                data_lost=len(finished) < 4, finished=len(finished), database_locked=locked,
                queue=table, metrics={lr: r["metrics"] for lr, r in batches[label].items()},
                what="4 complete experiments and FINISHED MLflow runs, no 'database is locked'")
            assert "Failed" not in table, table + logs[-4000:]
            assert len(finished) == 4, [(r.info.run_name, r.info.status) for r in runs]
            assert not locked, logs[-4000:]
            sh("dvc", "queue", "remove", "--all", cwd=proj, check=False)
    finally:
        # The queue's workers wait for more tasks after the batch: none may outlive the test.
        sh("dvc", "queue", "stop", "--kill", cwd=proj, check=False)
        server.stop()

    # The serial reference: one experiment after another, on the project's SQLite store.
    serial_store = tmp_path / "serial"
    for lr in LRS:
        sh("dvc", "exp", "run", "-f", *set_params(
            *COMMON, f"train.lr={lr}", f"tracking.uri=sqlite:///{serial_store}/mlflow.db"),
           "train", cwd=proj, timeout=1800)
    serial = by_lr(all_runs(f"sqlite:///{serial_store}/mlflow.db"))
    lrs = sorted(f"{float(lr):g}" for lr in LRS)
    assert sorted(serial) == lrs, serial
    assert all(v is not None for r in serial.values() for v in r["metrics"].values()), serial

    for label, parallel in batches.items():
        assert sorted(parallel) == lrs, parallel
        # Per queued run: the serial run of the same params, metric by metric, exactly.
        differ = {lr: {k: (parallel[lr]["metrics"][k], serial[lr]["metrics"][k])
                       for k in METRICS if parallel[lr]["metrics"][k] != serial[lr]["metrics"][k]}
                  for lr in lrs}
        params_differ = {lr: sorted(set(parallel[lr]["params"].items())
                                    ^ set(serial[lr]["params"].items())) for lr in lrs}
        equal = not any(differ.values()) and not any(params_differ.values())
        fault_log.record(
            "4 queued experiments at once: metrics equal to serial runs", label, equal,
            runs_compared=len(lrs), metrics_compared=len(lrs) * len(METRICS),
            differ=differ, params_differ=params_differ,
            parallel={lr: r["metrics"] for lr, r in parallel.items()},
            serial={lr: r["metrics"] for lr, r in serial.items()},
            what="each of the 4 queued runs has exactly (==) the MLflow metrics of the serial run "
                 "with the same params")
        assert equal, json.dumps({"differ": differ, "params_differ": params_differ}, indent=1)
