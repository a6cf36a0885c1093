"""The explain stage: image selection, then the real entry point on a tiny model and dataset
(every method, metrics, report, MLflow nested run, determinism, bad inputs)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crackxai import explain
from crackxai.cli import run_stage
from crackxai.config import EXPLAIN_METHODS
from crackxai.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SIZE = 32
CLASSES = ["Negative", "Positive"]
N_TEST = 8
METRIC_KEYS = set(explain.METRICS)
LOCALISATION = ("pointing_game", "energy_pointing_game", "topk_iou")


# ---------------------------------------------------------------------------------------------
# Image selection (pure)
# ---------------------------------------------------------------------------------------------


class CountingPredict:
    """Predicted labels from a fixed table, counting how many images were asked for."""

    def __init__(self, predicted: np.ndarray):
        self.predicted, self.asked = predicted, 0

    def __call__(self, idx: np.ndarray) -> np.ndarray:
        self.asked += len(idx)
        return self.predicted[idx]


def test_select_images_includes_misclassified_and_both_classes():
    labels = np.array([0] * 50 + [1] * 50)
    predicted = labels.copy()
    predicted[[3, 60, 70, 80]] = 1 - labels[[3, 60, 70, 80]]  # 4 errors
    picks = explain.select_images(labels, CountingPredict(predicted), 8, 3, seed=0, chunk=100)
    assert len(picks) == len(set(picks)) == 8
    assert (predicted[picks] != labels[picks]).sum() == 3  # errors up to max_misclassified
    assert set(labels[picks]) == {0, 1} and abs((labels[picks] == 0).sum() - 4) <= 1
    assert np.array_equal(picks, explain.select_images(labels, CountingPredict(predicted), 8, 3,
                                                       seed=0, chunk=100))
    assert not np.array_equal(picks, explain.select_images(labels, CountingPredict(predicted), 8,
                                                           3, seed=1, chunk=100))


def test_select_images_stops_predicting_early_and_handles_small_splits():
    labels = np.arange(1000) % 2
    predicted = labels.copy()
    predicted[::10] = 1 - predicted[::10]  # 10% wrong
    predict = CountingPredict(predicted)
    picks = explain.select_images(labels, predict, 4, 2, seed=0, chunk=64)
    assert predict.asked == 64 and len(picks) == 4  # one chunk was enough
    tiny = np.array([0, 1, 1])
    assert sorted(explain.select_images(tiny, CountingPredict(tiny), 10, 3, seed=0)) == [0, 1, 2]


def test_explicit_images_out_of_range_is_a_config_error():
    assert explain.explicit_images([3, 1, 3], 5).tolist() == [3, 1]
    with pytest.raises(ConfigError, match=r"explain.images.*\[7, -1\].*0\.\.4"):
        explain.explicit_images([0, 7, -1], 5)


# ---------------------------------------------------------------------------------------------
# The stage, through its real entry point
# ---------------------------------------------------------------------------------------------


def write_processed(d: Path) -> None:
    """A tiny test split: even rows Negative, odd rows Positive with a dark crack and its mask."""
    rng = np.random.default_rng(0)
    d.mkdir(parents=True)
    labels = (np.arange(N_TEST) % 2).astype(np.int64)
    images = rng.integers(110, 190, (N_TEST, SIZE, SIZE, 3), dtype=np.uint8)
    masks = np.zeros((N_TEST, SIZE, SIZE), dtype=np.uint8)
    for i in np.flatnonzero(labels):
        rows = np.clip(np.round(8 + i + np.arange(SIZE) * 0.4).astype(int), 0, SIZE - 1)
        masks[i, rows, np.arange(SIZE)] = 1
        images[i][masks[i] == 1] = 30
    (d / "classes.json").write_text(json.dumps({"classes": CLASSES, "image_size": SIZE}))
    np.save(d / "test_images.npy", images)
    np.save(d / "test_labels.npy", labels)
    np.save(d / "test_masks.npy", masks)
    pd.DataFrame({"index": range(N_TEST), "path": [f"{CLASSES[k]}/{i:05d}.jpg" for i, k in
                                                   enumerate(labels)],
                  "label": labels, "class": [CLASSES[k] for k in labels],
                  "sha256": [f"{i:064x}" for i in range(N_TEST)], "has_mask": labels == 1}
                 ).to_csv(d / "test.csv", index=False)


def clean_env() -> dict[str, str]:
    drop = ("DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "MLFLOW_TRACKING_URI",
            "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME")
    return {k: v for k, v in os.environ.items() if k not in drop}


def run_explain(project: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crackxai.explain", "experiment=smoke",
                           *overrides], cwd=project, capture_output=True, text=True,
                          timeout=900, env=clean_env())


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One project with a tiny untrained 32x32 model, its MLflow run and a processed test split;
    the stage run once on a negative (no mask) and a positive (with mask)."""
    import keras
    import mlflow

    from crackxai.config import load_config
    from crackxai.model import build_model
    from crackxai.tracking import start_model_run, write_run_file

    project = tmp_path_factory.mktemp("explain_project")
    shutil.copytree(REPO / "conf", project / "conf")
    shutil.copy(REPO / "params.yaml", project / "params.yaml")
    write_processed(project / "data" / "processed")
    keras.utils.set_random_seed(0)
    (project / "models").mkdir()
    build_model(2, SIZE, weights=None).save(project / "models" / "model.keras")
    with pytest.MonkeyPatch.context() as mp:
        for var in ("DVC_ROOT", "MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID"):
            mp.delenv(var, raising=False)
        mp.chdir(project)
        run = start_model_run(load_config(["experiment=smoke"]))
        write_run_file(run)
        mlflow.end_run()
    res = run_explain(project, "explain.images=[0,1]")
    assert res.returncode == 0, res.stdout + res.stderr
    maps = {p.relative_to(project / "reports/explain/maps"): np.load(p)
            for p in sorted((project / "reports/explain/maps").rglob("*.npy"))}
    return {"project": project, "run_id": run.info.run_id, "out": res.stdout + res.stderr,
            "maps": maps}


def test_stage_outputs(stage):
    out = stage["project"] / "reports" / "explain"
    assert {p.name for p in out.iterdir()} == {"maps", "overlays", "grid.png", "index.html",
                                               "per_image.csv", "metrics.json"}
    for method in EXPLAIN_METHODS:
        assert sorted(p.name for p in (out / "maps" / method).iterdir()) == ["000_0.npy",
                                                                            "001_1.npy"]
        assert sorted(p.name for p in (out / "overlays" / method).iterdir()) == ["000_0.png",
                                                                                "001_1.png"]
        m = np.load(out / "maps" / method / "001_1.npy")
        assert m.shape == (SIZE, SIZE) and m.dtype == np.float32 and np.isfinite(m).all()
    for method in EXPLAIN_METHODS:
        assert f"[crackxai.explain] {method}: explaining 2 images" in stage["out"]
    from PIL import Image

    grid = Image.open(out / "grid.png")
    assert grid.width / grid.height > 2.5  # 7 columns (image + six methods), 2 rows


def test_metrics_json_and_per_image_csv(stage):
    out = stage["project"] / "reports" / "explain"
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {*EXPLAIN_METHODS, "random_baseline", "images"}
    assert metrics["images"] == {"n": 2, "misclassified": metrics["images"]["misclassified"],
                                 "with_mask": 1}
    for method in EXPLAIN_METHODS:
        values = metrics[method]
        assert set(values) == METRIC_KEYS
        assert 0 <= values["deletion_auc"] <= 1 and 0 <= values["insertion_auc"] <= 1
        assert values["evals_per_image"] >= 1 and values["seconds_per_image"] > 0
        for key in LOCALISATION:  # one image has a mask: a number, never null
            assert 0 <= values[key] <= 1
    assert metrics["gradcam"]["evals_per_image"] == 1  # forward+backward counted as 1
    assert metrics["shap"]["evals_per_image"] > 10  # perturbations through the Predictor
    assert set(metrics["random_baseline"]) == {"deletion_auc", "insertion_auc", *LOCALISATION}

    per_image = pd.read_csv(out / "per_image.csv")
    assert len(per_image) == 2 * (len(EXPLAIN_METHODS) + 1)
    assert {"row", "index", "method", "true_class", "predicted_class", "probability", "target",
            "has_mask", "deletion_auc", "sanity_spearman", "seconds", "model_evals"} <= set(
        per_image.columns)
    negative = per_image[per_image["index"] == 0]
    positive = per_image[per_image["index"] == 1]
    assert negative[list(LOCALISATION)].isna().all().all()  # no mask: NaN, never 0
    assert positive[list(LOCALISATION)].notna().all().all()
    gradcam = per_image[per_image["method"] == "gradcam"]
    assert gradcam["deletion_auc"].mean() == pytest.approx(metrics["gradcam"]["deletion_auc"])


def test_index_html_is_self_contained(stage):
    page = (stage["project"] / "reports" / "explain" / "index.html").read_text()
    assert "458 photos" in page and stage["run_id"] in page
    assert "max_misclassified" in page  # the explain configuration
    sources = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<script" not in page and "<link" not in page
    for method in EXPLAIN_METHODS:
        assert f"<th>{method}</th>" in page


def test_nested_mlflow_run(stage):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{stage['project'] / 'mlflow.db'}")
    parent = client.get_run(stage["run_id"])
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{stage['run_id']}'")
    assert len(children) == 1
    child = children[0]
    assert child.info.run_name == "explain" and child.info.status == "FINISHED"
    assert json.loads(child.data.params["explain.methods"]) == list(EXPLAIN_METHODS)
    assert child.data.params["explain.metrics.baseline"] == "blur"
    assert not any(k.startswith("train.") for k in child.data.params)
    metrics = json.loads((stage["project"] / "reports/explain/metrics.json").read_text())
    for method in EXPLAIN_METHODS:
        for key, value in metrics[method].items():
            name = f"explain/{method}/{key}"
            if value is None:
                assert name not in child.data.metrics  # NaN metrics are not logged
            else:
                assert child.data.metrics[name] == pytest.approx(value)
    artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
    assert {"grid.png", "index.html", "metrics.json", "per_image.csv", "overlays"} <= artifacts
    overlays = {a.path for a in client.list_artifacts(child.info.run_id, "overlays")}
    assert "overlays/gradcam" in overlays


def test_rerun_same_maps_no_stale_files_and_no_masks(stage, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch):
    """Same settings -> the same maps, whatever else runs. A rerun with fewer methods leaves no
    file of the others, and data without masks gives null localisation (not 0). In-process
    (run_stage is what `python -m crackxai.explain` runs) to save a second TensorFlow start."""
    project = tmp_path / "copy"
    shutil.copytree(stage["project"], project, ignore=shutil.ignore_patterns("model.keras"))
    (project / "models" / "model.keras").symlink_to(stage["project"] / "models" / "model.keras")
    (project / "data" / "processed" / "test_masks.npy").unlink()
    monkeypatch.chdir(project)
    for var in ("DVC_ROOT", "MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    run_stage("explain", explain.main, ["experiment=smoke", "explain.images=[0,1]",
                                        "explain.methods=[gradcam,lime,shap]"])
    out = project / "reports" / "explain"
    assert sorted(p.name for p in (out / "maps").iterdir()) == ["gradcam", "lime", "shap"]
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["gradcam", "lime", "shap"]
    for rel, before in stage["maps"].items():
        if rel.parts[0] in ("gradcam", "lime", "shap"):
            assert np.array_equal(np.load(out / "maps" / rel), before), rel
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"gradcam", "lime", "shap", "random_baseline", "images"}
    for method in ("gradcam", "lime", "shap", "random_baseline"):
        assert all(metrics[method][k] is None for k in LOCALISATION)
    assert not list(out.parent.glob(".explain*"))  # no staging folder left behind


def test_unknown_method_exits_2_with_a_clear_message(project: Path, capsys):
    # run_stage is what `python -m crackxai.explain` calls; in-process saves a TensorFlow start
    with pytest.raises(SystemExit) as exc:
        run_stage("explain", explain.main, ["experiment=smoke", "explain.methods=[gradcam,deeplift]"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "explain.methods" in err and "deeplift" in err and "gradcam_pp" in err
    assert "Traceback" not in err


def test_missing_model_exits_2_with_a_clear_message(project: Path, capsys):
    write_processed(project / "data" / "processed")
    with pytest.raises(SystemExit) as exc:
        run_stage("explain", explain.main, ["experiment=smoke"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "models/model.keras" in err and "train" in err and "Traceback" not in err
    assert not (project / "reports").exists()


def test_out_of_range_image_exits_2(stage, monkeypatch: pytest.MonkeyPatch, capsys):
    monkeypatch.chdir(stage["project"])
    for var in ("DVC_ROOT", "MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(SystemExit) as exc:
        run_stage("explain", explain.main, ["experiment=smoke", f"explain.images=[1,{N_TEST}]"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "explain.images" in err and f"0..{N_TEST - 1}" in err
