"""How well `inspect` localises cracks on synthetic large surfaces, against a random map.

    .venv/bin/python benchmarks/inspect_localisation.py [--model models/model.keras]
        [--surfaces 10] [--size 1024x768] [--strides 227,113] [--explain gradcam]

Surfaces: crackxai.data.synthetic.render_surface (one crack at the training patches' scale,
with its pixel mask), written as PNG files and inspected through the tool's own path
(crackxai.tools.inspect.inspect_photos: decode, tile, predict in full batches, stitch).
Metrics (crackxai.evaluation.inspection), per surface then averaged, for the stitched
probability map and for the stitched Grad-CAM heat map of the flagged tiles:

  pointing game  the map's maximum within 15 px (Zhang et al.'s tolerance at patch scale) of the
                 crack; where the maximum is a plateau (a whole tile), the share of it that hits
  IoU            {map >= threshold} against the crack mask

each beside a random map: for the pointing game its chance level (a uniformly random point),
for the IoU the same tile values dealt to randomly permuted tiles (20 draws).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from crackxai.core.paths import MODEL_FILE  # noqa: E402
from crackxai.data import synthetic, tiles  # noqa: E402
from crackxai.evaluation import inspection  # noqa: E402
from crackxai.models.io import load_model  # noqa: E402
from crackxai.models.predictor import Predictor  # noqa: E402
from crackxai.tools.inspect import DEFAULT_THRESHOLD, inspect_photos  # noqa: E402
from crackxai.xai import registry  # noqa: E402
from crackxai.xai.metrics import pointing_tolerance  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(MODEL_FILE))
    p.add_argument("--surfaces", type=int, default=10)
    p.add_argument("--size", default="1024x768", help="WIDTHxHEIGHT of each surface")
    p.add_argument("--strides", default="227,113", help="comma-separated strides to compare")
    p.add_argument("--explain", default="gradcam", help="gradient CAM for the heat map ('' off)")
    p.add_argument("--cam-min-size", type=int, default=7, help="as explain.cam_min_size")
    p.add_argument("--seed", type=int, default=1000, help="first surface seed")
    return p.parse_args()


def surfaces(folder: Path, n: int, width: int, height: int,
             seed: int) -> tuple[list[tuple[str, Path]], list[np.ndarray]]:
    files, masks = [], []
    for s in range(seed, seed + n):
        image, mask = synthetic.render_surface(width, height, seed=s)
        path = folder / f"surface_{s}.png"
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        files.append((path.name, path))
        masks.append(mask)
    return files, masks


def main() -> None:
    args = parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    model = load_model(args.model)
    predictor = Predictor(model, batch_size=64)
    explainer = (registry.create(args.explain, model=model, predictor=predictor,
                                 cam_min_size=args.cam_min_size) if args.explain else None)
    tile, threshold = tiles.PATCH_SIZE, DEFAULT_THRESHOLD
    tolerance = pointing_tolerance((tile, tile))
    print(f"model {args.model}; {args.surfaces} surfaces {width}x{height}; tile {tile} px; "
          f"threshold {threshold}; pointing tolerance {tolerance} px"
          + (f"; {args.explain} on {explainer.layer}" if explainer else ""))
    with tempfile.TemporaryDirectory() as tmp:
        files, masks = surfaces(Path(tmp), args.surfaces, width, height, args.seed)
        print(f"crack pixels: {np.mean([(m > 0).mean() for m in masks]):.2%} of a surface")
        for stride in (int(s) for s in args.strides.split(",")):
            scores: dict[str, list[float]] = {}
            photos = inspect_photos(files, predictor, 1, tile, stride, threshold, explainer)
            for photo, mask in zip(photos, masks, strict=True):
                maps = [("probability", photo.probabilities, photo.probability_map, "mean")]
                if photo.heat is not None:
                    maps.append((args.explain, photo.tile_heat, photo.heat, "max"))
                for name, values, stitched, reduce in maps:
                    ours = inspection.localisation(stitched, mask, threshold, tolerance)
                    rand = inspection.random_localisation(
                        values, lambda v, t=photo.tiling, r=reduce: tiles.stitch(t, v, r),
                        mask, threshold, tolerance)
                    for k in ours:
                        scores.setdefault(f"{name} {k}", []).append(ours[k])
                        scores.setdefault(f"{name} {k} random", []).append(rand[k])
            print(f"\nstride {stride} px ({len(photo.tiling)} tiles per surface)")
            print(f"  {'map / metric':<28}{'inspect':>9}{'random':>9}{'ratio':>8}")
            for key in [k for k in scores if not k.endswith(" random")]:
                ours, rand = np.mean(scores[key]), np.mean(scores[f"{key} random"])
                ratio = f"{ours / rand:.1f}x" if rand > 0 else "-"
                print(f"  {key:<28}{ours:>9.3f}{rand:>9.3f}{ratio:>8}")


if __name__ == "__main__":
    main()
