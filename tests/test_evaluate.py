"""The evaluate stage (real entry point, real model, real MLflow store) and the folder evaluator."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from crackxai.config.entry import run_stage
from crackxai.core.errors import ConfigError, CrackxaiError
from crackxai.data.processed import write_classes, write_split
from crackxai.evaluation.plots import write_plots
from crackxai.evaluation.scores import Scores, compute_metrics, flatten_metrics, positive_index
from crackxai.stages import evaluate
from crackxai.tools.evaluate_folder import evaluate_folder
from crackxai.tools.evaluate_folder import main as folder_main

SIZE = 32
CLASSES = ["Negative", "Positive"]
PNGS = {"roc.png", "pr.png", "calibration.png", "confusion_matrix.png"}


def _images(rng: np.random.Generator, labels: np.ndarray, size: int) -> np.ndarray:
    images = rng.integers(90, 200, (len(labels), size, size, 3), dtype=np.uint8)
    images[labels == 1, size // 2 - 1: size // 2 + 1] = 20  # a dark "crack" across
    return images


def write_processed(d: Path, sizes: dict[str, int]) -> None:
    """A tiny dataset in the crackxai.data.processed format."""
    rng = np.random.default_rng(0)
    d.mkdir(parents=True)
    write_classes(d, CLASSES, SIZE)
    for split, n in sizes.items():
        labels = (np.arange(n) % 2).astype(np.int64)
        records = pd.DataFrame({"path": [f"{CLASSES[k]}/{i:05d}.jpg" for i, k in enumerate(labels)],
                                "label": labels, "class": [CLASSES[k] for k in labels],
                                "sha256": [f"{i:064x}" for i in range(n)], "has_mask": False})
        write_split(d, split, _images(rng, labels, SIZE), labels, records)


def write_jpegs(d: Path, n_per_class: int = 4) -> None:
    """<d>/Negative, <d>/Positive with 40x40 JPEGs, one nested, plus two broken files."""
    rng = np.random.default_rng(1)
    for k, name in enumerate(CLASSES):
        for i, img in enumerate(_images(rng, np.full(n_per_class, k), 40)):
            sub = d / name / ("nested" if i == 0 else "")
            sub.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(sub / f"{i:05d}.jpg"), img[..., ::-1])
    (d / "Negative" / "corrupt.jpg").write_bytes(b"this is not a JPEG")
    good = (d / "Positive" / "00001.jpg").read_bytes()
    (d / "Positive" / "truncated.jpg").write_bytes(good[: len(good) // 2])


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Built once per module: a tiny untrained 32x32 model, a processed dataset, a JPEG folder."""
    import keras

    from crackxai.models.resnet import build_model

    root = tmp_path_factory.mktemp("assets")
    keras.utils.set_random_seed(0)
    model = build_model(2, SIZE, weights=None)
    model.save(root / "model.keras")
    write_processed(root / "processed", {"train": 8, "val": 12, "test": 16})
    write_jpegs(root / "folder")
    return {"model": root / "model.keras", "processed": root / "processed",
            "folder": root / "folder", "keras_model": model}


def install(project: Path, assets: dict) -> None:
    shutil.copytree(assets["processed"], project / "data" / "processed")
    (project / "models").mkdir()
    (project / "models" / "model.keras").symlink_to(assets["model"])


def _leaves(d: dict) -> list:
    return [x for v in d.values() for x in (_leaves(v) if isinstance(v, dict) else [v])]


# ---------------------------------------------------------------------------------------------
# The evaluate stage
# ---------------------------------------------------------------------------------------------


def test_stage_end_to_end(project: Path, assets: dict):
    import mlflow

    from crackxai.config import load_config
    from crackxai.tracking.runs import start_model_run, write_run_file

    install(project, assets)
    run = start_model_run(load_config(["experiment=smoke"]), project)
    write_run_file(run, "models/mlflow_run.json")
    mlflow.end_run()

    res = subprocess.run([sys.executable, "-m", "crackxai.evaluate", "experiment=smoke",
                          "evaluate.gallery_size=3"], cwd=project, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "test (16 images): accuracy" in res.stdout
    assert "458 photos" not in res.stdout  # synthetic data: the Kaggle caveat does not apply

    m = json.loads((project / "reports" / "metrics.json").read_text())
    assert set(m) == {"test", "test_best_f1", "val"}
    assert {"accuracy", "precision", "recall", "f1", "specificity", "roc_auc",
            "average_precision", "log_loss", "ece", "threshold", "tp", "fp", "tn", "fn",
            "n"} == set(m["test"])
    assert m["test"]["threshold"] == 0.5 and m["test"]["n"] == 16
    assert m["test"]["tp"] + m["test"]["fp"] + m["test"]["tn"] + m["test"]["fn"] == 16
    assert set(m["val"]) == {"n", "best_f1_threshold", "best_f1"} and m["val"]["n"] == 12
    assert m["test_best_f1"]["threshold"] == m["val"]["best_f1_threshold"]
    assert all(isinstance(v, int | float) for v in _leaves(m))

    plots = project / "reports" / "plots"
    columns = {"roc": ["fpr", "tpr"], "pr": ["recall", "precision"],
               "calibration": ["mean_predicted", "fraction_positive", "count"],
               "confusion": ["actual", "predicted"]}
    for name, cols in columns.items():
        assert list(pd.read_csv(plots / f"{name}.csv").columns) == cols
    confusion = pd.read_csv(plots / "confusion.csv")
    assert len(confusion) == 16 and set(confusion["actual"]) == set(CLASSES)
    assert {p.name for p in (plots / "images").iterdir()} == PNGS | {"false_positives.png",
                                                                    "false_negatives.png"}

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    logged = client.get_run(run.info.run_id).data.metrics
    assert logged["test/accuracy"] == pytest.approx(m["test"]["accuracy"])
    assert logged["test_best_f1/f1"] == pytest.approx(m["test_best_f1"]["f1"])
    assert logged["val/best_f1_threshold"] == pytest.approx(m["val"]["best_f1_threshold"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluate")}
    assert {"evaluate/metrics.json", "evaluate/roc.csv", "evaluate/images"} <= artifacts
    images = {a.path for a in client.list_artifacts(run.info.run_id, "evaluate/images")}
    assert "evaluate/images/confusion_matrix.png" in images


def test_stage_without_run_file_fails_clearly(project: Path, assets: dict, capsys):
    install(project, assets)
    with pytest.raises(SystemExit) as exc:
        run_stage("evaluate", evaluate.main, ["experiment=smoke"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "models/mlflow_run.json" in err and "train" in err and "Traceback" not in err
    assert not (project / "reports" / "metrics.json").exists()


def test_unknown_positive_class_is_a_config_error():
    with pytest.raises(ConfigError, match="evaluate.positive_class"):
        positive_index(CLASSES, "Crack")
    assert positive_index(CLASSES) == 1
    assert positive_index(["Positive", "negative"]) == 0
    assert positive_index(["cracked", "intact"], "cracked") == 0


def test_report_writer_without_errors_and_multiclass(tmp_path: Path):
    """The shared writer: zero errors gives "No false ..." PNGs; three classes give macro metrics,
    micro-averaged curves and one misclassified gallery."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, SIZE, SIZE, 3), dtype=np.uint8)
    names = [f"img{i}" for i in range(6)]
    labels = np.array([0, 1, 0, 1, 0, 1])
    p1 = np.array([0.1, 0.9, 0.2, 0.8, 0.3, 0.7])
    s = Scores(labels, np.stack([1 - p1, p1], axis=1), CLASSES, 1, 0.5)
    m = compute_metrics(s, "folder", best_threshold=0.75)
    assert m["folder"]["accuracy"] == 1.0 and m["folder_best_f1"]["recall"] == pytest.approx(2 / 3)
    pngs = write_plots(s, tmp_path / "bin", lambda i: images[i], names, 4, "unit")
    assert {p.name for p in pngs} == PNGS | {"false_positives.png", "false_negatives.png"}
    assert all(p.stat().st_size > 1000 for p in pngs)

    labels3 = np.array([0, 1, 2, 0, 1, 2])
    probs3 = np.full((6, 3), 0.1) + 0.7 * np.eye(3)[[0, 1, 2, 1, 1, 0]]
    s3 = Scores(labels3, probs3, ["a", "b", "c"], 0, 0.5)
    m3 = compute_metrics(s3, "test", best_threshold=0.3)
    assert set(m3) == {"test"} and m3["test"]["accuracy"] == pytest.approx(4 / 6)
    assert flatten_metrics(m3)["test/confusion/c/a"] == 1
    pngs = write_plots(s3, tmp_path / "multi", lambda i: images[i], names, 4, "unit")
    assert {p.name for p in pngs} == PNGS | {"misclassified.png"}
    roc = pd.read_csv(tmp_path / "multi" / "roc.csv")
    assert list(roc.columns) == ["fpr", "tpr"] and roc["tpr"].iloc[-1] == 1.0


# ---------------------------------------------------------------------------------------------
# The folder evaluator
# ---------------------------------------------------------------------------------------------


def test_evaluate_folder_skips_broken_files(tmp_path: Path, assets: dict, capsys,
                                            monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    folder_main(["--model", str(assets["model"]), "--data", str(assets["folder"]),
                 "--threshold", "0.4", "--gallery-size", "2"])
    out = tmp_path / "reports" / "folder_eval" / "folder"
    m = json.loads((out / "metrics.json").read_text())
    assert m["files"] == {"evaluated": 8, "skipped": 2}
    assert m["folder"]["n"] == 8 and m["folder"]["threshold"] == 0.4
    skipped = pd.read_csv(out / "skipped.csv")
    assert sorted(skipped["path"]) == ["Negative/corrupt.jpg", "Positive/truncated.jpg"]
    assert skipped["reason"].str.len().min() > 5
    pred = pd.read_csv(out / "predictions.csv")
    assert list(pred.columns) == ["path", "actual", "predicted", "p_Negative", "p_Positive"]
    assert "Positive/nested/00000.jpg" in set(pred["path"])
    np.testing.assert_allclose(pred["p_Negative"] + pred["p_Positive"], 1.0, atol=1e-5)
    assert {p.name for p in (out / "plots" / "images").iterdir()} >= PNGS
    assert list(pd.read_csv(out / "plots" / "pr.csv").columns) == ["recall", "precision"]
    assert "skipped 2 unreadable file(s)" in capsys.readouterr().out


def test_evaluate_folder_real_sample(tmp_path: Path, assets: dict,
                                     crack_sample: Path):
    """Mechanics only (the model is untrained): 50 real 227x227 JPEGs per class."""
    out = tmp_path / "sample"
    m = evaluate_folder(assets["keras_model"], crack_sample, out, limit_per_class=50,
                        classes=["Negative", "Positive"])
    assert m == json.loads((out / "metrics.json").read_text())
    assert m["files"] == {"evaluated": 100, "skipped": 0}
    assert "roc_auc" in m["folder"]
    assert (pd.read_csv(out / "predictions.csv")["actual"].value_counts() == 50).all()


def test_evaluate_folder_bad_data_path_exits_2(tmp_path: Path):
    """Through the real `python -m` entry point; fails before loading any model."""
    res = subprocess.run([sys.executable, "-m", "crackxai.evaluate_folder", "--model",
                          str(tmp_path / "model.keras"), "--data", str(tmp_path / "nope")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "nope' does not exist" in res.stderr and "Traceback" not in res.stderr


def test_evaluate_folder_bad_model_exits_2(tmp_path: Path, assets: dict, capsys):
    with pytest.raises(SystemExit) as exc:
        folder_main(["--model", str(tmp_path / "missing.keras"), "--data", str(assets["folder"]),
                     "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "missing.keras' not found" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("case", ["class_count", "unknown_folder", "no_images", "threshold"])
def test_evaluate_folder_bad_inputs(case: str, tmp_path: Path, assets: dict):
    data, kwargs = tmp_path / "data", {}
    for name in ("Negative", "Positive"):
        (data / name).mkdir(parents=True)
        (data / name / "x.jpg").write_bytes(b"broken")
    if case == "class_count":
        (data / "Spalling").mkdir()
        expected = "has 3 class folder"
    elif case == "unknown_folder":
        kwargs, expected = {"classes": ["Negative", "Crack"]}, r"\['Positive'\] of"
    elif case == "no_images":
        expected = "No readable image"
    else:
        kwargs, expected = {"threshold": 1.5}, "outside"
    with pytest.raises(CrackxaiError, match=expected):
        evaluate_folder(assets["keras_model"], data, tmp_path / "o", **kwargs)
    assert not (tmp_path / "o").exists()
