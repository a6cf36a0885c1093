"""Evaluation plots: DVC plot CSVs and PNGs (matplotlib's object API: no pyplot state)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from crackxai.core.io import atomic_dir, atomic_path
from crackxai.evaluation import metrics as M
from crackxai.evaluation.scores import Scores


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
