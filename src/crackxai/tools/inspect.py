"""Inspect whole photos: tile them at the training patch scale, classify every tile, map the cracks.

    crackxai inspect --model models/model.keras PATH... [--out reports/inspect] [--tile 227]
        [--stride S] [--threshold 0.5] [--explain gradcam] [--layer NAME] [--batch-size N]
        [--uri URI] [--runner local|ray] [--ray-address ADDR] [--num-actors N] [--quiet]

--model is a saved .keras classifier or an MLflow model URI (runs:/<run_id>/model,
models:/<name>/<version>, models:/<name>@champion) fetched from the tracking store --uri (default
MLFLOW_TRACKING_URI, else the project's mlflow.db). PATHs are photo files or folders (searched
recursively, hidden files skipped), of any size and aspect ratio, decoded as the preprocess stage
decodes its images (OpenCV, EXIF orientation, grayscale and 16-bit converted) but not resized.

Each photo is cut into --tile x --tile squares (source pixels; default 227, the data set's patch)
every --stride pixels (default: the tile, no overlap), the last row and column flush with the
edge; a photo smaller than one tile is padded by mirroring, never stretched (with a warning).
Every tile is area-resized to the model input and classified through one shared Predictor, in
full batches that run across photos. The crack-probability map is the tiles' probabilities
stitched over the photo (the mean where tiles overlap); the flagged regions are its connected
areas at or above --threshold, as boxes in photo pixels. With --explain gradcam (or another
gradient CAM of crackxai.xai.registry) the flagged tiles are explained in batches; each tile's
map (in [0, 1]) is weighted by the tile's probability, resized to its footprint and stitched by
the *maximum*: a crack seen clearly by one tile is not washed out by an overlapping tile whose
map points elsewhere. The CAM layer is --layer, else explain.layer / explain.cam_min_size of
conf/ as for explain_image.

Writes into --out (default reports/inspect/), each file atomically:

    <photo>.png     the photo tinted by the probability map (or the Grad-CAM heat map), flagged
                    regions boxed; at most 1600 px a side
    <photo>.json    size, tiling, every tile's box and probability, the flagged regions
    summary.csv     one row per photo, sorted by crack score (the largest tile probability);
                    unreadable files as rows with status "error" and the reason
    index.html      the same as a page with the overlays

<photo> is the photo's path inside its folder without the suffix, "/" written as "__".

--runner ray inspects the photos on a Ray actor pool (--ray-address: an existing cluster, else a
private local one; --num-actors, default explain.ray.num_actors): photos travel as paths, each
actor loads the model (by its local file) and its explainer and detector once, inspects one photo
per call, and the photos come back keyed by their place in the list and are written in input
order, with the same maps and JSON as the local runner (README "Scaling out").
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from crackxai.core.entry import command, log
from crackxai.core.errors import CrackxaiError, DataError
from crackxai.core.io import atomic_path, write_json, write_text
from crackxai.core.paths import REPORTS_DIR, project_root
from crackxai.data import tiles
from crackxai.data.decode import decode_rgb
from crackxai.evaluation import inspection
from crackxai.evaluation.inspection_report import overlay, summary_html
from crackxai.evaluation.scores import positive_index
from crackxai.xai.options import RUNNERS

STAGE = "inspect"
DEFAULT_OUT = REPORTS_DIR / "inspect"
DEFAULT_THRESHOLD = 0.5
SUMMARY_COLUMNS = ["photo", "status", "crack_score", "flagged_tiles", "tiles", "regions",
                   "width", "height", "padded", "overlay", "json", "error"]
logger = logging.getLogger(f"crackxai.{STAGE}")
RAY_OPTION = ("--runner ray", "--runner local")  # for the missing-Ray error


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="crackxai inspect",
        description="Inspect whole photos of any size: tile them at the training patch scale, "
                    "classify every tile, stitch a crack-probability map, box the flagged "
                    "regions. Writes an overlay and a JSON per photo, summary.csv and index.html.")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="photo files or folders")
    p.add_argument("--model", required=True,
                   help="a saved .keras model, or runs:/<run_id>/model, models:/<name>/<version>, "
                        "models:/<name>@<alias>")
    p.add_argument("--uri", default=None,
                   help="MLflow tracking store for a model URI (default MLFLOW_TRACKING_URI, else "
                        "sqlite:///mlflow.db in the project)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help=f"output folder (default {DEFAULT_OUT}/)")
    p.add_argument("--tile", type=int, default=tiles.PATCH_SIZE,
                   help=f"tile side in source pixels (default {tiles.PATCH_SIZE}, the data set's "
                        "patch: the scale the model was trained at)")
    p.add_argument("--stride", type=int, default=None,
                   help="pixels between tiles (default: the tile, no overlap; e.g. half the tile "
                        "for a finer map at 4x the tiles)")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help=f"crack probability from which a tile / map pixel is flagged (default "
                        f"{DEFAULT_THRESHOLD})")
    p.add_argument("--explain", default=None, metavar="METHOD",
                   help="stitch a pixel-level heat map of the flagged tiles with this gradient CAM "
                        "(gradcam or gradcam_pp)")
    p.add_argument("--layer", default=None,
                   help="feature-map layer for --explain (default: explain.layer, else the last "
                        "one at least explain.cam_min_size pixels a side)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="tiles per model call (default: evaluate.batch_size of conf/)")
    p.add_argument("--runner", choices=RUNNERS, default=None,
                   help="where the photos are inspected: local (this process) or ray (an actor "
                        "pool on a Ray cluster, each actor loading the model once; the optional "
                        "`ray` group) (default: explain.runner of conf/)")
    p.add_argument("--ray-address", default=None,
                   help="with --runner ray: an existing cluster (auto, ray://head:10001); default "
                        "explain.ray.address of conf/ (null: a private local cluster for this run)")
    p.add_argument("--num-actors", type=int, default=None,
                   help="with --runner ray: actors, each with its own copy of the model "
                        "(default: explain.ray.num_actors of conf/)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar and no per-photo lines (warnings and errors still show)")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Inputs: photo files, the model
# ---------------------------------------------------------------------------------------------


def list_photos(paths: list[Path], exclude: Path | None = None) -> list[tuple[str, Path]]:
    """(name, file) of every photo: a file as given (name: its file name), a folder's
    non-hidden files recursively (name: the path inside the folder), skipping `exclude` (the
    output folder, should it lie inside)."""
    skip = exclude.resolve() if exclude is not None else None
    found: list[tuple[str, Path]] = []
    for path in paths:
        if not path.exists():
            raise DataError(f"'{path}' does not exist. Give photo files or folders of photos.")
        if path.is_file():
            found.append((path.name, path))
            continue
        for f in sorted(path.rglob("*")):
            rel = f.relative_to(path)
            if (f.is_file() and not any(part.startswith(".") for part in rel.parts)
                    and not (skip is not None and f.resolve().is_relative_to(skip))):
                found.append((rel.as_posix(), f))
    if not found:
        raise DataError(f"No files in {', '.join(map(str, paths))}. Give photo files or folders "
                        "that hold photos.")
    return found


def output_stems(names: list[str]) -> list[str]:
    """One file stem per photo name: the path without its suffix, "/" as "__", and "-2", "-3"
    ... where two photos would share one (a.jpg and a.png)."""
    stems: list[str] = []
    seen: set[str] = set()
    for name in names:
        base = Path(name).with_suffix("").as_posix().replace("/", "__")
        stem, k = base, 1
        while stem in seen:
            k += 1
            stem = f"{base}-{k}"
        seen.add(stem)
        stems.append(stem)
    return stems


def load_inspection_model(spec: str, uri: str | None) -> tuple[Any, str, list[str]]:
    """(model, local file, class names) for a path or MLflow model URI; one-paragraph errors
    for a missing file, an unreachable model URI or a model that does not take RGB images."""
    from crackxai.models.io import load_model
    from crackxai.tools.explain_image import class_names_for
    from crackxai.tracking.registry import model_file
    from crackxai.tracking.runs import resolve_tracking_uri

    path = model_file(spec, resolve_tracking_uri(uri, project_root()))
    model = load_model(path)
    shape = tuple(model.input_shape[1:])
    if len(shape) != 3 or shape[-1] != 3 or None in shape[:2]:
        raise CrackxaiError(f"--model '{spec}' takes inputs of shape {shape}; inspect needs a "
                            "classifier of fixed-size RGB images (H, W, 3), as the train stage "
                            "saves it.")
    names, _ = class_names_for(Path(path), int(model.output_shape[-1]))
    return model, str(path), names


def gradient_cam(name: str) -> str:
    """`name` checked to be a gradient CAM of the registry (batched, one backward pass)."""
    from crackxai.xai import registry

    cls = registry.get(name)
    if not (cls.is_cam and cls.uses_gradients):
        allowed = registry.names_where(is_cam=True, uses_gradients=True)
        raise CrackxaiError(f"--explain {name}: inspect explains every flagged tile, so it takes "
                            f"a gradient CAM ({', '.join(allowed)}); {name} needs many model "
                            "calls per tile. Use explain_image on a crop for the others.")
    return name


# ---------------------------------------------------------------------------------------------
# One photo after another: decode, tile, predict (batches across photos), stitch
# ---------------------------------------------------------------------------------------------


@dataclass
class Photo:
    """One inspected photo; `error` set (and the rest empty) when it could not be read."""

    name: str
    path: Path
    error: str = ""
    image: np.ndarray | None = None  # RGB uint8 (H, W, 3), source resolution
    tiling: tiles.Tiling | None = None
    tiles: np.ndarray | None = None  # (N, h, w, 3) uint8 at the model input, kept for --explain
    probabilities: np.ndarray | None = None  # (N,) crack probability per tile
    probability_map: np.ndarray | None = None  # (H, W) float32
    tile_heat: np.ndarray | None = None  # (N, h, w) each tile's CAM x its probability (0 if
    heat: np.ndarray | None = None  # not flagged) and their stitched (H, W) map, with --explain
    regions: list[dict[str, Any]] = field(default_factory=list)
    out_of_distribution: np.ndarray | None = None  # (N,) bool per tile; see out_of_distribution

    @property
    def score(self) -> float:
        return inspection.crack_score(self.probabilities if self.probabilities is not None
                                      else np.zeros(0))


def read_photo(name: str, path: Path) -> Photo:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return Photo(name, path, error=f"unreadable: {exc.strerror or type(exc).__name__}")
    image, reason, detail = decode_rgb(data)
    if image is None:
        return Photo(name, path, error=f"{reason}: {detail}")
    return Photo(name, path, image=image)


def tile_photo(name: str, path: Path, tile: int, stride: int, size: tuple[int, int]) -> Photo:
    """The photo read, decoded and cut into tiles at the model input (`error` set instead when
    it cannot be read)."""
    photo = read_photo(name, path)
    if photo.image is None:
        photo.tiles = np.zeros((0, *size, 3), np.uint8)
        return photo
    h, w = photo.image.shape[:2]
    photo.tiling = tiles.plan(h, w, tile, stride)
    photo.tiles = tiles.cut(tiles.pad(photo.image, photo.tiling), photo.tiling, size)
    return photo


def tiled(files: list[tuple[str, Path]], tile: int, stride: int,
          size: tuple[int, int]) -> Iterator[tuple[Photo, np.ndarray]]:
    """(photo, its tiles) for each file, in order. The next photo is decoded and cut on a
    second thread while the model works on this one (OpenCV and TensorFlow release the GIL)."""
    with ThreadPoolExecutor(1) as pool:
        ahead: deque[Future[Photo]] = deque()
        for name, path in files:
            ahead.append(pool.submit(tile_photo, name, path, tile, stride, size))
            if len(ahead) > 1:  # one photo ahead: memory stays at a few photos
                photo = ahead.popleft().result()
                yield photo, photo.tiles
        while ahead:
            photo = ahead.popleft().result()
            yield photo, photo.tiles


def ood_check(model_path: str, model: Any, batch_size: int) -> Any:
    """Per-tile out-of-distribution flags from the detector saved beside the model
    (crackxai.models.ood), as a function of a tile batch; None when there is no detector (warned
    once). Flagged tiles are reported as out of distribution and score 0."""
    from crackxai.models.ood import FeatureExtractor, load_detector_for

    detector = load_detector_for(model_path, model) if model_path else None
    if detector is None:
        return None
    extractor = FeatureExtractor(model, batch_size, **(
        {"layer": detector.layer} if detector.layer else {}))
    return lambda tile_images: detector.flags(extractor(tile_images)[1])


def inspect_photos(files: list[tuple[str, Path]], predictor: Any, positive: int, tile: int,
                   stride: int, threshold: float, explainer: Any = None,
                   model_path: str = "") -> Iterator[Photo]:
    """Each file inspected, in order: tiles classified in full batches across photos (the
    predictor's batch size), the probability map stitched, regions found; with `explainer` (a
    gradient CAM) the flagged tiles' maps stitched into `heat`. Tiles the detector saved beside
    `model_path` flags as out of distribution score 0."""
    out_of_distribution = ood_check(model_path, predictor.model, predictor.batch_size)
    return inspect_stream(files, predictor, positive, tile, stride, threshold, explainer,
                          out_of_distribution)


def inspect_stream(files: list[tuple[str, Path]], predictor: Any, positive: int, tile: int,
                   stride: int, threshold: float, explainer: Any = None,
                   out_of_distribution: Callable[[np.ndarray], np.ndarray] | None = None,
                   ) -> Iterator[Photo]:
    """`inspect_photos` with the out-of-distribution check given (`ood_check`'s), so a process
    that inspects one photo at a time loads the detector once."""
    from crackxai.models.batching import predict_groups

    size = tuple(int(s) for s in predictor.model.input_shape[1:3])
    for photo, probs in predict_groups(predictor, tiled(files, tile, stride, size),
                                       predictor.batch_size):
        if photo.error:
            photo.tiles = None
            yield photo
            continue
        p = probs[:, positive].astype(np.float32)
        ood = out_of_distribution(photo.tiles) if out_of_distribution else None
        if ood is not None:  # OOD tiles carry no crack evidence either way
            photo.out_of_distribution = ood
            p = np.where(ood, 0.0, p).astype(np.float32)
        photo.probabilities = p
        photo.probability_map = tiles.stitch(photo.tiling, p, "mean")
        photo.regions = inspection.flagged_regions(photo.probability_map, threshold)
        if explainer is not None:
            photo.tile_heat = explain_flagged(photo.tiles, p, explainer, positive, threshold,
                                              predictor.batch_size)
            photo.heat = tiles.stitch(photo.tiling, photo.tile_heat, "max")
        photo.tiles = None  # no longer needed: memory stays flat over a folder
        yield photo


def explain_flagged(tile_images: np.ndarray, probabilities: np.ndarray, explainer: Any,
                    positive: int, threshold: float, batch_size: int) -> np.ndarray:
    """(N, h, w): the CAM of each flagged tile (probability >= threshold), explained in batches
    and weighted by the tile's probability, so a weakly flagged tile's map, normalised to [0, 1]
    like every CAM, does not outshine a confident one; 0 for the other tiles."""
    p = probabilities
    flagged = np.flatnonzero(p >= threshold)
    maps = np.zeros(tile_images.shape[:3], np.float32)
    for start in range(0, len(flagged), batch_size):
        idx = flagged[start:start + batch_size]
        maps[idx] = explainer.explain(tile_images[idx], [positive] * len(idx)) * p[idx, None, None]
    return maps


# ---------------------------------------------------------------------------------------------
# Runners: this process, or a Ray actor pool
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InspectJob:
    """What inspecting needs, by path or value (picklable): a Ray actor builds its own model,
    predictor, explainer and detector from it, once."""

    model_path: str  # a local .keras file (a model URI is fetched by the driver first)
    positive: int
    tile: int
    stride: int
    threshold: float
    batch_size: int
    explain: str | None = None
    layer: str | None = None
    explain_settings: dict[str, Any] = field(default_factory=dict)


def make_tools(model: Any, job: InspectJob) -> tuple[Any, Any]:
    """(predictor, explainer or None) of `model` for `job`."""
    from crackxai.models.predictor import Predictor

    predictor = Predictor(model, batch_size=job.batch_size)
    if not job.explain:
        return predictor, None
    from crackxai.xai import registry

    return predictor, registry.create(job.explain, model=model, predictor=predictor,
                                      layer=job.layer, **job.explain_settings)


class PhotoWorker:
    """One Ray actor: loads the model and builds its tools once, then inspects one
    {"id", "name", "path"} photo per call and returns the Photo under its id."""

    def __init__(self, job: InspectJob):
        from crackxai.models.io import load_model

        model = load_model(job.model_path)
        self.job = job
        self.predictor, self.explainer = make_tools(model, job)
        self.ood = ood_check(job.model_path, model, job.batch_size)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        j = self.job
        ids = np.asarray(batch["id"], np.int64)
        photos = np.empty(len(ids), dtype=object)
        for i, (name, path) in enumerate(zip(batch["name"], batch["path"], strict=True)):
            (photos[i],) = inspect_stream([(str(name), Path(str(path)))], self.predictor,
                                          j.positive, j.tile, j.stride, j.threshold,
                                          self.explainer, self.ood)
        return {"id": ids, "photo": photos}


def ray_photos(job: InspectJob, files: list[tuple[str, Path]], address: str | None,
               num_actors: int) -> Iterator[Photo]:
    """The files inspected by a pool of `num_actors` PhotoWorker actors on the cluster at
    `address` (None: a private local one), yielded in the order of `files`."""
    from crackxai.core.ray_pool import imap_in_order, ray_cluster

    items = [{"id": i, "name": name, "path": str(path)} for i, (name, path) in enumerate(files)]
    with ray_cluster(address, option=RAY_OPTION) as ray:
        for row in imap_in_order(ray, PhotoWorker, {"job": job}, items, "id", num_actors):
            yield replace(row["photo"], path=files[int(row["id"])][1])


def warn_if_padded(photo: Photo) -> None:
    t = photo.tiling
    if t is not None and t.padded:
        logger.warning(f"{photo.name} is {t.width}x{t.height}, smaller than one {t.tile}x{t.tile} "
                       f"tile: padded (mirrored) to {t.padded_width}x{t.padded_height}, not "
                       "stretched; a crack near its border is seen twice in the padding, so read "
                       "its score with care.")


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------


def photo_record(photo: Photo, stem: str, threshold: float, explain: str | None,
                 model: str) -> dict[str, Any]:
    """The per-photo JSON."""
    t = photo.tiling
    ood = photo.out_of_distribution
    return {
        "photo": photo.name, "file": str(photo.path), "model": model,
        "width": t.width, "height": t.height, "padded": t.padded,
        "tile": t.tile, "stride": t.stride, "grid": list(t.grid), "threshold": threshold,
        "crack_score": round(photo.score, 4),
        "flagged_tiles": int(np.count_nonzero(photo.probabilities >= threshold)),
        "tiles": [{"box": box, "p": round(float(q), 4),
                   **({} if ood is None else {"out_of_distribution": bool(ood[i])})}
                  for i, (box, q) in enumerate(zip(t.boxes().tolist(), photo.probabilities,
                                                   strict=True))],
        "regions": photo.regions, "explain": explain, "overlay": f"{stem}.png",
        "out_of_distribution_tiles": None if ood is None else int(np.count_nonzero(ood)),
    }


def summary_row(photo: Photo, stem: str, threshold: float) -> dict[str, Any]:
    if photo.error:
        return {**dict.fromkeys(SUMMARY_COLUMNS, ""), "photo": photo.name, "status": "error",
                "error": photo.error}
    t = photo.tiling
    return {"photo": photo.name, "status": "ok", "crack_score": round(photo.score, 4),
            "flagged_tiles": int(np.count_nonzero(photo.probabilities >= threshold)),
            "tiles": len(t), "regions": len(photo.regions), "width": t.width, "height": t.height,
            "padded": t.padded, "overlay": f"{stem}.png", "json": f"{stem}.json", "error": ""}


def write_photo(out: Path, photo: Photo, stem: str, record: dict[str, Any]) -> None:
    from crackxai.xai.render import save_png

    heat = photo.heat if photo.heat is not None else photo.probability_map
    save_png(out / f"{stem}.png", overlay(photo.image, heat, photo.regions))
    write_json(out / f"{stem}.json", record)


def sort_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Highest crack score first, unreadable photos last, ties by name."""
    return sorted(rows, key=lambda r: (r["status"] != "ok",
                                       -(r["crack_score"] if r["status"] == "ok" else 0.0),
                                       r["photo"]))


def write_summary(out: Path, rows: list[dict[str, Any]], **page: Any) -> None:
    with atomic_path(out / "summary.csv") as tmp:
        pd.DataFrame(rows, columns=SUMMARY_COLUMNS).to_csv(tmp, index=False)
    write_text(out / "index.html", summary_html(rows, **page))


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def check_options(tile: int, stride: int | None, threshold: float,
                  batch_size: int | None, num_actors: int | None = None) -> None:
    if tile < 1:
        raise CrackxaiError(f"--tile {tile} must be a positive number of pixels.")
    if stride is not None and not 1 <= stride <= tile:
        raise CrackxaiError(f"--stride {stride} must be between 1 and --tile {tile} (a larger "
                            "stride would leave pixels between the tiles unseen).")
    if not 0.0 <= threshold <= 1.0:
        raise CrackxaiError(f"--threshold {threshold} is outside [0, 1].")
    if batch_size is not None and batch_size < 1:
        raise CrackxaiError(f"--batch-size {batch_size} must be a positive integer.")
    if num_actors is not None and num_actors < 1:
        raise CrackxaiError(f"--num-actors {num_actors} must be a positive integer.")


def inspect(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run the inspection of `args` (parse_args); returns the summary rows, sorted."""
    from crackxai.config import explainer_settings, load_config

    check_options(args.tile, args.stride, args.threshold, args.batch_size, args.num_actors)
    stride = args.stride or args.tile
    explain = gradient_cam(args.explain) if args.explain else None
    files = list_photos(args.paths, exclude=args.out)  # before the model: bad input fails fast
    cfg = load_config([])
    runner = args.runner or cfg.explain.runner
    if runner == "ray":
        from crackxai.core.ray_pool import import_ray

        import_ray(RAY_OPTION)  # fails fast, before the model is loaded
    model, model_path, classes = load_inspection_model(args.model, args.uri)
    positive = positive_index(classes, None, "--positive-class") if len(classes) > 1 else 0
    job = InspectJob(model_path, positive, args.tile, stride, args.threshold,
                     args.batch_size or cfg.evaluate.batch_size, explain,
                     args.layer or cfg.explain.layer,
                     explainer_settings(cfg, explain) if explain else {})
    predictor, explainer = make_tools(model, job)  # the explainer checks the layer here
    h, w = model.input_shape[1:3]
    log(STAGE, f"{len(files)} file(s); {args.tile} px tiles every {stride} px, each resized to "
               f"{w}x{h}; crack class '{classes[positive]}'; model {args.model}"
               + (f"; {explain} on layer {explainer.layer}" if explainer else ""))
    if runner == "ray":
        num_actors = args.num_actors or cfg.explain.ray.num_actors
        address = args.ray_address or cfg.explain.ray.address
        log(STAGE, f"runner ray: {num_actors} actor(s) on "
                   + (f"the cluster at {address}" if address else "a private local cluster"))
        photos = ray_photos(job, files, address, num_actors)
    else:
        photos = inspect_photos(files, predictor, positive, args.tile, stride, args.threshold,
                                explainer, model_path)

    out: Path = args.out
    stems = iter(output_stems([name for name, _ in files]))  # photos come back in file order
    rows: list[dict[str, Any]] = []
    n_tiles, start = 0, time.perf_counter()
    bar = tqdm(total=len(files), unit="photo", desc="inspect",
               disable=args.quiet or not sys.stderr.isatty())
    with bar:
        for photo in photos:
            stem = next(stems)
            warn_if_padded(photo)
            if not photo.error:
                write_photo(out, photo, stem,
                            photo_record(photo, stem, args.threshold, explain, args.model))
                n_tiles += len(photo.tiling)
            rows.append(summary_row(photo, stem, args.threshold))
            bar.update()
            if bar.disable and not args.quiet:
                what = (f"error: {photo.error}" if photo.error else
                        f"crack score {photo.score:.3f}, {len(photo.regions)} region(s)")
                log(STAGE, f"[{len(rows)}/{len(files)}] {photo.name}: {what}")
    seconds = time.perf_counter() - start
    rows = sort_rows(rows)
    write_summary(out, rows, model=args.model, tile=args.tile, stride=stride,
                  threshold=args.threshold, explain=explain)
    errors = [r for r in rows if r["status"] != "ok"]
    log(STAGE, f"{len(rows) - len(errors)} photo(s), {n_tiles} tiles in {seconds:.1f} s "
               f"({n_tiles / max(seconds, 1e-9):.1f} tiles/s); {len(errors)} unreadable; wrote "
               f"{out}/summary.csv, index.html and a .png + .json per photo")
    if errors:
        logger.warning(f"{len(errors)} file(s) could not be inspected, e.g. {errors[0]['photo']} "
                       f"({errors[0]['error']}); listed in {out / 'summary.csv'}")
    if len(errors) == len(rows):
        raise DataError(f"None of the {len(rows)} file(s) could be read as a photo (e.g. "
                        f"{errors[0]['photo']}: {errors[0]['error']}). Give JPEG, PNG, TIFF, ... "
                        "photos that OpenCV decodes.")
    return rows


@command(STAGE)
def main(argv: list[str] | None = None) -> None:
    inspect(parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
