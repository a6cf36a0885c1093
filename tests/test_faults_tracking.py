"""Issue #13 item 3: the tracking store fails in the middle of a stage.

- A real `mlflow server` on 127.0.0.1 (SQLite backend, proxied artifacts) is killed with SIGKILL
  at a seeded point of training: the train stage stops with one paragraph naming the store and the
  fix (no traceback, no minutes of retries), models/.train_state is kept, and with the server back
  `dvc repro train` finishes the same MLflow run; no run stays RUNNING.
- The default SQLite store held by another writer (`BEGIN EXCLUSIVE` in another process): locks
  held for a second or two at a time are waited out, a lock held for the whole stage fails it
  with one paragraph, and the rerun succeeds once the lock is gone.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.faults_support import Background, MlflowServer, all_runs, running, tiny_project
from tests.test_workflow import need_stages, sh

SEED = 7

# Holds an exclusive (write) lock on a SQLite database: `hold` seconds at a time with `gap`
# seconds free in between, until killed; prints "locked" once it first holds it.
LOCKER = """
import sqlite3, sys, time
db, hold, gap = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
con = sqlite3.connect(db, isolation_level=None, timeout=60)
first = True
while True:
    con.execute("BEGIN EXCLUSIVE")
    if first:
        print("locked", flush=True)
        first = False
    time.sleep(hold)
    con.execute("COMMIT")
    time.sleep(gap)
"""


def error_lines(output: str, stage: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(f"crackxai.{stage}: error:")]


@pytest.mark.slow
def test_tracking_server_killed_during_training(tmp_path: Path, fault_log) -> None:
    need_stages()
    server = MlflowServer(tmp_path / "server")
    proj = tiny_project(tmp_path / "proj", f"tracking.uri={server.uri}")
    state = proj / "models" / ".train_state" / "state.json"
    rng = random.Random(SEED)
    server.start()
    try:
        sh("dvc", "repro", "preprocess", cwd=proj, timeout=900)
        bg = Background(["dvc", "repro", "train"], proj)
        deadline = time.monotonic() + 900
        while not state.is_file():  # the run has started
            assert bg.proc.poll() is None, bg.output[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        delay = rng.uniform(0.0, 10.0)
        time.sleep(delay)
        server.stop()  # SIGKILL: a crash, not a shutdown
        killed = time.monotonic()
        rc = bg.wait(900)
        failed_after = time.monotonic() - killed
        out = bg.output
        errors = error_lines(out, "train")
        run_id = json.loads(state.read_text())["run_id"] if state.is_file() else None
        clear = (rc != 0 and len(errors) == 1 and "Traceback" not in out
                 and "failed during the train stage" in errors[0] and server.uri in errors[0])
        kept = state.is_file() and not (proj / "models" / "model.keras").exists()

        server.start()  # back, same port and store
        rerun = sh("dvc", "repro", "train", cwd=proj, timeout=1800, check=False)
        ok = rerun.returncode == 0
        run_file = json.loads((proj / "models" / "mlflow_run.json").read_text()) if ok else {}
        runs = {r.info.run_id: r.info.status for r in all_runs(server.uri)}
        resumed = run_file.get("run_id") == run_id
        survived = (clear and kept and ok and not running(server.uri)
                    and runs.get(run_file.get("run_id")) == "FINISHED")
        fault_log.record(
            "`mlflow server` SIGKILLed during training, then restarted",
            f"server killed {delay:.1f} s into the train stage's MLflow run", survived,
            data_lost=not kept, error=errors, failed_after_s=round(failed_after, 1),
            resumed_same_run=resumed, run_statuses=runs,
            what="train stops with one paragraph naming the server and the fix; "
                 "models/.train_state kept; with the server back the rerun finishes the same run")
        assert clear, (rc, errors, out[-4000:])
        assert failed_after < 300, failed_after  # the next MLflow call fails at once: no long retries
        assert kept, sorted(p.name for p in (proj / "models").rglob("*"))
        assert ok, rerun.stdout[-3000:] + rerun.stderr[-3000:]
        assert resumed and "(resumed)" in rerun.stdout, (run_id, run_file)
        assert runs[run_id] == "FINISHED" and not running(server.uri), runs
    finally:
        server.stop()


def start_locker(db: Path, hold: float, gap: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", LOCKER, str(db), str(hold), str(gap)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.kill()  # SIGKILL: the OS drops its lock
    proc.wait()


@pytest.mark.slow
def test_sqlite_store_locked_by_another_writer(tmp_path: Path, fault_log) -> None:
    need_stages()
    proj = tiny_project(tmp_path / "proj")
    store = f"sqlite:///{proj}/mlflow.db"
    sh("dvc", "repro", "train", cwd=proj, timeout=1800)
    db = proj / "mlflow.db"

    # Another writer takes the lock for 2 s at a time: each MLflow call waits it out.
    locker = start_locker(db, hold=2.0, gap=0.5)
    try:
        brief = sh("dvc", "repro", "evaluate", cwd=proj, timeout=1800, check=False)
    finally:
        stop(locker)
    waited = brief.returncode == 0 and not running(store)
    fault_log.record("SQLite store locked by another writer", "lock held 2 s at a time",
                     waited, what="brief locks are waited out; a lock held for the whole stage "
                                  "fails it with one paragraph, the rerun succeeds once it is gone")
    assert waited, brief.stdout[-3000:] + brief.stderr[-3000:]
    metrics = (proj / "reports" / "metrics.json").read_bytes()

    # A writer that keeps the lock for the whole stage: one paragraph, then a clean rerun.
    locker = start_locker(db, hold=3600, gap=0)
    try:
        held = sh("dvc", "repro", "-f", "-s", "evaluate", cwd=proj, timeout=1800, check=False)
    finally:
        stop(locker)
    errors = error_lines(held.stdout + held.stderr, "evaluate")
    clear = (held.returncode != 0 and len(errors) == 1 and "locked by another process" in errors[0]
             and "Traceback" not in held.stdout + held.stderr)
    rerun = sh("dvc", "repro", "evaluate", cwd=proj, timeout=1800, check=False)
    ok = rerun.returncode == 0 and not running(store)
    same = (proj / "reports" / "metrics.json").read_bytes() == metrics
    fault_log.record("SQLite store locked by another writer", "lock held for the whole stage",
                     clear and ok and same, data_lost=not same, error=errors,
                     what="brief locks are waited out; a lock held for the whole stage fails it "
                          "with one paragraph, the rerun succeeds once it is gone")
    assert clear, held.stdout[-3000:] + held.stderr[-3000:]
    assert ok, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert same
