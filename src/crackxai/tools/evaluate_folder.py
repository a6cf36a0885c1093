"""Evaluate a trained model on another image folder, without retraining.

    python -m crackxai.evaluate_folder --model models/model.keras --data PATH \\
        [--out DIR] [--threshold T] [--limit-per-class N] [--classes A,B] [--positive-class A]

PATH holds one sub-folder per class (e.g. Negative/ and Positive/; nested folders are searched,
folders starting with "_" or "." are ignored). Every file is decoded as the preprocess stage does
it (OpenCV, BGR -> RGB, grayscale and 16-bit converted, INTER_AREA resize to the model's input);
files that cannot be read or decoded are skipped, counted and listed, never fatal.

The model does not store class names: --classes gives them in the model's output order (as in
data/processed/classes.json); by default they are the sorted sub-folder names, which must then be
as many as the model has outputs. Two-class models: the positive class is --positive-class, else
"Positive", else the second class, and --threshold applies to its probability.

Writes into --out (default reports/folder_eval/<folder name>/) the same metrics and plots as the
evaluate stage (metrics.json with a "folder" group, plots/*.csv, plots/images/*.png) plus
predictions.csv (one row per image) and skipped.csv (file, reason). Nothing goes to MLflow.

With the out-of-distribution detector saved beside the model (models/model.ood.npz,
crackxai.models.ood), each image's distance to the training features is checked too:
predictions.csv gets `ood_distance` and a `verdict` column ("out of distribution" instead of the
class for a flagged image), and metrics.json an "ood" group (flagged count and rate, threshold).
The classification metrics still cover every image, flagged or not, so they stay comparable with
a run without a detector. A model without one gets a warning and no "ood" group.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from crackxai.core.entry import command, log
from crackxai.core.errors import CrackxaiError, DataError
from crackxai.core.io import atomic_path, write_json
from crackxai.evaluation.plots import write_plots
from crackxai.evaluation.scores import (
    Scores,
    compute_metrics,
    positive_index,
    predict_proba,
    summary,
)
from crackxai.models.io import check_model
from crackxai.models.ood import OOD_LABEL, FeatureExtractor, OodDetector, load_detector_for

STAGE = "evaluate_folder"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m crackxai.evaluate_folder",
        description="Evaluate a trained crackxai model on a folder of images with one sub-folder "
                    "per class (no retraining). Writes metrics and plots like the evaluate stage.")
    p.add_argument("--model", required=True, type=Path, help="a saved .keras model")
    p.add_argument("--data", required=True, type=Path,
                   help="image folder with one sub-folder per class, e.g. Negative/ Positive/")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: reports/folder_eval/<folder name>/)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="two-class models: predicted positive when p(positive) >= T (default "
                        "0.5; e.g. val/best_f1_threshold from reports/metrics.json)")
    p.add_argument("--limit-per-class", type=int, default=None, metavar="N",
                   help="use only the first N readable images of each class (sorted by path)")
    p.add_argument("--classes", default=None,
                   help="comma-separated class names in the model's output order (default: the "
                        "sorted sub-folder names)")
    p.add_argument("--positive-class", default=None,
                   help="two-class models: the positive class (default: Positive, else the second)")
    p.add_argument("--batch-size", type=int, default=64, help="images per prediction batch")
    p.add_argument("--gallery-size", type=int, default=8,
                   help="most confident errors shown per gallery PNG (0: none)")
    return p.parse_args(argv)


def check_data(data: Path) -> None:
    if not data.exists():
        raise DataError(f"--data '{data}' does not exist. Give a folder with one sub-folder of "
                        "images per class, e.g. Negative/ and Positive/.")
    if not data.is_dir():
        raise DataError(f"--data '{data}' is not a folder (archives are not read here: unpack it "
                        "first). Give a folder with one sub-folder of images per class.")


def class_folders(data: Path, classes: list[str] | None, num_outputs: int) -> tuple[list[str],
                                                                                    list[str]]:
    """(the model's class names in output order, the class sub-folders present in `data`)."""
    check_data(data)
    folders = sorted(d.name for d in data.iterdir()
                     if d.is_dir() and not d.name.startswith(("_", ".")))
    if not folders:
        raise DataError(f"--data '{data}' has no class sub-folders; expected one sub-folder of "
                        "images per class, e.g. Negative/ and Positive/.")
    if classes is None:
        if len(folders) != num_outputs:
            raise CrackxaiError(
                f"'{data}' has {len(folders)} class folder(s) {folders} but the model has "
                f"{num_outputs} outputs, and the model does not store class names. Pass "
                "--classes with the model's class names in output order (as in "
                "data/processed/classes.json), e.g. --classes Negative,Positive.")
        return folders, folders
    if len(classes) != num_outputs or len(set(classes)) != len(classes):
        raise CrackxaiError(f"--classes {','.join(classes)} names {len(classes)} distinct "
                            f"class(es) but the model has {num_outputs} outputs; give one unique "
                            "name per output, in output order.")
    unknown = [f for f in folders if f not in classes]
    if unknown:
        raise CrackxaiError(f"Sub-folder(s) {unknown} of '{data}' are not among --classes "
                            f"{classes}. Rename the folders or fix --classes.")
    return classes, folders


def list_files(data: Path, classes: list[str], folders: list[str]) -> list[tuple[Path, int]]:
    """Every non-hidden file under each class folder, sorted by path, with its class index."""
    return [(f, classes.index(folder)) for folder in folders
            for f in sorted((data / folder).rglob("*"))
            if f.is_file() and not f.name.startswith(".")]


def read_image(path: Path, size: int) -> tuple[np.ndarray | None, str]:
    """(RGB uint8 (size, size, 3), "") or (None, why it was skipped)."""
    from crackxai.data.decode import decode_image  # the exact decoding the training data got

    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, f"unreadable: {exc.strerror or type(exc).__name__}"
    image, reason, detail, _ = decode_image(data, size, 1)
    return image, "" if image is not None else f"{reason}: {detail}"


def evaluate_folder(model: Any, data: Path, out: Path | None = None, threshold: float = 0.5,
                    limit_per_class: int | None = None, classes: list[str] | None = None,
                    positive_class: str | None = None, batch_size: int = 64,
                    gallery_size: int = 8) -> dict[str, Any]:
    """Predict every image of `data`, then write metrics and plots into `out`; returns metrics.
    `model` is a saved .keras file or an already loaded keras.Model."""
    if not 0.0 <= threshold <= 1.0:
        raise CrackxaiError(f"--threshold {threshold} is outside [0, 1].")
    for name, value in (("--limit-per-class", limit_per_class), ("--batch-size", batch_size)):
        if value is not None and value <= 0:
            raise CrackxaiError(f"{name} {value} must be a positive integer.")
    if gallery_size < 0:
        raise CrackxaiError(f"--gallery-size {gallery_size} must be >= 0.")
    data = Path(data)
    out = Path(out) if out is not None else Path("reports/folder_eval") / data.resolve().name
    check_data(data)  # before the slow Keras import and model load
    model_name = str(model) if isinstance(model, str | Path) else model.name
    detector: OodDetector | None = None
    if isinstance(model, str | Path):
        from crackxai.models.io import load_model

        model_path, model = model, load_model(model)
        detector = load_detector_for(model_path, model)
    classes, folders = class_folders(data, classes, model.output_shape[-1])
    size = model.input_shape[1]
    check_model(model, len(classes), size, model_name, f"'{data}' (resized to the model input)")
    positive = (positive_index(classes, positive_class, "--positive-class")
                if len(classes) == 2 else 0)

    files = list_files(data, classes, folders)
    limit = f", the first {limit_per_class} readable per class" if limit_per_class else ""
    log(STAGE, f"reading {len(files)} files of {len(folders)} class folder(s) {folders} in "
               f"{data}{limit}, resized to {size}x{size}")
    kept: list[tuple[Path, int]] = []
    skipped: list[dict[str, str]] = []
    chunks, distances, flags, batch = [], [], [], []
    # with a detector, one compiled pass gives the probabilities and the detector's features
    extractor = FeatureExtractor(model, batch_size) if detector else None

    def predict(images: np.ndarray) -> None:
        if extractor is None:
            chunks.append(predict_proba(model, images, batch_size))
            return
        probs, features = extractor(images)
        chunks.append(probs)
        distances.append(detector.distance(features))
        flags.append(detector.flags(features))  # too far, or a blank frame

    per_class: Counter[int] = Counter()
    for path, label in tqdm(files, desc="read+predict", unit="img", leave=False):
        if limit_per_class and per_class[label] >= limit_per_class:
            continue
        image, why = read_image(path, size)
        if image is None:
            skipped.append({"path": path.relative_to(data).as_posix(), "reason": why})
            continue
        kept.append((path, label))
        per_class[label] += 1
        batch.append(image)
        if len(batch) == batch_size:  # predict as we go: memory stays flat for any folder size
            predict(np.stack(batch))
            batch = []
    if batch:
        predict(np.stack(batch))
    if skipped:
        log(STAGE, f"skipped {len(skipped)} unreadable file(s), e.g. {skipped[0]['path']} "
                   f"({skipped[0]['reason']}); all listed in {out / 'skipped.csv'}")
    if not kept:
        raise DataError(f"No readable image in '{data}' ({len(skipped)} file(s) skipped, e.g. "
                        f"{skipped[0] if skipped else 'none found'}). Check the folder layout: "
                        "one sub-folder of images per class.")

    labels = np.array([label for _, label in kept], dtype=np.int64)
    probs = np.concatenate(chunks)
    names = [p.relative_to(data).as_posix() for p, _ in kept]
    s = Scores(labels, probs, classes, positive, threshold)
    metrics = compute_metrics(s, "folder")
    metrics["files"] = {"evaluated": len(kept), "skipped": len(skipped)}
    extra: dict[str, Any] = {}
    if detector is not None:
        distance, flagged = np.concatenate(distances), np.concatenate(flags)
        metrics["ood"] = {"flagged": int(flagged.sum()), "rate": float(flagged.mean()),
                          "threshold": detector.threshold, "quantile": detector.quantile}
        extra = {"ood_distance": distance,
                 "verdict": np.where(flagged, OOD_LABEL, np.asarray(classes)[s.predicted])}
        log(STAGE, f"{OOD_LABEL}: {flagged.sum()} of {len(flagged)} images "
                   f"({flagged.mean():.1%}; distance > {detector.threshold:.1f} or blank), listed in "
                   f"{out / 'predictions.csv'} (verdict column)")

    write_json(out / "metrics.json", metrics)
    table = pd.DataFrame({"path": names, "actual": np.asarray(classes)[labels],
                          "predicted": np.asarray(classes)[s.predicted],
                          **{f"p_{c}": probs[:, i] for i, c in enumerate(classes)}, **extra})
    for name, df in (("predictions.csv", table),
                     ("skipped.csv", pd.DataFrame(skipped, columns=["path", "reason"]))):
        with atomic_path(out / name) as tmp:
            df.to_csv(tmp, index=False)
    write_plots(s, out / "plots", lambda i: read_image(kept[i][0], size)[0], names, gallery_size,
                f"folder {data.resolve().name}")
    counts = ", ".join(f"{classes[k]} {n}" for k, n in sorted(per_class.items()))
    log(STAGE, f"{len(kept)} images ({counts}); {len(skipped)} skipped: "
               f"{summary(metrics['folder'])}")
    log(STAGE, f"wrote {out}/metrics.json, predictions.csv, skipped.csv, plots/*.csv and "
               "plots/images/*.png")
    log(STAGE, "Note: if these images share source photos with the training data (as crops of "
               "the Kaggle surface-crack photos do), these figures are optimistic too.")
    return metrics


@command(STAGE)
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    evaluate_folder(args.model, args.data, args.out, args.threshold, args.limit_per_class,
                    classes, args.positive_class, args.batch_size, args.gallery_size)


if __name__ == "__main__":
    main(sys.argv[1:])
