"""The explain stage on a tiny untrained model and test split: image selection; the stage through
run_stage (what `python -m crackxai.explain` calls) with gradcam and LIME: outputs, metrics, the
HTML report, the nested MLflow run, determinism, stale files, bad inputs; and (slow) the real entry
point in a subprocess with all six methods."""

from __future__ import annotations

import importlib.util
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

from crackxai.config import EXPLAIN_METHODS
from crackxai.config.entry import run_stage
from crackxai.core.errors import ConfigError
from crackxai.core.io import staged_outputs
from crackxai.data.processed import write_classes, write_split
from crackxai.stages import explain
from crackxai.xai import scorecard, selection

REPO = Path(__file__).resolve().parents[1]
SIZE = 32
CLASSES = ["Negative", "Positive"]
N_TEST = 8
METRIC_KEYS = {m.name for m in scorecard.METRICS}
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
    picks = selection.select_images(labels, CountingPredict(predicted), 8, 3, seed=0, chunk=100)
    assert len(picks) == len(set(picks)) == 8
    assert (predicted[picks] != labels[picks]).sum() == 3  # errors up to max_misclassified
    assert set(labels[picks]) == {0, 1} and abs((labels[picks] == 0).sum() - 4) <= 1
    assert np.array_equal(picks, selection.select_images(labels, CountingPredict(predicted), 8, 3,
                                                       seed=0, chunk=100))
    assert not np.array_equal(picks, selection.select_images(labels, CountingPredict(predicted), 8,
                                                           3, seed=1, chunk=100))


def test_select_images_stops_predicting_early_and_handles_small_splits():
    labels = np.arange(1000) % 2
    predicted = labels.copy()
    predicted[::10] = 1 - predicted[::10]  # 10% wrong
    predict = CountingPredict(predicted)
    picks = selection.select_images(labels, predict, 4, 2, seed=0, chunk=64)
    assert predict.asked == 64 and len(picks) == 4  # one chunk was enough
    tiny = np.array([0, 1, 1])
    assert sorted(selection.select_images(tiny, CountingPredict(tiny), 10, 3, seed=0)) == [0, 1, 2]


def test_explicit_images_out_of_range_is_a_config_error():
    assert selection.explicit_images([3, 1, 3], 5).tolist() == [3, 1]
    with pytest.raises(ConfigError, match=r"explain.images.*\[7, -1\].*0\.\.4"):
        selection.explicit_images([0, 7, -1], 5)


def test_staged_outputs_swap_in_whole_and_only_on_success(tmp_path: Path):
    dest = tmp_path / "reports" / "explain"
    (dest / "maps" / "scorecam").mkdir(parents=True)
    (dest / "maps" / "scorecam" / "000_1.npy").write_text("old")
    (dest / "metrics.json").write_text("old")
    (dest / ".gitignore").write_text("/maps\n")
    with pytest.raises(RuntimeError), staged_outputs(dest) as out:
        (out / "metrics.json").write_text("half")
        raise RuntimeError("killed")
    assert (dest / "metrics.json").read_text() == "old"  # a failed run changes nothing
    with staged_outputs(dest) as out:
        (out / "maps" / "gradcam").mkdir(parents=True)
        (out / "metrics.json").write_text("new")
    assert sorted(p.name for p in (dest / "maps").iterdir()) == ["gradcam"]
    assert (dest / "metrics.json").read_text() == "new"
    assert (dest / ".gitignore").exists()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["explain"]  # staging removed


# ---------------------------------------------------------------------------------------------
# The stage on a tiny untrained model and test split
# ---------------------------------------------------------------------------------------------

FAST = ["gradcam", "lime"]  # the default-suite runs; SHAP's numba JIT alone costs ~15-40 s


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
    write_classes(d, CLASSES, SIZE)
    records = pd.DataFrame({"path": [f"{CLASSES[k]}/{i:05d}.jpg" for i, k in enumerate(labels)],
                            "label": labels, "class": [CLASSES[k] for k in labels],
                            "sha256": [f"{i:064x}" for i in range(N_TEST)], "has_mask": labels == 1})
    write_split(d, "test", images, labels, records, masks)


ENV_LEAKS = ("DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "MLFLOW_TRACKING_URI",
             "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME")


def copy_project(template: Path, dest: Path) -> tuple[Path, str]:
    """A project from the template (model linked, data copied) with its own MLflow store holding
    the model's run, as the train stage leaves it; returns (project, model run id)."""
    import mlflow

    from crackxai.config import load_config
    from crackxai.tracking.runs import start_model_run, write_run_file

    shutil.copytree(template, dest, ignore=shutil.ignore_patterns("model.keras", "mlflow.db*"))
    (dest / "models" / "model.keras").symlink_to(template / "models" / "model.keras")
    with pytest.MonkeyPatch.context() as mp:
        for var in ENV_LEAKS:
            mp.delenv(var, raising=False)
        mp.chdir(dest)
        run = start_model_run(load_config(["experiment=smoke"]), dest)
        write_run_file(run, "models/mlflow_run.json")
        mlflow.end_run()
    return dest, run.info.run_id


def run_in_process(project: Path, *overrides: str) -> None:
    """The stage as `python -m crackxai.explain` runs it (run_stage), without a new TensorFlow
    start: SystemExit on a CrackxaiError, None on success."""
    with pytest.MonkeyPatch.context() as mp:
        for var in ENV_LEAKS:
            mp.delenv(var, raising=False)
        mp.chdir(project)
        run_stage("explain", explain.main, ["experiment=smoke", *overrides])


def load_maps(project: Path) -> dict[Path, np.ndarray]:
    root = project / "reports" / "explain" / "maps"
    return {p.relative_to(root): np.load(p) for p in sorted(root.rglob("*.npy"))}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with a tiny untrained 32x32 model and a processed test split."""
    import keras

    from crackxai.models.resnet import build_model

    project = tmp_path_factory.mktemp("template")
    shutil.copytree(REPO / "conf", project / "conf")
    shutil.copy(REPO / "params.yaml", project / "params.yaml")
    write_processed(project / "data" / "processed")
    keras.utils.set_random_seed(0)
    (project / "models").mkdir()
    build_model(2, SIZE, weights=None).save(project / "models" / "model.keras")
    return project


@pytest.fixture(scope="module")
def stage(template: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The stage run once (gradcam and LIME, sanity check on) on a negative without a mask and a
    positive with one."""
    project, run_id = copy_project(template, tmp_path_factory.mktemp("stage") / "p")
    run_in_process(project, "explain.images=[0,1]", f"explain.methods=[{','.join(FAST)}]")
    return {"project": project, "run_id": run_id, "maps": load_maps(project)}


def check_outputs(project: Path, methods: list[str]) -> dict:
    """The files the stage promises, for `methods`; returns metrics.json."""
    out = project / "reports" / "explain"
    assert {p.name for p in out.iterdir()} - {".gitignore"} == {
        "maps", "overlays", "grid.png", "index.html", "per_image.csv", "metrics.json",
        "scorecard.json", "scorecard.csv", "scorecard.md", "scorecard.png", "cascading.csv",
        "cascading.png"}
    assert sorted(p.name for p in (out / "maps").iterdir()) == sorted(methods)
    for method in methods:
        assert sorted(p.name for p in (out / "maps" / method).iterdir()) == ["000_0.npy",
                                                                            "001_1.npy"]
        assert sorted(p.name for p in (out / "overlays" / method).iterdir()) == ["000_0.png",
                                                                                "001_1.png"]
        m = np.load(out / "maps" / method / "001_1.npy")
        assert m.shape == (SIZE, SIZE) and m.dtype == np.float32 and np.isfinite(m).all()
    from PIL import Image

    grid = Image.open(out / "grid.png")
    assert grid.format == "PNG" and grid.width / grid.height > (len(methods) + 1) / 3

    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {*methods, "random_baseline", "images"}
    assert metrics["images"] == {"n": 2, "misclassified": metrics["images"]["misclassified"],
                                 "with_mask": 1}
    for method in methods:
        values = metrics[method]
        assert set(values) == METRIC_KEYS
        assert 0 <= values["deletion_auc"] <= 1 and 0 <= values["insertion_auc"] <= 1
        assert values["evals_per_image"] >= 1 and values["seconds_per_image"] > 0
        for key in LOCALISATION:  # one image has a mask: a number, never null
            assert 0 <= values[key] <= 1
    assert set(metrics["random_baseline"]) == {
        m.name for m in scorecard.METRICS if m.group in ("localisation", "faithfulness")}

    per_image = pd.read_csv(out / "per_image.csv")
    assert len(per_image) == 2 * (len(methods) + 1)
    assert {"row", "index", "method", "true_class", "predicted_class", "probability", "target",
            "has_mask", "deletion_auc", "sanity_spearman", "seconds", "model_evals"} <= set(
        per_image.columns)
    negative = per_image[per_image["index"] == 0]
    positive = per_image[per_image["index"] == 1]
    assert negative[list(LOCALISATION)].isna().all().all()  # no mask: NaN, never 0
    assert positive[list(LOCALISATION)].notna().all().all()
    first = per_image[per_image["method"] == methods[0]]
    assert first["deletion_auc"].mean() == pytest.approx(metrics[methods[0]]["deletion_auc"])
    return metrics


def check_mlflow(project: Path, run_id: str, methods: list[str]) -> None:
    """One nested run under the model's run, with the explain params, metrics and artifacts."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    parent = client.get_run(run_id)
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{run_id}'")
    assert len(children) == 1
    child = children[0]
    assert child.info.run_name == "explain" and child.info.status == "FINISHED"
    assert json.loads(child.data.params["explain.methods"]) == methods
    assert child.data.params["explain.metrics.baseline"] == "blur"
    assert not any(k.startswith("train.") for k in child.data.params)
    metrics = json.loads((project / "reports/explain/metrics.json").read_text())
    for method in [*methods, "random_baseline"]:
        for key, value in metrics[method].items():
            name = f"explain/{method}/{key}"
            if value is None:
                assert name not in child.data.metrics  # NaN metrics are not logged
            else:
                assert child.data.metrics[name] == pytest.approx(value)
    artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
    assert {"grid.png", "index.html", "metrics.json", "per_image.csv", "overlays"} <= artifacts
    overlays = {a.path for a in client.list_artifacts(child.info.run_id, "overlays")}
    assert overlays == {f"overlays/{m}" for m in methods}


def test_stage_outputs_and_metrics(stage):
    metrics = check_outputs(stage["project"], FAST)
    assert metrics["gradcam"]["evals_per_image"] == 1  # forward+backward counted as 1
    assert metrics["lime"]["evals_per_image"] == 40  # explain.lime.num_samples in the smoke preset
    page = (stage["project"] / "reports" / "explain" / "index.html").read_text()
    # at 32 px conv5_block3_out is 1x1 (constant CAMs): the stage picks conv2_block3_out (8x8),
    # the last feature map of at least explain.cam_min_size (7) pixels a side
    assert "CAM layer: <code>conv2_block3_out</code>" in page


def test_index_html_is_self_contained(stage):
    page = (stage["project"] / "reports" / "explain" / "index.html").read_text()
    assert "458 photos" not in page  # synthetic data: no Kaggle caveat
    assert stage["run_id"] in page
    assert "max_misclassified" in page  # the explain configuration
    sources = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<script" not in page and "<link" not in page
    for method in [*FAST, "random_baseline"]:
        assert f"<th>{method}</th>" in page


def test_scorecard_every_metric_with_intervals(stage):
    """Every scorecard metric per method with an interval, in scorecard.json, the HTML page and
    MLflow: threshold-free localisation on the masked image only, the reruns and the cascade on
    explain.metrics.reruns.images (2) images."""
    import mlflow

    out = stage["project"] / "reports" / "explain"
    card = json.loads((out / "scorecard.json").read_text())
    assert [r["method"] for r in card["methods"]] and card["confidence"] == 0.95
    for row in card["methods"]:
        m = row["metrics"]
        assert row["verdict"] and row["rank"] is not None
        for key in ("roc_auc", "relevance_rank_accuracy", "relevance_mass_accuracy"):
            assert m[key]["n"] == 1 and 0 <= m[key]["mean"] <= 1  # one masked image
        for key in ("sparseness", "complexity", "deletion_auc", "seconds_per_image"):
            assert m[key]["n"] == 2 and m[key]["low"] <= m[key]["mean"] <= m[key]["high"]
        for key in ("random_logit_ssim", "max_sensitivity", "seed_stability",
                    "cascading_abs_rho"):
            assert m[key]["n"] >= 1, (row["method"], key)  # NaN only for a constant map
    assert card["methods"][0]["metrics"]["seed_stability"]["mean"] is not None
    gradcam = next(r for r in card["methods"] if r["method"] == "gradcam")["metrics"]
    assert gradcam["seed_stability"]["mean"] == pytest.approx(1.0)  # deterministic
    curve = pd.read_csv(out / "cascading.csv")
    assert list(dict.fromkeys(curve["block"])) == ["head", "conv5", "conv4", "conv3", "conv2",
                                                   "conv1"]
    assert set(curve["method"]) == set(FAST)
    page = (out / "index.html").read_text()
    assert "Scorecard" in page and "scorecard chart" in page and "Cascading" in page
    assert "overflow-x: auto" in page
    client = mlflow.MlflowClient(f"sqlite:///{stage['project'] / 'mlflow.db'}")
    child = client.search_runs([client.get_run(stage["run_id"]).info.experiment_id],
                               f"tags.mlflow.parentRunId = '{stage['run_id']}'")[0]
    assert "explain/lime/rank" in child.data.metrics
    assert "explain/gradcam/deletion_auc_low" in child.data.metrics
    artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
    assert {"scorecard.json", "scorecard.md", "scorecard.png", "cascading.png"} <= artifacts


def test_nested_mlflow_run(stage):
    import mlflow

    check_mlflow(stage["project"], stage["run_id"], FAST)
    client = mlflow.MlflowClient(f"sqlite:///{stage['project'] / 'mlflow.db'}")
    child = client.search_runs([client.get_run(stage["run_id"]).info.experiment_id],
                               f"tags.mlflow.parentRunId = '{stage['run_id']}'")[0]
    assert child.data.tags["crackxai.explain.cam_layer"] == "conv2_block3_out"
    assert child.data.params["explain.layer"] == "None"  # as configured: chosen automatically


def test_unknown_cam_layer_exits_2_naming_the_key(template: Path, tmp_path: Path, capsys):
    project, _ = copy_project(template, tmp_path / "p")
    with pytest.raises(SystemExit) as exc:
        run_in_process(project, "explain.layer=conv9_block1_out", "explain.methods=[gradcam]")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "CAM layer 'conv9_block1_out'" in err and "explain.layer" in err
    assert "conv5_block3_out" in err and "Traceback" not in err
    assert not (project / "reports" / "explain").exists()


def test_rerun_same_maps_no_stale_files_and_no_masks(stage, tmp_path: Path):
    """Same settings -> the same maps, whatever else runs. A rerun with fewer methods leaves no
    file of the others (but keeps files it does not write), and data without masks gives null
    localisation (not 0)."""
    project, _ = copy_project(stage["project"], tmp_path / "p")
    (project / "data" / "processed" / "test_masks.npy").unlink()
    (project / "reports" / "explain" / ".gitignore").write_text("/maps\n")  # as DVC leaves it
    run_in_process(project, "explain.images=[0,1]", "explain.methods=[lime]",
                   "explain.metrics.sanity=false")
    out = project / "reports" / "explain"
    maps = load_maps(project)
    assert sorted(maps) == sorted(p for p in stage["maps"] if p.parts[0] == "lime")
    assert all(np.array_equal(maps[p], stage["maps"][p]) for p in maps)
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["lime"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"lime", "random_baseline", "images"}
    for method in ("lime", "random_baseline"):
        assert all(metrics[method][k] is None for k in LOCALISATION)
    assert not list(out.parent.glob(".explain*"))  # no staging folder left behind
    assert (out / ".gitignore").read_text() == "/maps\n"


def test_ray_runner_gives_the_local_maps(stage, tmp_path: Path):
    """explain.runner=ray on a private local Ray cluster (2 actors): the same maps in the same
    files, the same quality metrics (the sanity check's randomised model goes by file too)."""
    if importlib.util.find_spec("ray") is None:  # not imported here: see tests/test_runners.py
        pytest.skip("the optional `ray` group is not installed")
    project, _ = copy_project(stage["project"], tmp_path / "p")
    run_in_process(project, "explain.images=[0,1]", f"explain.methods=[{','.join(FAST)}]",
                   "explain.runner=ray", "explain.ray.num_actors=2")
    maps = load_maps(project)
    assert sorted(maps) == sorted(stage["maps"])
    for path, local in stage["maps"].items():
        np.testing.assert_allclose(maps[path], local, atol=1e-6, err_msg=str(path))
    ours = json.loads((project / "reports" / "explain" / "metrics.json").read_text())
    theirs = json.loads((stage["project"] / "reports" / "explain" / "metrics.json").read_text())
    for method in FAST:
        for key in ("deletion_auc", "insertion_auc", "pointing_game", "sanity_abs_spearman",
                    "evals_per_image"):
            expected = theirs[method][key]
            assert ours[method][key] == (expected if expected is None else
                                         pytest.approx(expected, abs=1e-6)), key


@pytest.mark.slow
def test_entry_point_all_six_methods(template: Path, tmp_path: Path):
    """`python -m crackxai.explain experiment=smoke` with every method (~1-4 min on 2 cores)."""
    project, run_id = copy_project(template, tmp_path / "p")
    res = subprocess.run([sys.executable, "-m", "crackxai.explain", "experiment=smoke",
                          "explain.images=[0,1]"], cwd=project, capture_output=True, text=True,
                         timeout=900, env={k: v for k, v in os.environ.items()
                                           if k not in ENV_LEAKS})
    assert res.returncode == 0, res.stdout + res.stderr
    for method in EXPLAIN_METHODS:
        assert f"[crackxai.explain] {method}: explaining 2 images" in res.stdout
    metrics = check_outputs(project, list(EXPLAIN_METHODS))
    assert metrics["shap"]["evals_per_image"] > 10  # perturbations through the Predictor
    assert metrics["scorecam"]["evals_per_image"] == 16  # explain.scorecam.max_N masked copies
    check_mlflow(project, run_id, list(EXPLAIN_METHODS))
    page = (project / "reports" / "explain" / "index.html").read_text()
    assert all(f"<th>{m}</th>" in page for m in EXPLAIN_METHODS)


def test_unknown_method_exits_2_with_a_clear_message(project: Path, capsys):
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


def test_out_of_range_image_exits_2(project: Path, capsys):
    write_processed(project / "data" / "processed")
    with pytest.raises(SystemExit) as exc:
        run_stage("explain", explain.main, ["experiment=smoke", f"explain.images=[1,{N_TEST}]"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "explain.images" in err and f"0..{N_TEST - 1}" in err
    assert not (project / "reports").exists()
