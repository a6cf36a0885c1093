"""The explanation scorecard of a model on a folder of images with pixel masks, and the README
table generated from it (never copied by hand).

    python -m crackxai.scorecard --model models/model.keras --data ../shared/real-masks \\
        [--n 244] [--out DIR] [--crack-class Positive] [--classes Negative,Positive] \\
        [--readme README.md --block real-masks] [explain.key=value ...]
    python -m crackxai.scorecard --from-report reports/explain --readme README.md --block synthetic

--data is either a local data set (class folders, masks in `_masks/<class>/<relative path>.png`)
or a paired folder (`images/` + `masks/`, same stem, every image of --crack-class), see
crackxai.data.local.masked_folder. --n images are drawn, seeded and stratified by class (all by
default), decoded as the preprocess stage does (INTER_AREA to the model's input; masks area-resized
and thresholded at > 0). Every map explains --crack-class whatever the prediction, so that
localisation is measured against the crack mask. Methods, metrics, reruns and bootstrap come from
conf/explain (overrides as in the explain stage).

Writes into --out (default reports/scorecard/<folder name>/) per_image.csv, scorecard.{json,csv,
md,png}, cascading.{csv,png}, grid.png and maps/, overlays/; with --readme, replaces the block
between `<!-- scorecard:NAME -->` and `<!-- /scorecard:NAME -->` with the Markdown table and the
command that made it. --from-report takes scorecard.json of an explain-stage run instead of
explaining anything. Nothing goes to MLflow.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crackxai.config import Config, check_methods, load_config
from crackxai.config.explain import explainer_factory, quality_settings, rerun_settings
from crackxai.core.entry import command, log
from crackxai.core.errors import CrackxaiError, DataError
from crackxai.core.io import staged_outputs, write_text
from crackxai.data.decode import decode_image, decode_mask
from crackxai.data.local import masked_folder
from crackxai.data.processed import Split

STAGE = "scorecard"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m crackxai.scorecard",
        description="Explain a masked image folder with every method and write the scorecard "
                    "(means with bootstrap intervals, rank, verdict); optionally into README.md.")
    p.add_argument("--model", type=Path, help="a saved .keras model (not with --from-report)")
    p.add_argument("--data", type=Path, help="images/ + masks/, or class folders with _masks/")
    p.add_argument("--from-report", type=Path, default=None,
                   help="an explain output folder (scorecard.json): only write its table")
    p.add_argument("--n", type=int, default=None, help="images to explain (default: all)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: reports/scorecard/<folder name>/)")
    p.add_argument("--crack-class", default="Positive", help="the class every map explains")
    p.add_argument("--classes", default="Negative,Positive",
                   help="the model's class names in output order (default: Negative,Positive)")
    p.add_argument("--readme", type=Path, default=None, help="a Markdown file with the block")
    p.add_argument("--block", default=None, help="the block's name in --readme")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. explain.methods=[gradcam]")
    args = p.parse_args(argv)
    if (args.model is None or args.data is None) and args.from_report is None:
        p.error("give --model and --data, or --from-report")
    if (args.readme is None) != (args.block is None):
        p.error("--readme and --block go together")
    if args.n is not None and args.n < 1:
        p.error("--n must be >= 1")
    return args


def stratified(classes: list[str], n: int | None, seed: int) -> np.ndarray:
    """Indices of n items, each class in proportion (largest remainders), seeded; sorted."""
    labels = np.asarray(classes)
    if n is None or n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    names, counts = np.unique(labels, return_counts=True)
    share = counts * n / len(labels)
    take = np.floor(share).astype(int)
    take[np.argsort(-(share - take))[: n - take.sum()]] += 1
    picks = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(names, take,
                                                                               strict=True)]
    return np.sort(np.concatenate(picks))


def load_folder(data: Path, classes: list[str], crack_class: str, size: int, n: int | None,
                seed: int) -> Split:
    """The chosen images of a masked folder as a test Split (masks zero where there is none)."""
    files = masked_folder(data, crack_class)
    unknown = sorted({c for _, _, c in files} - set(classes))
    if unknown:
        raise DataError(f"'{data}' has class(es) {unknown} that are not among the model's classes "
                        f"{classes}: pass --classes in the model's output order.")
    chosen = [files[i] for i in stratified([c for _, _, c in files], n, seed)]
    images, masks, rows = [], [], []
    for image_path, mask_path, c in chosen:
        image, reason, detail, shape = decode_image(image_path.read_bytes(), size, 1)
        if image is None:
            raise DataError(f"'{image_path}' cannot be used ({reason}: {detail}); remove it.")
        mask, problem = (decode_mask(mask_path.read_bytes(), shape, size) if mask_path
                         else (None, ""))
        if problem:
            raise DataError(f"Mask '{mask_path}' of '{image_path}': {problem}. Fix or remove it.")
        images.append(image)
        masks.append(mask if mask is not None else np.zeros((size, size), np.uint8))
        rows.append({"path": str(image_path), "label": classes.index(c), "class": c,
                     "sha256": "", "has_mask": mask is not None})
    records = pd.DataFrame(rows)
    return Split("test", np.stack(images), records["label"].to_numpy(np.int64), np.stack(masks),
                 records, list(classes))


def run_scorecard(cfg: Config, model_path: Path, data: Path, out: Path, classes: list[str],
                  crack_class: str, n: int | None, how: str = "") -> dict[str, Any]:
    """Explain the folder, measure, write the files into `out` (swapped in whole); the card,
    with the image counts and the command that made it (`how`)."""
    import keras

    from crackxai.models.io import load_model
    from crackxai.xai import metrics as EM
    from crackxai.xai import registry, scorecard
    from crackxai.xai.assess import assess, predictors, write_outputs
    from crackxai.xai.cam import resolve_layer
    from crackxai.xai.selection import select

    e = cfg.explain
    if crack_class not in classes:
        raise CrackxaiError(f"--crack-class {crack_class!r} is not one of --classes {classes}.")
    model = load_model(model_path)
    _, size, _, _ = model.input_shape
    if model.output_shape[-1] != len(classes):
        raise CrackxaiError(f"Model '{model_path}' has {model.output_shape[-1]} outputs but "
                            f"--classes names {len(classes)}: {classes}.")
    test = load_folder(data, classes, crack_class, int(size), n, cfg.seed)
    log(STAGE, f"{len(test)} images from {data} ({int(test.has_mask.sum())} with a mask) at "
               f"{size} px; explaining class {crack_class!r}; methods {', '.join(e.methods)}")
    layer = None
    if any(registry.get(m).is_cam for m in e.methods):
        layer = resolve_layer(model, e.layer, e.cam_min_size)
    keras.utils.set_random_seed(cfg.seed)
    quality, reruns = quality_settings(cfg), rerun_settings(cfg)
    random_model = (EM.randomized_copy(model, quality.randomize, seed=cfg.seed)
                    if quality.sanity else None)
    predictor_for = predictors(model, random_model, quality.randomize, e.batch_size)
    sel = select(test, predictor_for(model), images=list(range(len(test))), n_images=len(test),
                 max_misclassified=0, target=classes.index(crack_class), seed=cfg.seed)
    makes = {m: explainer_factory(cfg, m, layer) for m in e.methods}
    with staged_outputs(out) as staging:
        result = assess(makes, model, predictor_for, sel, quality, reruns, staging,
                        random_model, log=lambda message: log(STAGE, message))
        boot = e.metrics.bootstrap
        card = scorecard.scorecard(result.per_image, list(e.methods), seed=cfg.seed,
                                   confidence=boot.confidence, n_resamples=boot.resamples)
        card["images"] = {"n": len(sel.rows), "with_mask": int(sel.info["has_mask"].sum()),
                          "misclassified": int(sel.info["misclassified"].sum()),
                          "image_size": int(size), "data": str(data), "model": str(model_path)}
        card["command"] = how
        write_outputs(staging, result, card, sel, e.grid_images)
    return card


def replace_block(readme: Path, block: str, text: str) -> None:
    """Replace what lies between `<!-- scorecard:block -->` and `<!-- /scorecard:block -->`."""
    start, end = f"<!-- scorecard:{block} -->", f"<!-- /scorecard:{block} -->"
    page = readme.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(page):
        raise CrackxaiError(f"'{readme}' has no block '{block}': add the two lines {start} and "
                            f"{end} where the table should go, then rerun.")
    write_text(readme, pattern.sub(lambda _: f"{start}\n{text}{end}", page, count=1))


def block_text(card: dict[str, Any], how: str) -> str:
    from crackxai.xai import scorecard

    images = card.get("images", {})
    n = images.get("n")
    what = (f"{n} images, {images.get('with_mask', '?')} with a crack mask"
            + (f", {images['image_size']} px" if "image_size" in images else ""))
    made = card.get("command") or how  # a table rendered --from-report names its real command
    return (f"Generated {datetime.date.today().isoformat()} by `{made}` ({what}); mean "
            f"[{card['confidence']:.0%} bootstrap interval], n where fewer images count:\n\n"
            + scorecard.markdown(card, n_images=n))


def _without_readme(argv: list[str]) -> list[str]:
    """The arguments that made the table: --readme and --block (with their values) left out."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--readme", "--block"):
            skip = True
        elif not a.startswith(("--readme=", "--block=")):
            out.append(a)
    return out


@command(STAGE)
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    how = "python -m crackxai.scorecard " + " ".join(
        shlex.quote(a) for a in _without_readme(sys.argv[1:] if argv is None else argv))
    if args.from_report is not None:
        path = args.from_report / "scorecard.json"
        if not path.is_file():
            raise CrackxaiError(f"'{path}' not found: run the explain stage first "
                                "(`dvc repro explain` or `python -m crackxai.explain`).")
        card = json.loads(path.read_text())
        if "images" not in card:  # the stage keeps the image counts in metrics.json
            metrics = args.from_report / "metrics.json"
            if metrics.is_file():
                card["images"] = json.loads(metrics.read_text()).get("images", {})
    else:
        cfg = load_config(args.overrides)
        check_methods(list(cfg.explain.methods))
        out = args.out or Path("reports", "scorecard", args.data.resolve().name)
        classes = [c.strip() for c in args.classes.split(",") if c.strip()]
        card = run_scorecard(cfg, args.model, args.data, out, classes, args.crack_class, args.n,
                             how)
        log(STAGE, f"wrote {out}/ (scorecard.md, scorecard.json, per_image.csv, ...)")
    print(block_text(card, how))
    if args.readme is not None:
        replace_block(args.readme, args.block, block_text(card, how))
        log(STAGE, f"replaced block '{args.block}' in {args.readme}")



if __name__ == "__main__":
    main(sys.argv[1:])
