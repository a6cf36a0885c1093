"""Evaluate: the trained model on the test split; metrics, plots and an error gallery, all logged
into the model's MLflow run.

    python -m crackxai.evaluate [evaluate.threshold=0.4 ...]
    python -m crackxai.evaluate --params params.yaml          # how dvc.yaml runs it

Reads data/processed (val and test), models/model.keras and models/mlflow_run.json. Writes
reports/metrics.json (DVC metrics) and reports/plots/: roc.csv (fpr,tpr), pr.csv
(recall,precision), calibration.csv (mean_predicted,fraction_positive,count), confusion.csv (one
row per test image: actual,predicted class names) and images/ (roc.png, pr.png, calibration.png,
confusion_matrix.png and the error gallery). The same metrics go to the model's MLflow run with
slash-separated names (test/f1, test_best_f1/f1, val/best_f1_threshold, ...) and the files as
artifacts under evaluate/.

Two classes: the positive class is evaluate.positive_class, else "Positive" when there is one,
else the second class; an image is predicted positive when p(positive) >= threshold.
  test          every metric at evaluate.threshold (crackxai.evaluation.metrics.binary_report)
  val           best_f1_threshold / best_f1: the threshold maximising F1 on the val split
  test_best_f1  the thresholded test metrics at that val threshold (an honest choice: the test
                split plays no part in picking it)
The gallery (false_positives.png, false_negatives.png) shows the most confident errors at
evaluate.threshold. More classes: argmax decisions; metrics as in crackxai.evaluation.metrics, curves
micro-averaged one-vs-rest, gallery misclassified.png.
"""

from __future__ import annotations

from typing import Any

from crackxai.config import Config
from crackxai.config.entry import run_stage
from crackxai.core.entry import log
from crackxai.core.errors import DataError
from crackxai.core.io import write_json
from crackxai.core.paths import (
    MANIFEST,
    METRICS,
    MODEL_FILE,
    PLOTS_DIR,
    PROCESSED_DIR,
    RUN_FILE,
    project_root,
)
from crackxai.data.kaggle import LEAK_CAVEAT, LEAK_CAVEAT_SHORT, manifest_is_kaggle
from crackxai.data.processed import load_split
from crackxai.evaluation import metrics as M
from crackxai.evaluation.plots import write_plots
from crackxai.evaluation.scores import (
    Scores,
    compute_metrics,
    flatten_metrics,
    positive_index,
    predict_proba,
    summary,
)
from crackxai.models.io import check_model

STAGE = "evaluate"


def main(cfg: Config) -> dict[str, Any]:
    import mlflow

    from crackxai.models.io import load_model
    from crackxai.tracking.runs import read_run_file, resume_model_run

    ev = cfg.evaluate
    read_run_file(RUN_FILE)  # fail before the slow part when there is no run to log into
    test = load_split("test", PROCESSED_DIR)
    classes = test.classes
    if len(test) == 0:
        raise DataError("The test split in data/processed is empty: rerun `dvc repro preprocess` "
                        "with a non-zero preprocess.split.test and enough images.")
    positive = positive_index(classes, ev.positive_class) if len(classes) == 2 else 0
    model = load_model(MODEL_FILE)
    check_model(model, len(classes), test.images.shape[1], MODEL_FILE, "data/processed")

    metrics: dict[str, Any] = {}
    best = None
    if len(classes) == 2:
        val = load_split("val", PROCESSED_DIR)
        is_pos = val.labels == positive
        if 0 < is_pos.sum() < len(val):
            log(STAGE, f"predicting {len(val)} val images to choose the best-F1 threshold")
            val_probs = predict_proba(model, val.images, ev.batch_size, desc="val")
            metrics["val"] = {"n": len(val),
                              **M.best_f1_threshold(is_pos, val_probs[:, positive])}
            best = metrics["val"]["best_f1_threshold"]
        else:
            log(STAGE, "warning: the val split lacks one of the two classes; no best-F1 "
                       "threshold (test_best_f1 and val/* are left out)")
    log(STAGE, f"predicting {len(test)} test images with {MODEL_FILE}")
    probs = predict_proba(model, test.images, ev.batch_size, desc="test")
    s = Scores(test.labels, probs, classes, positive, ev.threshold)
    metrics.update(compute_metrics(s, "test", best))

    write_json(METRICS, metrics)
    kaggle = manifest_is_kaggle(MANIFEST)  # the leak caveat only where it applies
    names = (test.records["path"].astype(str).tolist() if "path" in test.records
             else [f"test #{i}" for i in range(len(test))])  # the source file, to look it up
    images = write_plots(s, PLOTS_DIR, lambda i: test.images[i], names, ev.gallery_size, "test",
                         note=LEAK_CAVEAT_SHORT if kaggle else None)
    log(STAGE, f"wrote {METRICS}, {PLOTS_DIR}/{{roc,pr,calibration,confusion}}.csv and "
               f"{len(images)} PNGs in {PLOTS_DIR / 'images'}")

    with resume_model_run(cfg, RUN_FILE, project_root()) as active:
        mlflow.log_metrics(flatten_metrics(metrics))
        mlflow.log_artifact(str(METRICS), STAGE)
        mlflow.log_artifacts(str(PLOTS_DIR), STAGE)
    log(STAGE, f"logged {len(flatten_metrics(metrics))} metrics and the plots (under {STAGE}/) "
               f"to MLflow run {active.info.run_id} (from {RUN_FILE})")

    log(STAGE, f"test ({len(test)} images): {summary(metrics['test'])}")
    if "test_best_f1" in metrics:
        log(STAGE, f"test at the val best-F1 threshold: {summary(metrics['test_best_f1'])}")
    if kaggle:
        log(STAGE, LEAK_CAVEAT)
    return metrics


if __name__ == "__main__":
    run_stage(STAGE, main)
