"""Issue #13: a bad value must not cost the last good outputs, and DVC's plots must not mislead.

- The validate stage checks params.yaml in full and writes one resolved file per config section;
  dvc.yaml puts it upstream of every other stage (DVC deletes a stage's outputs just before
  running it, so only a stage upstream of all of them can fail before anything is deleted).
- Every DVC output is cached, so `make restore` (`touch params.yaml dvc.lock && git checkout HEAD
  -- params.yaml dvc.lock && dvc checkout`) restores the last good state after any failed or
  killed run (tests/test_faults_params.py).
- Truncated data/model files get one-paragraph messages naming the file and the fix.
- `dvc plots show` draws each curve once, with named axes, the confusion matrix as the PNG does.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from crackxai.core.errors import CrackxaiError, DataError
from tests.test_architecture import config_sections

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = "reports/config"


@pytest.fixture(scope="module")
def dvc() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())


def _path(entry: str | dict) -> str:
    return entry if isinstance(entry, str) else next(iter(entry))


def _top_level_params(spec: dict) -> set[str]:
    return {p.split(".")[0] for p in spec.get("params", []) if isinstance(p, str)}


# ---------------------------------------------------------------------------------------------
# The validate stage
# ---------------------------------------------------------------------------------------------


def test_validate_writes_one_resolved_file_per_section(project: Path) -> None:
    from crackxai.config import load_config, to_dict
    from crackxai.stages import validate

    cfg = load_config(["--params", "params.yaml"])
    validate.main(cfg)
    written = sorted(p.name for p in (project / CONFIG_DIR).iterdir())
    assert written == sorted(f"{s}.json" for s in config_sections())
    resolved = to_dict(cfg)
    for section in config_sections():
        assert json.loads((project / CONFIG_DIR / f"{section}.json").read_text()) == \
            {section: resolved[section]}
    # Same config, same bytes: unchanged sections leave the downstream stages cached.
    before = {p.name: p.read_bytes() for p in (project / CONFIG_DIR).iterdir()}
    validate.main(load_config(["--params", "params.yaml", "explain.n_images=3"]))
    after = {p.name: p.read_bytes() for p in (project / CONFIG_DIR).iterdir()}
    assert [n for n in sorted(before) if before[n] != after[n]] == ["explain.json"]


def test_bad_value_stops_validate_with_one_paragraph(project: Path) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["epochs"] = 0
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    out = subprocess.run([sys.executable, "-m", "crackxai.validate", "--params", "params.yaml"],
                         cwd=project, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    error = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(error) == 1 and error[0].startswith(
        "crackxai.validate: error: Invalid value for 'train.epochs'"), out.stderr
    assert not (project / CONFIG_DIR).exists()


# ---------------------------------------------------------------------------------------------
# dvc.yaml
# ---------------------------------------------------------------------------------------------


def test_validate_is_first_and_upstream_of_every_stage(dvc: dict) -> None:
    stages = dvc["stages"]
    assert next(iter(stages)) == "validate"
    spec = stages["validate"]
    assert spec["params"] == [{"params.yaml": None}]  # the whole file
    outs = {_path(o): o for o in spec["outs"]}
    assert set(outs) == {f"{CONFIG_DIR}/{s}.json" for s in config_sections()}
    # persist: DVC leaves the previous files in place while validate runs, so a failed
    # validation deletes nothing at all.
    assert all(isinstance(o, dict) and o[p]["persist"] is True for p, o in outs.items())
    for name, spec in stages.items():
        if name == "validate":
            continue
        config_deps = {d for d in map(_path, spec["deps"]) if d.startswith(CONFIG_DIR + "/")}
        # Exactly the sections in `params`: a change to another section leaves it cached.
        assert config_deps == {f"{CONFIG_DIR}/{s}.json" for s in _top_level_params(spec)}, name


def test_every_output_is_cached(dvc: dict) -> None:
    """`cache: false` outputs are deleted by a failed run and cannot be checked out again."""
    for name, spec in dvc["stages"].items():
        for kind in ("outs", "metrics", "plots"):
            for entry in spec.get(kind, []):
                if isinstance(entry, dict):
                    assert next(iter(entry.values())).get("cache", True), (name, entry)


def test_plots_draw_each_curve_once_with_named_axes(dvc: dict) -> None:
    top = [next(iter(p.items())) for p in dvc["plots"]]
    drawn = [(f, col) for _, spec in top for f, cols in spec["y"].items() for col in cols]
    history = [col for f, col in drawn if f == "reports/train_history.csv"]
    assert sorted(history) == ["accuracy", "loss", "val_accuracy", "val_loss"]  # once each
    for _, spec in top:
        assert spec["x"] == "epoch" and spec["x_label"] and spec["y_label"] and spec["title"]
        # DVC's built-in linear template colours by revision only: one colour for all series.
        template = json.loads((REPO / ".dvc" / "plots" / f"{spec['template']}.json").read_text())
        assert template["encoding"]["color"]["field"] == "field"  # the series' column name
    stage_plots = {_path(p): (p[_path(p)] if isinstance(p, dict) else {})
                   for spec in dvc["stages"].values() for p in spec.get("plots", [])}
    assert "reports/train_history.csv" not in stage_plots  # it would render a second copy
    for path, props in stage_plots.items():
        if path.endswith(".csv"):
            assert props.get("x_label") and props.get("y_label") and props.get("title"), path


def test_confusion_plot_is_oriented_like_the_png(dvc: dict) -> None:
    from crackxai.evaluation.plots import _confusion_figure

    ax = _confusion_figure(np.array([[3, 1], [0, 4]]), ["Negative", "Positive"], "t", None).axes[0]
    evaluate = {_path(p): p[_path(p)] for p in dvc["stages"]["evaluate"]["plots"]
                if isinstance(p, dict)}
    confusion = evaluate["reports/plots/confusion.csv"]
    assert (confusion["x"], confusion["y"]) == (ax.get_xlabel(), ax.get_ylabel()) == \
        ("predicted", "actual")


def test_dvc_plots_output_is_git_ignored() -> None:
    out = subprocess.run(["git", "check-ignore", "-q", "dvc_plots/index.html"], cwd=REPO)
    assert out.returncode == 0


# ---------------------------------------------------------------------------------------------
# Truncated files: one paragraph, the file, the fix
# ---------------------------------------------------------------------------------------------


def _processed(root: Path) -> Path:
    from crackxai.data.processed import write_classes

    d = root / "data" / "processed"
    d.mkdir(parents=True)
    write_classes(d, ["Negative", "Positive"], 8)
    np.save(d / "test_images.npy", np.zeros((20, 8, 8, 3), np.uint8))
    np.save(d / "test_labels.npy", np.arange(20, dtype=np.int64) % 2)
    labels = np.arange(20) % 2
    pd.DataFrame({"index": range(20), "path": "x", "label": labels,
                  "class": np.array(["Negative", "Positive"])[labels], "sha256": "0",
                  "has_mask": False}).to_csv(d / "test.csv", index=False)
    return d


def _truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


@pytest.mark.parametrize("mmap", [True, False])
@pytest.mark.parametrize("keep", [600, 40])  # data cut short / header cut short
def test_truncated_npy_is_a_data_error_naming_file_and_fix(tmp_path: Path, mmap: bool,
                                                          keep: int) -> None:
    from crackxai.data.processed import load_split

    d = _processed(tmp_path)
    _truncate(d / "test_images.npy", keep)
    with pytest.raises(DataError) as err:
        load_split("test", d, mmap=mmap)
    message = str(err.value)
    assert "\n" not in message
    assert f"'{d / 'test_images.npy'}' is truncated or corrupt" in message
    assert "`dvc repro preprocess`" in message


def test_corrupt_split_table_is_a_data_error(tmp_path: Path) -> None:
    from crackxai.data.processed import load_split

    d = _processed(tmp_path)
    (d / "test.csv").write_text("")
    with pytest.raises(DataError, match=r"test\.csv' is truncated or corrupt.*dvc repro preprocess"):
        load_split("test", d)


@pytest.mark.parametrize("damage", ["truncated", "not_a_zip"])
def test_corrupt_model_file_says_so_and_how_to_restore(tmp_path: Path, damage: str) -> None:
    from crackxai.models.io import load_model

    path = tmp_path / "model.keras"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:  # the layout of a .keras file
        z.writestr("config.json", json.dumps({"class_name": "Functional"}))
        z.writestr("model.weights.h5", os.urandom(4000))
    if damage == "truncated":
        _truncate(path, path.stat().st_size // 2)
    else:
        path.write_bytes(b"garbage" * 100)
    with pytest.raises(CrackxaiError) as err:
        load_model(path)
    message = str(err.value)
    assert "\n" not in message and "not found" not in message.lower()
    assert f"Model file '{path}' is corrupt or truncated" in message
    assert f"`dvc checkout {path}`" in message and "`dvc repro train`" in message


# ---------------------------------------------------------------------------------------------
# DVC itself, on a smoke run in a fresh clone
# ---------------------------------------------------------------------------------------------


def _outputs(proj: Path) -> dict[str, str]:
    """sha256 of every file under the DVC outputs' folders (the train resume state is no output)."""
    out = {}
    for top in ("data", "models", "reports"):
        for f in sorted((proj / top).rglob("*")):
            if f.is_file() and ".train_state" not in f.parts:
                out[f.relative_to(proj).as_posix()] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def _plots(proj: Path) -> dict:
    from tests.test_workflow import sh

    return json.loads(sh("dvc", "plots", "show", "--json", cwd=proj).stdout)["data"]


@pytest.mark.slow
def test_bad_value_fails_at_validate_and_every_output_survives(tmp_path: Path) -> None:
    from tests.test_workflow import make_project, sh, stages_run

    proj = make_project(tmp_path / "proj")
    first = sh("dvc", "exp", "run", "-S", "experiment=smoke", cwd=proj, timeout=1800)
    assert stages_run(first.stdout)[0] == "validate", first.stdout[-3000:]
    sh("git", "add", "-A", cwd=proj)
    sh("git", "commit", "-qm", "good run", cwd=proj)
    good = _outputs(proj)
    assert "models/mlflow_run.json" in good and "reports/train_history.csv" in good

    # 1. `dvc exp run -S train.epochs=0`: stops at validate, with the config layer's message.
    bad = sh("dvc", "exp", "run", "-S", "train.epochs=0", "train", cwd=proj, check=False)
    assert bad.returncode != 0
    assert stages_run(bad.stdout) == ["validate"], bad.stdout[-3000:]
    assert "crackxai.validate: error: Invalid value for 'train.epochs'" in bad.stderr + bad.stdout
    assert "Traceback" not in bad.stderr + bad.stdout
    assert _outputs(proj) == good

    # 2. `dvc repro` after editing params.yaml by hand: the same.
    sh("git", "checkout", "params.yaml", cwd=proj)
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["train"]["lr"] = -1
    (proj / "params.yaml").write_text(yaml.safe_dump(params))
    bad = sh("dvc", "repro", cwd=proj, check=False)
    assert bad.returncode != 0 and stages_run(bad.stdout) == ["validate"], bad.stdout[-3000:]
    assert "Invalid value for 'train.lr'" in bad.stderr + bad.stdout
    assert _outputs(proj) == good
    sh("git", "checkout", "params.yaml", cwd=proj)
    sh("dvc", "checkout", cwd=proj)
    assert json.loads(sh("dvc", "status", "--json", cwd=proj).stdout) == {}

    # 3. A run killed after DVC deleted train's outputs: everything comes back from the cache.
    proc = subprocess.Popen(["dvc", "repro", "--force", "--single-item", "train"], cwd=proj,
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while (proj / "reports" / "train_history.csv").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not (proj / "reports" / "train_history.csv").exists(), "DVC never started train"
    # SIGTERM, as a killed job gets: DVC ignores SIGINT while a stage runs (the stage's command
    # inherits that), so a group-wide SIGINT would let train finish and update dvc.lock.
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=120)
    sh("git", "checkout", "params.yaml", cwd=proj)
    sh("dvc", "checkout", cwd=proj)
    assert _outputs(proj) == good
    assert json.loads(sh("dvc", "status", "--json", cwd=proj).stdout) == {}

    # 4. `dvc plots show`: each curve once, coloured by series, named axes.
    plots = _plots(proj)
    history = [name for name in plots if "train_history" in name]
    assert not history, f"a stage-level copy of the training curves: {history}"
    for name, y_label in (("Training loss", "loss (cross-entropy)"),
                          ("Training accuracy", "accuracy")):
        (plot,) = plots[name]
        encoding = plot["content"]["encoding"]
        assert (encoding["x"]["title"], encoding["y"]["title"]) == ("epoch", y_label)
        assert encoding["color"]["field"] == "field"
        series = {row["field"] for row in plot["content"]["data"]["values"]}
        assert len(series) == 2, series
    confusion = plots["reports/plots/confusion.csv"][0]["content"]["spec"]["encoding"]
    assert (confusion["x"]["field"], confusion["y"]["field"]) == ("predicted", "actual")


def _env() -> dict[str, str]:
    from tests.test_workflow import tool_env

    return tool_env()
