"""Helpers of the fault suite (tests/test_faults_*.py): a tiny real DVC project, `dvc repro`
killed with SIGKILL at a seeded random point of a stage, a real `mlflow server`, and the record of
every fault case tried (for the README "Reliability" table, printed by tests/fault_table.py).

The record itself: tests/fault_record.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import yaml

from tests.conftest import free_ports
from tests.fault_record import LOG_ENV, FaultLog, fault_log_path  # noqa: F401 - re-exported
from tests.test_workflow import make_project, sh, tool_env

PIPELINE = ("validate", "download", "preprocess", "train", "evaluate", "explain")
# The smallest configuration that still runs every stage as the default does: 16 synthetic images
# per class at 32 px, 2 epochs (so a kill can land after a finished epoch and be resumed), one
# explanation method on 2 images.
TINY = ("experiment=smoke", "data.synthetic.n_per_class=16", "data.synthetic.image_size=64",
        "preprocess.image_size=32", "train.epochs=2", "train.batch_size=8", "train.patience=2",
        "explain.methods=[gradcam]", "explain.n_images=2", "explain.metrics.sanity=false")


# ---------------------------------------------------------------------------------------------
# A tiny project
# ---------------------------------------------------------------------------------------------


def tiny(*overrides: str) -> list[str]:
    """TINY with `overrides` (key=value) replacing or adding keys: Hydra rejects a key given
    twice."""
    merged = dict(item.split("=", 1) for item in TINY)
    merged.update(item.split("=", 1) for item in overrides)
    return [f"{key}={value}" for key, value in merged.items()]


def set_params(*overrides: str) -> list[str]:
    """`-S key=value` flags of `dvc exp run` for the tiny config plus `overrides`: with DVC's Hydra
    composition on, each experiment recomposes params.yaml from conf/ and its own -S flags."""
    return [flag for item in tiny(*overrides) for flag in ("-S", item)]


def tiny_project(dest: Path, *overrides: str) -> Path:
    """A fresh clone of this checkout in `dest` with params.yaml composed from TINY (+ overrides)
    and committed, so a plain `dvc repro` runs the tiny pipeline."""
    dest.mkdir(parents=True, exist_ok=True)
    proj = make_project(dest)
    sh(sys.executable, "-m", "crackxai.params", *tiny(*overrides), cwd=proj)
    sh("git", "commit", "-qam", "tiny fault-suite config", cwd=proj)
    return proj


def lock_outs(proj: Path) -> dict[str, dict[str, str]]:
    """stage -> {output path: md5} from dvc.lock (outputs of stages not run yet are absent)."""
    lock_file = proj / "dvc.lock"
    if not lock_file.is_file():
        return {}
    lock = yaml.safe_load(lock_file.read_text()) or {}
    return {stage: {out["path"]: out.get("md5", "") for out in entry.get("outs", [])}
            for stage, entry in (lock.get("stages") or {}).items()}


def file_md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def tree_md5s(root: Path) -> dict[str, str]:
    """Relative path -> md5 of every file under `root` (a file: itself)."""
    if root.is_file():
        return {root.name: file_md5(root)}
    return {str(p.relative_to(root)): file_md5(p) for p in sorted(root.rglob("*")) if p.is_file()}


def leftovers(proj: Path) -> list[str]:
    """Temporary files and folders of atomic writes (`.name.tmp-*`, `.name.old-*`, mkstemp's
    `.name.XXXX`) left beside the outputs: harmless, but listed in the record."""
    found = []
    for sub in ("data", "models", "reports"):
        for p in (proj / sub).rglob(".*") if (proj / sub).is_dir() else []:
            if p.name not in (".gitignore", ".train_state") and ".train_state" not in p.parts:
                found.append(str(p.relative_to(proj)))
    return found


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------


class Background:
    """A command in its own process group (so SIGKILL reaches DVC and the stage it runs), its
    stdout and stderr collected by a thread."""

    def __init__(self, cmd: list[str], cwd: Path, env: dict[str, str] | None = None):
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env or tool_env(), text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.chunks: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.chunks.append(line)

    @property
    def output(self) -> str:
        return "".join(self.chunks)

    def wait_for(self, pattern: str, timeout: float, poll: float = 0.05) -> bool:
        """True once `pattern` (a regex) is in the output; False if the command ended first."""
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.output):
            if self.proc.poll() is not None:
                self.reader.join(5)
                return bool(re.search(pattern, self.output))
            if time.monotonic() > deadline:
                raise TimeoutError(f"'{pattern}' not seen in {timeout:.0f} s of {self.cmd}:\n"
                                   f"{self.output[-3000:]}")
            time.sleep(poll)
        return True

    def kill(self) -> bool:
        """SIGKILL the whole group; True if the command was still running."""
        running = self.proc.poll() is None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.reader.join(5)
        return running

    def wait(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self.reader.join(5)
        return rc


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 over a SQLite store in `home`; stop() kills it with
    SIGKILL (a crash), start() again brings it back on the same port and store."""

    def __init__(self, home: Path, port: int | None = None):
        self.home, self.port = home, port or free_ports()[0]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        home.mkdir(parents=True, exist_ok=True)

    def start(self, timeout: float = 180) -> MlflowServer:
        mlflow_bin = Path(sys.executable).parent / "mlflow"
        self.log = open(self.home / "server.log", "a")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen(
            [str(mlflow_bin), "server", "--backend-store-uri", f"sqlite:///{self.home}/mlflow.db",
             "--artifacts-destination", str(self.home / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            cwd=self.home, env=tool_env(), stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + timeout
        import urllib.request

        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("mlflow server did not start:\n"
                                   + (self.home / "server.log").read_text()[-3000:])
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None
            self.log.close()

    def client(self) -> mlflow.MlflowClient:
        return mlflow.MlflowClient(self.uri)


# ---------------------------------------------------------------------------------------------
# MLflow checks
# ---------------------------------------------------------------------------------------------


def all_runs(tracking_uri: str, experiment: str = "crackxai") -> list:
    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=1000)


def running(tracking_uri: str) -> list[str]:
    """Runs still marked RUNNING: 'run_name (run_id)'."""
    return [f"{r.info.run_name} ({r.info.run_id})" for r in all_runs(tracking_uri)
            if r.info.status == "RUNNING"]
