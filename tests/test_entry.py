"""The entry points: the one wrapper (one-line errors with exit 2, Ctrl-C with exit 130, for a stage
and a tool), the `crackxai` console script, imports without side effects, and the pipeline tool's
Hydra jobs (stages as subprocesses in the job folder, no chdir, optimized_metric, a failing job
raising instead of exiting, so a multirun goes on; the Optuna preset). None of these trains: the
pipeline tests fake the stages or run the tiny download stage only."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from crackxai.config import compose, default_config, validate
from crackxai.config.entry import run_stage
from crackxai.core.entry import command, run_command
from crackxai.core.errors import ConfigError, DataError
from crackxai.tools import compare as compare_tool
from crackxai.tools import pipeline

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def raw(values: dict) -> dict:
    """conf/'s defaults with `values` on top, as Hydra hands a pipeline job its config."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.merge(compose([]), values))  # type: ignore[return-value]



def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# ---------------------------------------------------------------------------------------------
# The wrapper
# ---------------------------------------------------------------------------------------------


def test_run_command_returns_and_turns_errors_into_one_line(capsys) -> None:
    assert run_command("demo", lambda: 41 + 1) == 42

    def bad() -> None:
        raise DataError("No images in 'x'. Put one sub-folder per class there.")

    with pytest.raises(SystemExit) as exc:
        run_command("demo", bad)
    assert exc.value.code == 2
    assert one_line(capsys.readouterr().err) == \
        "crackxai.demo: error: No images in 'x'. Put one sub-folder per class there."


def test_ctrl_c_exits_130_with_one_line(capsys) -> None:
    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exc:
        run_command("demo", interrupted)
    assert exc.value.code == 130
    assert one_line(capsys.readouterr().err).startswith("crackxai.demo: error: interrupted")

    @command("demo", interrupted="stopped; nothing was written.")
    def main(argv: list[str]) -> None:
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 130
    assert one_line(capsys.readouterr().err) == "crackxai.demo: error: stopped; nothing was written."


def test_other_exceptions_are_not_swallowed() -> None:
    """A bug is a bug: only CrackxaiError and Ctrl-C are turned into short messages."""
    def buggy() -> None:
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        run_command("demo", buggy)


def test_stage_errors_and_interrupts(project: Path, capsys) -> None:
    """A stage as `python -m crackxai.<stage>` runs it: config parsed, then main(cfg)."""
    seen = []

    def main(cfg) -> dict:
        seen.append(cfg.train.lr)
        return {"ok": 1}

    assert run_stage("demo", main, ["train.lr=0.01"]) == {"ok": 1} and seen == [0.01]
    # A bad override: the config layer's message, exit 2, before main runs.
    with pytest.raises(SystemExit) as exc:
        run_stage("demo", main, ["train.lr=-1"])
    assert exc.value.code == 2 and seen == [0.01]
    assert one_line(capsys.readouterr().err).startswith(
        "crackxai.demo: error: Invalid value for 'train.lr'")

    def stopped(cfg) -> None:
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exc:
        run_stage("demo", stopped, [])
    assert exc.value.code == 130
    assert "rerun to continue" in one_line(capsys.readouterr().err)


def test_tool_errors_and_interrupts(project: Path, capsys, monkeypatch) -> None:
    """A tool's main: the same wrapper, the same prefix and exit codes."""
    with pytest.raises(SystemExit) as exc:
        compare_tool.main(["--last", "0", "--no-plot"])
    assert exc.value.code == 2
    assert one_line(capsys.readouterr().err) == \
        "crackxai.compare: error: --last must be a positive number of runs, got 0."

    def interrupted(**kwargs) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(compare_tool, "compare", interrupted)
    with pytest.raises(SystemExit) as exc:
        compare_tool.main(["--no-plot"])
    assert exc.value.code == 130
    one_line(capsys.readouterr().err)


def test_logging_goes_to_stdout_once(project: Path, capsys) -> None:
    run_command("demo", lambda: logging.getLogger("crackxai.demo").info("step one"))
    run_command("demo", lambda: logging.getLogger("crackxai.data.x").info("step two"))
    out = capsys.readouterr().out
    assert out.count("[crackxai.demo] step one\n") == 1
    assert out.count("[crackxai.data.x] step two\n") == 1


# ---------------------------------------------------------------------------------------------
# The console script and imports
# ---------------------------------------------------------------------------------------------


def test_console_script_help(tmp_path: Path) -> None:
    exe = VENV_BIN / "crackxai"
    assert exe.is_file(), "the [project.scripts] entry is not installed: run `make setup`"
    top = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert top.returncode == 0, top.stderr
    assert "stages: validate, download, preprocess, train, evaluate, explain" in top.stdout
    assert "pipeline" in top.stdout
    train = subprocess.run([str(exe), "train", "--help"], capture_output=True, text=True,
                           timeout=120, cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    assert train.stdout.startswith("usage: python -m crackxai.train")
    assert train.stderr == ""
    unknown = subprocess.run([str(exe), "trian"], capture_output=True, text=True, timeout=120,
                             cwd=tmp_path)
    assert unknown.returncode == 1 and "unknown command 'trian'" in unknown.stderr


IMPORT_ALL = """
import importlib, logging, os, pkgutil, sys
import matplotlib
before = (list(sys.meta_path), dict(os.environ))
import crackxai
names = [m.name for m in pkgutil.walk_packages(crackxai.__path__, "crackxai.")
         if m.name != "crackxai.__main__"]
for name in names:
    importlib.import_module(name)
# Libraries (absl, six, ...) add finders and variables of their own; none may be crackxai's.
ours = [f for f in sys.meta_path if type(f).__module__.startswith("crackxai")]
assert not ours, ours
changed = {k for k in set(os.environ) | set(before[1]) if os.environ.get(k) != before[1].get(k)}
assert "TF_CPP_MIN_LOG_LEVEL" not in changed, changed
assert logging.getLogger("crackxai").handlers == [] and logging.getLogger().handlers == []
assert matplotlib.rcParams._get_backend_or_none() is None  # no matplotlib.use() on import
print(len(names))
"""


def test_importing_any_module_has_no_side_effects(tmp_path: Path) -> None:
    """No import hook, environment variable, logging handler or matplotlib backend is set by
    importing crackxai or any of its modules (the entry points do that when they run)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "MPLBACKEND")}
    out = subprocess.run([sys.executable, "-c", IMPORT_ALL], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(out.stdout.split()[-1]) > 40


# ---------------------------------------------------------------------------------------------
# The pipeline tool
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def fake_stages(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Path, dict]]:
    """Stages replaced by a stand-in that writes the evaluate stage's metrics file (accuracy
    1 - lr, so a sweep has something to optimise) and records where it ran."""
    calls: list[tuple[str, Path, dict]] = []
    cwd = Path.cwd()

    def run_stage_process(stage: str, job_dir: Path, env: dict[str, str]) -> None:
        assert Path.cwd() == cwd, "the pipeline changed the working directory"
        params = yaml.safe_load((job_dir / "params.yaml").read_text())
        calls.append((stage, job_dir, params))
        logging.getLogger(f"crackxai.{stage}").info(f"{stage} ran in {job_dir.name}")
        if stage == "evaluate":
            (job_dir / "reports").mkdir(parents=True, exist_ok=True)
            acc = 1.0 - params["train"]["lr"]
            (job_dir / "reports" / "metrics.json").write_text(json.dumps(
                {"test": {"accuracy": acc, "n": 10}, "val": {"best_f1": acc, "n": 10}}))

    monkeypatch.setattr(pipeline, "run_stage_process", run_stage_process)
    return calls


@pytest.fixture
def restore_logging(monkeypatch: pytest.MonkeyPatch):
    """Hydra configures the root logger for each job; put it back for the next tests. Its
    logging.config.dictConfig also closes every existing handler (logging.shutdown over
    logging._handlerList), pytest's own log-capture handlers included: hide them from it."""
    monkeypatch.setattr(logging, "_handlerList", [])
    root, ours = logging.getLogger(), logging.getLogger("crackxai")
    saved = (list(root.handlers), root.level, list(ours.handlers), ours.level)
    yield
    root.handlers[:], ours.handlers[:] = saved[0], saved[2]
    root.setLevel(saved[1])
    ours.setLevel(saved[3])


def test_job_returns_optimized_metric_without_chdir(project: Path, fake_stages) -> None:
    cfg = raw({"optimized_metric": "test/accuracy", "train": {"lr": 0.25},
               "data": {"source": "local", "path": "imgs"}})
    job_dir = project / "outputs" / "job"
    assert pipeline.run_job(cfg, job_dir, project) == 0.75
    assert [c[0] for c in fake_stages] == list(pipeline.STAGES)
    assert {c[1] for c in fake_stages} == {job_dir}
    params = fake_stages[0][2]
    assert params["data"]["path"] == str(project / "imgs")  # relative to the project, not the job
    assert validate(params).train.lr == 0.25  # the job's params.yaml is a valid parameter file
    assert Path.cwd() == project

    # null: nothing to return; a name the stages did not write: a clear error, not SystemExit.
    assert pipeline.run_job(raw({"train": {"lr": 0.25}}), job_dir, project) is None
    with pytest.raises(ConfigError, match="optimized_metric 'val/loss' is not among"):
        pipeline.run_job(raw({"optimized_metric": "val/loss"}), job_dir, project)


def test_job_raises_on_bad_config(project: Path, fake_stages) -> None:
    with pytest.raises(ConfigError, match="Invalid value for 'train.lr'"):
        pipeline.run_job(raw({"train": {"lr": -1.0}}), project / "outputs" / "bad", project)
    assert fake_stages == []


def test_stage_env_points_at_project_store(project: Path) -> None:
    cfg = default_config()
    env = pipeline.stage_env(cfg, project)
    assert env["MLFLOW_TRACKING_URI"] == f"sqlite:///{project}/mlflow.db"
    params = pipeline.job_params(default_config({"tracking": {"uri": "sqlite:///runs/m.db"}}), project)
    assert params["tracking"]["uri"] == f"sqlite:///{project}/runs/m.db"


def test_numeric_leaves_flatten_like_mlflow_names() -> None:
    metrics = {"test": {"accuracy": 0.5, "confusion": [[1, 2]], "n": 3, "ok": True},
               "gradcam": {"pointing_game": None, "deletion_auc": 0.25}}
    assert pipeline.numeric_leaves(metrics, "x/") == {
        "x/test/accuracy": 0.5, "x/test/n": 3.0, "x/gradcam/deletion_auc": 0.25}


def test_real_stage_subprocess_logs_through_the_job(project: Path, caplog) -> None:
    """The download stage for real, as DVC runs it, in the job folder: its lines reach this
    process's loggers (so Hydra's job log), its outputs stay in the job folder."""
    job_dir = project / "outputs" / "dl"
    values = raw({"seed": 1, "data": {"synthetic": {"n_per_class": 2, "image_size": 32}}})
    with caplog.at_level(logging.INFO, logger="crackxai"):
        assert pipeline.run_job(values, job_dir, project, stages=("download",)) is None
    assert (job_dir / "data" / "manifest.csv").is_file()
    assert not (project / "data").exists() and Path.cwd() == project
    lines = [(r.name, r.getMessage()) for r in caplog.records]
    assert any(name == "crackxai.download" and msg.startswith("wrote 4 images")
               for name, msg in lines), lines
    assert not any("%|" in msg for _, msg in lines)  # progress bars are not logged

    # A stage that fails: its one-paragraph error, inside an exception (not SystemExit).
    bad = {"data": {"source": "local", "path": str(project / "missing")}}
    with pytest.raises(pipeline.StageFailed, match="Stage 'download' failed .*does not exist"):
        pipeline.run_job(raw(bad), project / "outputs" / "bad", project, stages=("download",))


def test_multirun_goes_on_after_a_bad_job(project: Path, fake_stages, restore_logging, capfd
                                          ) -> None:
    """`python -m crackxai.pipeline -m train.lr=-1,0.25`: the bad job is logged and the next one
    runs; the command then exits 2 with the first failure in one line. Each job's
    pipeline.log holds its lines, printed once."""
    sweep = project / "multirun" / "t"
    with pytest.raises(SystemExit) as exc:
        pipeline.main(["-m", "train.lr=-1,0.25", f"hydra.sweep.dir={sweep}",
                       "optimized_metric=test/accuracy"])
    assert exc.value.code == 2
    out, err = capfd.readouterr()
    assert "crackxai.pipeline: error: Invalid value for 'train.lr'" in err
    assert "Traceback" not in err
    assert [c[1] for c in fake_stages] == [(sweep / "1").resolve()] * len(pipeline.STAGES)
    assert Path.cwd() == project
    bad_log = (sweep / "0" / "pipeline.log").read_text()
    assert "job 0 (train.lr=-1 optimized_metric=test/accuracy) failed: Invalid value for " \
        "'train.lr'" in bad_log
    good_log = (sweep / "1" / "pipeline.log").read_text()
    assert "[crackxai.train][INFO] - train ran in 1" in good_log
    assert "test/accuracy = 0.75" in good_log
    assert out.count("train ran in 1") == 1  # Hydra's console handler only, not ours as well


def test_hparams_search_preset_composes(project: Path) -> None:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(project / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["hparams_search=optuna", "experiment=smoke"],
                      return_hydra_config=True)
    assert cfg.optimized_metric == "val/best_f1"
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    cfg_keys = validate({k: v for k, v in cfg.items() if k != "hydra"})
    for key in sweeper.params:  # every searched key exists in the schema
        section, name = key.split(".")
        assert hasattr(getattr(cfg_keys, section), name), key
    # Without the preset (what DVC composes): no sweeper settings leak into the config.
    with initialize_config_dir(config_dir=str(project / "conf"), version_base="1.3"):
        plain = compose("config")
    assert plain.optimized_metric is None


def test_optuna_sweep_runs_trials_and_reports_best(project: Path, fake_stages, restore_logging
                                                   ) -> None:
    sweep = project / "multirun" / "optuna"
    pipeline.main(["hparams_search=optuna", "hydra.sweeper.n_trials=3",
                   "hydra.sweeper.sampler.n_startup_trials=2", f"hydra.sweep.dir={sweep}"])
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    lrs = sorted({c[2]["train"]["lr"] for c in fake_stages})
    assert len(lrs) == 3 and all(1e-4 <= lr <= 1e-2 for lr in lrs)
    assert results["best_value"] == pytest.approx(1.0 - lrs[0])
    assert Path.cwd() == project
