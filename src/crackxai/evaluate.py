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
  test          every metric at evaluate.threshold (crackxai.metrics.binary_report)
  val           best_f1_threshold / best_f1: the threshold maximising F1 on the val split
  test_best_f1  the thresholded test metrics at that val threshold (an honest choice: the test
                split plays no part in picking it)
The gallery (false_positives.png, false_negatives.png) shows the most confident errors at
evaluate.threshold. More classes: argmax decisions; metrics as in crackxai.metrics, curves
micro-averaged one-vs-rest, gallery misclassified.png.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from tqdm import tqdm

from crackxai import metrics as M
from crackxai.cli import log, run_stage
from crackxai.config import Config
from crackxai.dataset import load_split
from crackxai.errors import ConfigError, CrackxaiError, DataError
from crackxai.io import atomic_dir, atomic_path, write_json
from crackxai.paths import METRICS, MODEL_FILE, PLOTS_DIR, RUN_FILE

STAGE = "evaluate"
CAVEAT = (
    "Caveat (Kaggle surface-crack data): its 40,000 patches are crops of only 458 photos and a "
    "random split puts crops of one photo in both train and test, so test figures (here, and the "
    "99-100% accuracies published for this dataset) partly reflect that leak and overstate "
    "accuracy on new photos."
)
SHORT_CAVEAT = ("Kaggle crack data: 40,000 patches cropped from 458 photos; a random split leaks "
                "crops of one photo into train and test, so these figures are optimistic.")


# ---------------------------------------------------------------------------------------------
# Predictions
# ---------------------------------------------------------------------------------------------


@dataclass
class Scores:
    """A model's predictions on one image set, ready for metrics and plots."""

    labels: np.ndarray  # (N,) true class index
    probs: np.ndarray  # (N, K) softmax
    classes: list[str]
    positive: int  # two classes: index of the positive class
    threshold: float  # two classes: decision threshold on probs[:, positive]

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2

    @property
    def predicted(self) -> np.ndarray:
        if not self.binary:
            return np.argmax(self.probs, axis=1)
        return np.where(self.probs[:, self.positive] >= self.threshold,
                        self.positive, 1 - self.positive)

    def one_vs_rest(self) -> tuple[np.ndarray, np.ndarray, str]:
        """(is positive, score, what) for the curves: the positive class for two classes,
        every (image, class) pair pooled (micro-average) for more."""
        if self.binary:
            return (self.labels == self.positive, self.probs[:, self.positive],
                    f"p({self.classes[self.positive]})")
        onehot = np.eye(len(self.classes), dtype=bool)[self.labels]
        return onehot.ravel(), self.probs.ravel(), "micro-averaged one-vs-rest"


def positive_index(classes: list[str], name: str | None = None,
                   option: str = "evaluate.positive_class") -> int:
    """Index of the positive class: `name`, else "Positive", else the second class."""
    if name is not None:
        if name not in classes:
            raise ConfigError(f"{option}={name!r} is not one of the classes {classes}. Use one "
                              "of them, or leave it unset (\"Positive\", else the second class).")
        return classes.index(name)
    return classes.index("Positive") if "Positive" in classes else 1


def check_model(model: Any, num_classes: int, image_size: int, model_path: Path | str,
                data: str) -> None:
    """The model must take `image_size` RGB images and output one probability per class."""
    _, height, width, channels = model.input_shape
    outputs = model.output_shape[-1]
    if (height, width, channels) != (image_size, image_size, 3):
        raise CrackxaiError(
            f"Model '{model_path}' takes {height}x{width}x{channels} inputs but {data} holds "
            f"{image_size}x{image_size}x3 images. The model and the data come from different "
            "runs: retrain (`dvc repro train`) or point to the matching model."
        )
    if outputs != num_classes:
        raise CrackxaiError(
            f"Model '{model_path}' has {outputs} outputs but {data} has {num_classes} classes. "
            "The model and the data come from different runs: retrain (`dvc repro train`) or "
            "point to the matching model."
        )


def predict_proba(model: Any, images: np.ndarray, batch_size: int,
                  desc: str = "predict") -> np.ndarray:
    """Softmax outputs, one compiled `predict_on_batch` call per batch; slicing a memory-mapped
    array one batch at a time keeps memory flat however large the split is."""
    starts = range(0, len(images), batch_size)
    out = [model.predict_on_batch(np.asarray(images[i:i + batch_size], np.float32))
           for i in tqdm(starts, desc=desc, unit="batch", leave=False, disable=len(starts) < 2)]
    if not out:
        return np.zeros((0, model.output_shape[-1]), np.float32)
    return np.concatenate([np.asarray(p) for p in out]).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


def compute_metrics(s: Scores, group: str, best_threshold: float | None = None) -> dict[str, Any]:
    """{group: every metric} plus, for two classes and a val threshold, {group_best_f1: ...}."""
    if not s.binary:
        return {group: M.multiclass_report(s.labels, s.probs, s.classes)}
    score = s.probs[:, s.positive]
    out: dict[str, Any] = {group: M.binary_report(s.labels, score, s.probs, s.positive,
                                                  s.threshold)}
    if best_threshold is not None:
        out[f"{group}_best_f1"] = M.at_threshold(s.labels == s.positive, score, best_threshold)
    return out


def flatten_metrics(d: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """{'test': {'f1': 0.9}} -> {'test/f1': 0.9}; characters MLflow refuses in a name become _."""
    out: dict[str, float] = {}
    for key, value in d.items():
        name = prefix + re.sub(r"[^\w\-. :/]", "_", str(key))
        if isinstance(value, dict):
            out.update(flatten_metrics(value, name + "/"))
        else:
            out[name] = float(value)
    return out


def summary(m: dict[str, Any]) -> str:
    """One line of the headline metrics of one group."""
    names = [("accuracy", "accuracy"), ("precision", "precision"), ("recall", "recall"),
             ("f1", "F1"), ("precision_macro", "macro precision"), ("recall_macro", "macro recall"),
             ("f1_macro", "macro F1"), ("roc_auc", "ROC AUC"), ("roc_auc_ovr_macro", "OvR ROC AUC"),
             ("average_precision", "AP"), ("log_loss", "log loss"), ("ece", "ECE")]
    text = ", ".join(f"{label} {m[key]:.4f}" for key, label in names if key in m)
    return text + (f" at threshold {m['threshold']:.3f}" if "threshold" in m else "")


# ---------------------------------------------------------------------------------------------
# Plots (matplotlib's object API: no pyplot state, renders with Agg)
# ---------------------------------------------------------------------------------------------


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=110, bbox_inches="tight")


def _curve_figure(x: np.ndarray, y: np.ndarray, xlabel: str, ylabel: str, title: str,
                  label: str, reference: tuple[list[float], list[float]],
                  step: bool = False) -> Figure:
    fig = Figure(figsize=(4.8, 4.4))
    ax = fig.add_subplot()
    ax.plot(*reference, ls="--", c="grey", lw=1, label="chance")
    if len(x):
        ax.plot(x, y, lw=1.8, label=label, drawstyle="steps-post" if step else "default")
    else:
        ax.text(0.5, 0.5, "undefined: only one class present", ha="center", va="center")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(loc="lower right" if xlabel.startswith("False") else "lower left", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def _calibration_figure(bins: dict[str, np.ndarray], title: str, what: str,
                        ece: float) -> Figure:
    fig = Figure(figsize=(4.8, 5.4))
    ax, hist = fig.subplots(2, 1, height_ratios=(3, 1), sharex=True)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfectly calibrated")
    ax.plot(bins["mean_predicted"], bins["fraction_positive"], "o-", label="model")
    ax.set(ylim=(-0.01, 1.01), ylabel="fraction positive", title=f"{title}, ECE {ece:.3f}")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    hist.bar(bins["mean_predicted"], bins["count"], width=0.08, color="tab:blue", alpha=0.6)
    hist.set(xlim=(-0.01, 1.01), xlabel=f"mean predicted {what} (10 equal-width bins)",
             ylabel="images")
    return fig


def _confusion_figure(cm: np.ndarray, classes: list[str], title: str, note: str | None) -> Figure:
    k = len(classes)
    fig = Figure(figsize=(1.3 * k + 2.5, 1.3 * k + 1.8))
    ax = fig.add_subplot()
    rows = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{cm[i, j]}\n{rows[i, j]:.1%}", ha="center", va="center",
                    color="white" if rows[i, j] > 0.5 else "black", fontsize=9)
    ax.set_xticks(range(k), classes, rotation=45 if k > 3 else 0, ha="right" if k > 3 else "center")
    ax.set_yticks(range(k), classes)
    ax.set(xlabel="predicted", ylabel="actual", title=title)
    if note:
        fig.text(0.5, -0.02, note, ha="center", va="top", fontsize=6.5, wrap=True)
    return fig


def _gallery_figure(indices: np.ndarray, s: Scores, image_of: Callable[[int], np.ndarray],
                    names: list[str], title: str, empty: str, note: str | None) -> Figure:
    if len(indices) == 0:
        fig = Figure(figsize=(6, 1.6))
        fig.text(0.5, 0.55, empty, ha="center", va="center", fontsize=13)
        fig.text(0.5, 0.2, title, ha="center", va="center", fontsize=8, color="grey")
        return fig
    cols = min(len(indices), 4)
    rows = -(-len(indices) // cols)
    fig = Figure(figsize=(2.4 * cols, 2.75 * rows + 0.5))
    predicted = s.predicted
    for n, i in enumerate(indices):
        ax = fig.add_subplot(rows, cols, n + 1)
        ax.imshow(image_of(int(i)))
        ax.set_axis_off()
        pred = predicted[i]
        prob = (f"p({s.classes[s.positive]})={s.probs[i, s.positive]:.3f}" if s.binary
                else f"p={s.probs[i, pred]:.3f}")
        ax.set_title(f"{names[i]}\ntrue {s.classes[s.labels[i]]} / pred {s.classes[pred]}\n{prob}",
                     fontsize=7.5)
    fig.suptitle(title, fontsize=10)
    if note:
        fig.text(0.5, 0.0, note, ha="center", va="top", fontsize=6.5, wrap=True)
    return fig


def gallery(s: Scores, image_of: Callable[[int], np.ndarray], names: list[str], size: int,
            note: str | None = None) -> dict[str, Figure]:
    """The most confident errors: {file name: figure}; a figure saying so when there are none."""
    predicted, wrong = s.predicted, s.predicted != s.labels
    if not s.binary:
        idx = np.flatnonzero(wrong)
        conf = s.probs[idx, predicted[idx]]
        top = idx[np.argsort(-conf, kind="stable")][:size]
        return {"misclassified.png": _gallery_figure(
            top, s, image_of, names, f"Most confident misclassifications ({len(idx)} in all)",
            "no misclassified images", note)}
    pos, neg = s.classes[s.positive], s.classes[1 - s.positive]
    score = s.probs[:, s.positive]
    fp = np.flatnonzero(wrong & (predicted == s.positive))
    fn = np.flatnonzero(wrong & (predicted != s.positive))
    at = f"at threshold {s.threshold:.3f}"
    return {
        "false_positives.png": _gallery_figure(
            fp[np.argsort(-score[fp], kind="stable")][:size], s, image_of, names,
            f"Most confident false positives (true {neg}, predicted {pos}; {len(fp)} in all, {at})",
            f"No false positives {at}", note),
        "false_negatives.png": _gallery_figure(
            fn[np.argsort(score[fn], kind="stable")][:size], s, image_of, names,
            f"Most confident false negatives (true {pos}, predicted {neg}; {len(fn)} in all, {at})",
            f"No false negatives {at}", note),
    }


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def write_plots(s: Scores, plots_dir: Path, image_of: Callable[[int], np.ndarray],
                names: list[str], gallery_size: int, set_name: str,
                note: str | None = None) -> list[Path]:
    """DVC plot data (roc/pr/calibration/confusion .csv) and PNGs in plots_dir/images/."""
    plots_dir = Path(plots_dir)
    y, score, what = s.one_vs_rest()
    c = M.curves(y, score)
    _write_csv(pd.DataFrame(c["roc"]), plots_dir / "roc.csv")
    _write_csv(pd.DataFrame(c["pr"]), plots_dir / "pr.csv")
    _write_csv(pd.DataFrame(c["calibration"]), plots_dir / "calibration.csv")
    summary = M.threshold_free(y, score)
    auc = f", AUC {summary['roc_auc']:.3f}" if "roc_auc" in summary else ""
    ap = f", AP {summary['average_precision']:.3f}" if "average_precision" in summary else ""
    predicted = s.predicted
    classes = np.asarray(s.classes, dtype=object)
    _write_csv(pd.DataFrame({"actual": classes[s.labels], "predicted": classes[predicted]}),
               plots_dir / "confusion.csv")

    figures = {
        "roc.png": _curve_figure(c["roc"]["fpr"], c["roc"]["tpr"], "False positive rate",
                                 "True positive rate", f"ROC curve ({set_name})", what + auc,
                                 ([0, 1], [0, 1])),
        "pr.png": _curve_figure(c["pr"]["recall"], c["pr"]["precision"], "Recall", "Precision",
                                f"Precision-recall curve ({set_name})", what + ap,
                                ([0, 1], [float(np.mean(y))] * 2), step=True),
        "calibration.png": _calibration_figure(c["calibration"], f"Calibration ({set_name})", what,
                                               summary["ece"]),
        "confusion_matrix.png": _confusion_figure(
            M.confusion_matrix(s.labels, predicted, len(s.classes)), s.classes,
            f"Confusion matrix ({set_name}" + (f", threshold {s.threshold:.3f})" if s.binary
                                               else ")"), note),
    }
    if gallery_size > 0:
        figures.update(gallery(s, image_of, names, gallery_size, note))
    with atomic_dir(plots_dir / "images") as tmp:
        for name, fig in figures.items():
            _save(fig, tmp / name)
    return [plots_dir / "images" / name for name in figures]


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------


def main(cfg: Config) -> dict[str, Any]:
    import mlflow

    from crackxai.model import load_model
    from crackxai.tracking import read_run_file, resume_model_run

    ev = cfg.evaluate
    _check_config(cfg)
    read_run_file(RUN_FILE)  # fail before the slow part when there is no run to log into
    test = load_split("test")
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
        val = load_split("val")
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
    names = (test.records["path"].astype(str).tolist() if "path" in test.records
             else [f"test #{i}" for i in range(len(test))])  # the source file, to look it up
    images = write_plots(s, PLOTS_DIR, lambda i: test.images[i], names, ev.gallery_size, "test",
                         note=SHORT_CAVEAT)
    log(STAGE, f"wrote {METRICS}, {PLOTS_DIR}/{{roc,pr,calibration,confusion}}.csv and "
               f"{len(images)} PNGs in {PLOTS_DIR / 'images'}")

    with resume_model_run(cfg) as active:
        mlflow.log_metrics(flatten_metrics(metrics))
        mlflow.log_artifact(str(METRICS), STAGE)
        mlflow.log_artifacts(str(PLOTS_DIR), STAGE)
    log(STAGE, f"logged {len(flatten_metrics(metrics))} metrics and the plots (under {STAGE}/) "
               f"to MLflow run {active.info.run_id} (from {RUN_FILE})")

    log(STAGE, f"test ({len(test)} images): {summary(metrics['test'])}")
    if "test_best_f1" in metrics:
        log(STAGE, f"test at the val best-F1 threshold: {summary(metrics['test_best_f1'])}")
    log(STAGE, CAVEAT)
    return metrics


def _check_config(cfg: Config) -> None:
    if cfg.evaluate.batch_size <= 0:
        raise ConfigError(f"Invalid value for 'evaluate.batch_size': {cfg.evaluate.batch_size!r}."
                          " Allowed: a positive integer, e.g. `evaluate.batch_size=64`.")


if __name__ == "__main__":
    run_stage(STAGE, main)
