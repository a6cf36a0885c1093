"""The whole pipeline per Hydra job: quick local sweeps and hyperparameter search without DVC.

    python -m crackxai.pipeline train.lr=1e-4 experiment=smoke                   # one run
    python -m crackxai.pipeline -m train.lr=1e-3,1e-4 train.batch_size=32,64      # a grid
    python -m crackxai.pipeline -m hparams_search=optuna experiment=smoke          # Optuna

Each job validates its configuration, writes it to `<job>/params.yaml` and runs the stages as DVC
does, `python -m crackxai.<stage> --params params.yaml`, one subprocess each with the job's folder
(outputs/<date>/<time>/ or multirun/<date>/<time>/<n>/) as working directory: jobs never
overwrite each other or the project's DVC outputs, and this process never changes directory. The
stages' lines are logged through this process (logger `crackxai.<stage>`), so Hydra's job log
`<job>/pipeline.log` holds them. A relative data.path or tracking store is resolved against the
project first; every job logs into the project's MLflow store (compare them with
`python -m crackxai.compare`).

A job returns the value of `optimized_metric` (e.g. val/best_f1; null: nothing) from its stages'
metric files (reports/metrics.json as `test/...`, `val/...`; reports/explain/metrics.json as
`explain/...`; reports/data_quality.json as `data_quality/...`), for Hydra's sweepers. A failing
job raises an exception: a multirun logs it and goes on with the next job, and the command exits
2 at the end with one line naming the first failure. For tracked, cached, reproducible runs use
`dvc exp run` instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from omegaconf import DictConfig, OmegaConf

from crackxai.config import Config, find_conf_dir, to_dict, validate
from crackxai.core.entry import INTERRUPT_EXIT, log, run_command
from crackxai.core.errors import ConfigError, CrackxaiError
from crackxai.core.io import write_text
from crackxai.core.logs import use_root_handlers
from crackxai.core.paths import Layout, project_root
from crackxai.stages import STAGES
from crackxai.tracking.runs import resolve_tracking_uri

STAGE = "pipeline"
PARAMS_FILE = "params.yaml"
LOG_LINE = re.compile(r"^\[(crackxai(?:\.[\w.]+)?)\] (.*)$")  # core.logs.FORMAT
ERROR_LINE = re.compile(r"^crackxai\.\w+: error: (.*)$")  # core.entry's one-paragraph error
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # cursor moves of nested progress bars
PROGRESS = re.compile(r"\|\s*(\d+)/(\d+) \[")  # a tqdm bar: "desc:  40%|####  | 4/10 [00:01<..."
STOP_WAIT_S = 60  # after Ctrl-C, how long a stage may take to stop cleanly


class StageFailed(CrackxaiError):
    """A stage of a pipeline job exited with an error."""


# ---------------------------------------------------------------------------------------------
# One job
# ---------------------------------------------------------------------------------------------


def job_params(cfg: Config, project: Path) -> dict[str, Any]:
    """The job's parameters: `cfg` with the paths that are relative to the project made absolute
    (the stages run in the job's folder)."""
    params = to_dict(cfg)
    path = cfg.data.path
    if path and not Path(path).expanduser().is_absolute():
        params["data"]["path"] = str(project / path)
    if cfg.tracking.uri:
        params["tracking"]["uri"] = resolve_tracking_uri(cfg.tracking.uri, project)
    return params


def stage_env(cfg: Config, project: Path) -> dict[str, str]:
    """The stages' environment: the project's MLflow store (MLFLOW_TRACKING_URI, else
    <project>/mlflow.db), not one in the job's folder; output unbuffered so lines stream."""
    env = dict(os.environ)
    if not cfg.tracking.uri:
        env["MLFLOW_TRACKING_URI"] = resolve_tracking_uri(None, project)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("HYDRA_FULL_ERROR", None)  # set for this process only (see main)
    return env


def _last_segment(raw: bytes) -> str:
    """A line as a terminal would leave it: progress bars redraw with \\r, keep the last state."""
    text = ANSI.sub("", raw.decode("utf-8", "replace"))
    parts = [p for p in text.rstrip("\r\n").split("\r") if p.strip()]
    return parts[-1].rstrip() if parts else ""


def _relay(stream: IO[bytes], stage: str, level: int, tail: deque[str] | None = None) -> None:
    """Log each line of a stage's output: `[crackxai.x] msg` on logger crackxai.x, the rest on
    crackxai.<stage> at `level`; `tail` keeps the last lines (for the error message)."""
    default = logging.getLogger(f"crackxai.{stage}")
    for raw in stream:
        line = _last_segment(raw)
        if not line:
            continue
        if PROGRESS.search(line):  # a progress bar's redraw: the stage logs what it did anyway
            continue
        if tail is not None:
            tail.append(line)
        if m := LOG_LINE.match(line):
            logging.getLogger(m.group(1)).info(m.group(2))
        elif ERROR_LINE.match(line):
            default.error(line)
        else:
            default.log(level, line)


def run_stage_process(stage: str, job_dir: Path, env: dict[str, str]) -> None:
    """`python -m crackxai.<stage> --params params.yaml` in `job_dir`, its lines logged here."""
    cmd = [sys.executable, "-m", f"crackxai.{stage}", "--params", PARAMS_FILE]
    proc = subprocess.Popen(cmd, cwd=job_dir, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    tail: deque[str] = deque(maxlen=20)
    errors = threading.Thread(target=_relay, args=(proc.stderr, stage, logging.WARNING, tail),
                              daemon=True)
    errors.start()
    try:
        _relay(proc.stdout, stage, logging.INFO)
        code = proc.wait()
    except KeyboardInterrupt:
        # Ctrl-C reached the stage too (same process group): let it stop cleanly, then stop.
        try:
            proc.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    finally:
        errors.join(timeout=10)
    if code == INTERRUPT_EXIT:
        raise KeyboardInterrupt
    if code != 0:
        reported = [m.group(1) for line in tail if (m := ERROR_LINE.match(line))]
        reason = reported[-1] if reported else (tail[-1] if tail else "no output")
        how = f"exit code {code}" if code > 0 else f"killed by signal {-code}"
        raise StageFailed(f"Stage '{stage}' failed ({how}) in job folder '{job_dir}': {reason} "
                          f"The job's log ({job_dir}/pipeline.log) has the stage's whole output.")


def numeric_leaves(d: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """{'test': {'f1': 0.9, 'n': 300}} -> {'test/f1': 0.9, 'test/n': 300.0}, names joined with '/'
    as MLflow's (evaluation.scores.flatten_metrics); text, lists and nulls are left out."""
    out: dict[str, float] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(numeric_leaves(value, name + "/"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def job_metrics(job_dir: Path) -> dict[str, float]:
    """The metrics a job's stages wrote, flat: test/..., val/..., explain/..., data_quality/..."""
    import json

    layout = Layout(job_dir)
    out: dict[str, float] = {}
    for path, prefix in ((layout.data_quality, "data_quality/"), (layout.metrics, ""),
                         (layout.explain_metrics, "explain/")):
        if path.is_file():
            out.update(numeric_leaves(json.loads(path.read_text()), prefix))
    return out


def objective(metrics: dict[str, float], name: str | None) -> float | None:
    """The value of `optimized_metric` (None when it is null)."""
    if name is None:
        return None
    if name not in metrics:
        known = sorted(k for k in metrics if not k.startswith(("explain/", "data_quality/")))
        raise ConfigError(
            f"optimized_metric '{name}' is not among this job's metrics (e.g. "
            f"{', '.join(known[:12]) or 'none'}; also explain/... and data_quality/...). Set "
            f"optimized_metric to one of them, e.g. `optimized_metric=test/accuracy`, or null."
        )
    return metrics[name]


def run_job(raw: DictConfig | dict, job_dir: Path, project: Path,
            stages: tuple[str, ...] = STAGES) -> float | None:
    """Validate `raw`, run `stages` in `job_dir` (relative paths of the config against
    `project`) and return the value of `optimized_metric`."""
    cfg = validate(raw, source="configuration")
    job_dir = Path(job_dir).resolve()
    job_dir.mkdir(parents=True, exist_ok=True)
    write_text(job_dir / PARAMS_FILE, OmegaConf.to_yaml(OmegaConf.create(job_params(cfg, project))))
    env = stage_env(cfg, project)
    for name in stages:
        log(STAGE, f"{name} (in {job_dir})")
        run_stage_process(name, job_dir, env)
    value = objective(job_metrics(job_dir), cfg.optimized_metric)
    if value is not None:
        log(STAGE, f"{cfg.optimized_metric} = {value:.6g} (optimized_metric)")
    return value


def job(raw: DictConfig) -> float | None:
    """One Hydra job: run the pipeline in the job's output folder; return optimized_metric."""
    from hydra.core.hydra_config import HydraConfig

    use_root_handlers()  # Hydra configured the root logger for this job: console + pipeline.log
    hc = HydraConfig.get()
    try:
        return run_job(raw, Path(hc.runtime.output_dir), project_root())
    except CrackxaiError as exc:
        # Into this job's log now: Hydra reports a failed job only at the end of the sweep.
        logging.getLogger(f"crackxai.{STAGE}").error(
            "job %s (%s) failed: %s", hc.job.get("num", 0), " ".join(hc.overrides.task), exc)
        raise


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _patched(argv: list[str], env: dict[str, str]) -> Iterator[None]:
    """sys.argv and environment variables for the duration of the Hydra app only."""
    old_argv, old_env = sys.argv, {k: os.environ.get(k) for k in env}
    sys.argv = [sys.argv[0] if sys.argv else STAGE, *argv]
    os.environ.update(env)
    try:
        yield
    finally:
        sys.argv = old_argv
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def hydra_app(argv: list[str]) -> None:
    """Run `job` as a Hydra app over conf/ with Hydra's command line `argv`."""
    import hydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    app = hydra.main(config_path=str(find_conf_dir().resolve()), config_name="config",
                     version_base="1.3")(job)
    # HYDRA_FULL_ERROR: Hydra re-raises a job's exception instead of printing a traceback and
    # exiting 1, so the entry-point wrapper turns it into one line and exit code 2.
    with _patched(argv, {"HYDRA_FULL_ERROR": "1"}):
        try:
            app()
        except (HydraException, OmegaConfBaseException) as exc:
            raise ConfigError(f"Invalid Hydra command line {argv}: {' '.join(str(exc).split())} "
                              "Groups and options live in conf/; see README 'Configuration'."
                              ) from None


def main(argv: list[str] | None = None) -> None:
    run_command(STAGE, lambda: hydra_app(list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    main()
