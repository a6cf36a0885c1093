"""Procedural concrete surfaces with and without cracks, each crack with a pixel-exact mask.

The embedded default dataset (`data=synthetic`): no download, deterministic for a seed.

Every image starts as the same kind of background, whatever its class: light grey-beige concrete
with multi-scale mottling, fine grain, aggregate speckle, pores, stains, an illumination gradient,
sometimes a soft shadow and sometimes a straight formwork joint (full-span, constant width, low
contrast: clearly not a crack). A `Positive` image then gets one or two thin, dark, meandering,
jagged cracks with branches, drawn as a binary mask that is darkened *only inside the mask* (deeper
= darker), so the mask is exactly the set of crack pixels. A `Negative` image gets nothing more.

Global statistics must not give the class away (a crack darkens the image and raises its
contrast), so after drawing the crack each channel is mapped back, by one affine map, to the mean
and standard deviation it had before. The map preserves the crack-to-texture contrast ratio; per
image mean/std per channel then have the same distribution in both classes.

`difficulty` in [0, 1] scales crack width, length and contrast down and texture noise up: at 0.5 a
typical crack is 2-6 px wide at 227 px and clearly darker than the texture (visible after a resize
to 64 px); at 1.0 cracks are hairline, short and faint.

Layout written by `write_dataset(out_dir, ...)`:

    <out_dir>/Negative/00001.jpg ...
    <out_dir>/Positive/00001.jpg ...
    <out_dir>/_masks/Positive/00001.png   uint8, 255 = crack pixel, 0 elsewhere (same size as image)

Masks live under `_masks/` (not a class folder). Negatives have no mask. Each image is rendered
from its own `np.random.default_rng([seed, label, index])`, so files do not depend on order or
on how many images are drawn.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from crackxai.data.manifest import Row
from crackxai.data.sources import SourceOptions

logger = logging.getLogger(__name__)
CLASSES = ("Negative", "Positive")  # sorted: index 1 = crack, as in the real dataset
MASK_DIR = "_masks"
JPEG_QUALITY = 92
REF_SIZE = 227  # geometric parameters below are in pixels at this size


@dataclass
class Sample:
    path: str  # relative to the output folder, POSIX
    label: str
    size: int  # bytes
    sha256: str
    mask: str  # relative path of the mask, "" when none


def _lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


def _uniform_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Zero-mean, unit-std white noise (uniform: several times faster to draw than normal)."""
    return (rng.random(shape, dtype=np.float32) - 0.5) * np.float32(12**0.5)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Roughly unit-std noise with features about size/cells pixels wide (bicubic upsampling)."""
    grid = _uniform_noise(rng, (cells + 1, cells + 1)) * np.float32(1.2)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)


def _fine_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Unit-std noise blurred by sigma pixels (grain)."""
    out = cv2.GaussianBlur(_uniform_noise(rng, (size, size)), (0, 0), sigma)
    return out * np.float32(2 * np.sqrt(np.pi) * sigma)  # undo the blur's variance loss


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    return xx, yy


def _low_frequency(rng: np.random.Generator, size: int) -> np.ndarray:
    """Mottling, stains, illumination gradient and shadow: composed at 1/4 size, then upsampled."""
    n = max(8, size // 4)
    xx, yy = _grid(n)
    low = np.full((n, n), rng.uniform(130, 205), np.float32)
    for cells, lo, hi in ((3, 2, 9), (7, 1.5, 6), (16, 1, 4)):
        low += np.float32(rng.uniform(lo, hi)) * _smooth_noise(rng, n, cells)
    if rng.random() < 0.6:  # damp (dark) or light stain with soft edges
        blob = _smooth_noise(rng, n, int(rng.integers(2, 6)))
        low += np.float32(rng.uniform(-30, 15)) * np.clip((blob - np.float32(rng.uniform(0.2, 1.0))) * 2, 0, 1)
    a = rng.uniform(0, 2 * np.pi)  # illumination gradient
    low += np.float32(rng.uniform(5, 60)) * (np.float32(np.cos(a)) * xx + np.float32(np.sin(a)) * yy)
    if rng.random() < 0.3:  # soft shadow over part of the surface
        a = rng.uniform(0, 2 * np.pi)
        side = (np.cos(a) * xx + np.sin(a) * yy > rng.uniform(-0.3, 0.3)).astype(np.float32)
        edge = cv2.GaussianBlur(side, (0, 0), rng.uniform(0.5, 3) * n / 57)
        low *= 1 - np.float32(rng.uniform(0.1, 0.35)) * edge
    return cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)


def _background(rng: np.random.Generator, size: int, difficulty: float) -> np.ndarray:
    """Concrete-like surface without cracks: float32 (3, H, W) RGB planes, about 0-255."""
    s = size / REF_SIZE
    noise_gain = _lerp(0.75, 1.5, difficulty)
    gray = _low_frequency(rng, size)

    # Fine texture: grain at pixel scale; its extremes become light/dark sand grains (speckle).
    grain = _fine_noise(rng, size, 0.6 * s + 0.2)
    gray += np.float32(noise_gain * rng.uniform(2.5, 6.5)) * grain
    gray += np.float32(rng.uniform(5, 20)) * (grain > 2.3) - np.float32(rng.uniform(5, 20)) * (grain < -2.4)
    gray += np.float32(rng.uniform(1, 4)) * _smooth_noise(rng, size, int(40 * s) + 2)

    # Pores / air voids: small dark roundish pits.
    n = int(rng.integers(3, 40) * noise_gain)
    centres = (rng.uniform(0, size, (n, 2)) * 4).astype(int)  # 2 fractional bits (shift=2)
    axes = np.maximum(1, rng.uniform(0.5, 2.4, (n, 2)) * s * 4).astype(int)
    angles, depths = rng.uniform(0, 180, n), rng.uniform(25, 80, n).astype(int)
    pits = np.zeros((size, size), np.uint8)
    for c, ax, ang, dep in zip(centres.tolist(), axes.tolist(), angles.tolist(), depths.tolist(), strict=True):
        cv2.ellipse(pits, c, ax, ang, 0, 360, dep, -1, cv2.LINE_AA, shift=2)
    gray -= pits

    # Formwork joint: a straight, full-span, constant-width, low-contrast line (both classes).
    if rng.random() < 0.15:
        joint = np.zeros((size, size), np.float32)
        theta = rng.choice([0.0, np.pi / 2]) + rng.uniform(-0.12, 0.12)
        c = rng.uniform(0.15, 0.85, 2) * size
        d = np.array([np.cos(theta), np.sin(theta)]) * 2 * size
        p0, p1 = (c - d).astype(int), (c + d).astype(int)
        cv2.line(joint, (int(p0[0]), int(p0[1])), (int(p1[0]), int(p1[1])), 1.0,
                 max(1, round(rng.uniform(1, 3) * s)), cv2.LINE_AA)
        gray -= np.float32(rng.uniform(8, 22)) * cv2.GaussianBlur(joint, (0, 0), 0.6)

    # Slight optical blur of the surface (cracks are drawn afterwards, only inside their mask).
    gray = cv2.GaussianBlur(gray, (0, 0), rng.uniform(0.3, 0.7))

    # Colour: a warm beige to cool grey tint. Channel-first (3, H, W) from here on: numpy is
    # much faster on whole planes than on interleaved pixels.
    t = rng.uniform(-0.4, 1.2)
    tint = np.array([1 + 0.05 * t, 1 + 0.015 * t, 1 - 0.06 * t], np.float32)  # RGB
    return gray[None] * tint[:, None, None]


def _polyline(rng: np.random.Generator, start: np.ndarray, heading: float, length: float,
              step: float) -> np.ndarray:
    """Meandering, jagged path: a mean-reverting heading drift plus per-step zigzag."""
    n = max(2, int(length / step))
    drift, a = np.empty(n), 0.0
    for k, kick in enumerate(rng.normal(0, 0.12, n).tolist()):  # AR(1): slowly varying heading
        a = 0.93 * a + kick
        drift[k] = a
    angles = heading + drift + rng.normal(0, 0.35, n)
    steps = step * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return start + np.vstack([[0, 0], np.cumsum(steps, axis=0)])


def _widths(rng: np.random.Generator, n: int, w0: float) -> np.ndarray:
    """Width along a path: smooth variation, tapering towards the free end."""
    wobble = np.exp(np.convolve(rng.normal(0, 0.5, n + 7), np.ones(8) / 8, "valid"))
    taper = np.clip(np.linspace(1.0, 0.0, n) / 0.3, 0.3, 1.0)
    return w0 * wobble * taper


def _draw(mask: np.ndarray, core: np.ndarray, pts: np.ndarray, widths: np.ndarray) -> None:
    """Stroke the path into mask with its varying width, and 1 px wide into core."""
    q = np.round(pts * 4).astype(np.int32)  # 2 fractional bits (shift=2)
    cv2.polylines(core, [q], False, 255, 1, cv2.LINE_8, shift=2)
    thick = np.maximum(1, np.rint(widths[: len(q) - 1])).astype(int)
    cuts = np.flatnonzero(np.diff(thick)) + 1  # runs of equal thickness: one call each
    for a, b in zip(np.r_[0, cuts].tolist(), np.r_[cuts, len(thick)].tolist(), strict=True):
        cv2.polylines(mask, [q[a : b + 1]], False, 255, int(thick[a]), cv2.LINE_8, shift=2)


def _crack_mask(rng: np.random.Generator, size: int, difficulty: float) -> np.ndarray:
    """Binary (0/255) mask of one or two branching cracks."""
    s = size / REF_SIZE
    mask = np.zeros((size, size), np.uint8)
    core = np.zeros((size, size), np.uint8)
    step = 3.0 * s
    for _ in range(1 + int(rng.random() < 0.3)):
        w0 = _lerp(7.5, 1.2, difficulty) * rng.uniform(0.65, 1.35) * s
        length = _lerp(1.5, 0.5, difficulty) * size * rng.uniform(0.7, 1.2)
        centre = rng.uniform(0.2, 0.8, 2) * size
        heading = rng.uniform(0, np.pi)
        split = rng.uniform(0.3, 0.7)
        halves = []
        for turn, frac in ((0.0, split), (np.pi, 1 - split)):  # grow both ways from the centre
            pts = _polyline(rng, centre, heading + turn, length * frac, step)
            halves.append((pts, _widths(rng, len(pts), w0)))
            _draw(mask, core, *halves[-1])
        for _ in range(rng.poisson(1.2)):  # branches: thinner, shorter, veering off
            pts, widths = halves[int(rng.integers(2))]
            i = int(rng.integers(len(pts) // 5, max(len(pts) // 5 + 1, 4 * len(pts) // 5)))
            d = pts[min(i + 1, len(pts) - 1)] - pts[max(i - 1, 0)]
            ang = np.arctan2(d[1], d[0]) + rng.choice([-1, 1]) * rng.uniform(0.4, 1.1)
            sub = _polyline(rng, pts[i], ang, length * rng.uniform(0.15, 0.45), step)
            _draw(mask, core, sub, _widths(rng, len(sub), widths[i] * rng.uniform(0.4, 0.75)))
    # Rough, irregular edges near the strokes (within their bounding box; the 1-px core keeps
    # hairlines connected).
    x, y, w, h = cv2.boundingRect(mask)
    x0, y0, x1, y1 = max(0, x - 3), max(0, y - 3), min(size, x + w + 3), min(size, y + h + 3)
    box = mask[y0:y1, x0:x1]
    soft = cv2.GaussianBlur(box.astype(np.float32) / 255, (0, 0), 0.8 * s)
    grain = cv2.GaussianBlur(_uniform_noise(rng, soft.shape), (0, 0), s)
    rough = (soft + np.float32(0.25 * 2 * np.sqrt(np.pi) * s) * grain > 0.5) & (soft > 0.1)
    box[...] = np.where(rough | (core[y0:y1, x0:x1] > 0), 255, 0)
    return mask


def _add_crack(rng: np.random.Generator, rgb: np.ndarray, mask: np.ndarray,
               difficulty: float) -> np.ndarray:
    """A copy of rgb with the mask pixels (and only those) darkened towards a dark grey."""
    inside = (mask > 0).astype(np.uint8)
    depth = cv2.distanceTransform(inside, cv2.DIST_L2, 3)
    ys, xs = np.nonzero(inside)
    contrast = min(0.97, _lerp(1.0, 0.3, difficulty**1.6) * rng.uniform(0.85, 1.1))
    # Edges half-dark, deeper pixels darker, with a little debris.
    debris = 1 - 0.15 * rng.random(len(ys), dtype=np.float32)
    alpha = contrast * np.clip(0.25 + 0.35 * depth[ys, xs], 0, 1) * debris
    dark = (rng.uniform(10, 40) + rng.normal(0, 1, 3)).astype(np.float32)[:, None]
    out = rgb.copy()
    out[:, ys, xs] = rgb[:, ys, xs] * (1 - alpha) + dark * alpha
    return out


def _moments(planes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = planes.reshape(len(planes), -1)
    return flat.mean(axis=1, keepdims=True)[..., None], flat.std(axis=1, keepdims=True)[..., None]


def render(rng: np.random.Generator, crack: bool, size: int = REF_SIZE,
           difficulty: float = 0.5) -> tuple[np.ndarray, np.ndarray | None]:
    """One RGB uint8 image (size, size, 3) and its 0/255 crack mask (None without a crack).

    Both classes run the same steps: the crack is drawn either way, and a crack-free image keeps
    its surface but takes the per-channel mean and std the cracked one would have had.
    """
    surface = _background(rng, size, difficulty)
    mask = _crack_mask(rng, size, difficulty)
    cracked = _add_crack(rng, surface, mask, difficulty)
    if crack:
        rgb = cracked
    else:
        (m0, s0), (m1, s1) = _moments(surface), _moments(cracked)
        rgb, mask = (surface - m0) * (s1 / (s0 + 1e-6)) + m1, None
    # Sensor noise last, then round to uint8 and interleave the channels.
    rgb += np.float32(rng.uniform(0.6, 2.0)) * _uniform_noise(rng, (size, size)) + np.float32(0.5)
    planes = np.clip(rgb, 0, 255, out=rgb).astype(np.uint8)
    return cv2.merge(list(planes)), mask


def _encode(array: np.ndarray, ext: str, params: list[int]) -> bytes:
    ok, buf = cv2.imencode(ext, array, params)
    if not ok:  # pragma: no cover - OpenCV always encodes uint8 arrays
        raise RuntimeError(f"OpenCV could not encode {ext}")
    return buf.tobytes()


def _write(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def encode(seed: int, label: int, index: int, size: int = REF_SIZE,
           difficulty: float = 0.5) -> tuple[bytes, bytes | None]:
    """Image `index` of class `label` as JPEG bytes, and its mask as PNG bytes (None if no crack)."""
    rgb, mask = render(np.random.default_rng([seed, label, index]), bool(label), size, difficulty)
    jpg = _encode(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), ".jpg", [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    png = None if mask is None else _encode(mask, ".png", [cv2.IMWRITE_PNG_COMPRESSION, 1])
    return jpg, png


def _encode_job(job: tuple[int, int, int, int, float]) -> tuple[bytes, bytes | None]:
    return encode(*job)


def write_dataset(out_dir: str | Path, n_per_class: int, size: int = REF_SIZE,
                  difficulty: float = 0.5, seed: int = 42, workers: int | None = None,
                  progress: bool = True) -> list[Sample]:
    """Render n_per_class images per class into out_dir (layout in the module docstring).

    `workers` processes render in parallel (default: one per CPU but one, at most 8, and none
    on 1-2 CPUs; small sets always run in-process). The files are the same whatever the number of workers.
    """
    out_dir = Path(out_dir)
    jobs = [(seed, label, i, size, difficulty)
            for label in range(len(CLASSES)) for i in range(1, n_per_class + 1)]
    cpus = os.cpu_count() or 1
    workers = workers or (min(cpus - 1, 8) if cpus > 2 else 1)
    with contextlib.ExitStack() as stack:
        if workers > 1 and len(jobs) >= 256:  # below that, starting processes costs more
            ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no inherited state
            pool = stack.enter_context(ProcessPoolExecutor(workers, mp_context=ctx))
            results = pool.map(_encode_job, jobs, chunksize=16)
        else:
            results = map(_encode_job, jobs)
        samples = []
        bar = tqdm(zip(jobs, results, strict=True), total=len(jobs), desc="synthetic",
                   unit="img", disable=not progress)
        for (_, label, i, _, _), (jpg, png) in bar:
            name = CLASSES[label]
            rel, mask_rel = f"{name}/{i:05d}.jpg", ""
            if png is not None:
                mask_rel = f"{MASK_DIR}/{name}/{i:05d}.png"
                _write(out_dir / mask_rel, png)
            samples.append(Sample(rel, name, len(jpg), _write(out_dir / rel, jpg), mask_rel))
    return samples


def fetch(out: Path, scratch: Path, opts: SourceOptions) -> list[Row]:
    """The `synthetic` source: `opts.n_per_class` images per class (capped by limit_per_class)."""
    n = min(opts.n_per_class, opts.limit_per_class or opts.n_per_class)
    logger.info(f"generating {n} images per class, {opts.image_size}x{opts.image_size}, "
                f"difficulty={opts.difficulty}, seed={opts.seed}")
    samples = write_dataset(out, n, opts.image_size, opts.difficulty, opts.seed)
    return [{"path": s.path, "class": s.label, "bytes": s.size, "sha256": s.sha256,
             "source": "synthetic", "mask": s.mask} for s in samples]


# ---------------------------------------------------------------------------------------------
# Large surfaces: a whole "inspection photo" whose 227 px tiles look like the training patches
# ---------------------------------------------------------------------------------------------
# The patch functions above tie every scale to the image side (s = size / REF_SIZE), so a 1024 px
# image from them would be a blown-up patch (4.5x coarser grain, 4.5x wider cracks). A surface
# keeps the patch scale instead: pixel-sized features (grain, pores, crack width) as at 227 px,
# and counts of texture features (noise cells, pores) per REF_SIZE x REF_SIZE area.

SURFACE_STREAM = 2  # rng stream [seed, SURFACE_STREAM]: apart from the patch streams (label 0, 1)


def _smooth_noise_hw(rng: np.random.Generator, height: int, width: int,
                     cells_per_ref: float, ref: float) -> np.ndarray:
    """`_smooth_noise` on a rectangle, with features ref/cells_per_ref pixels wide."""
    cy = max(1, round(cells_per_ref * height / ref))
    cx = max(1, round(cells_per_ref * width / ref))
    grid = _uniform_noise(rng, (cy + 1, cx + 1)) * np.float32(1.2)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)


def _surface_background(rng: np.random.Generator, height: int, width: int,
                        difficulty: float) -> np.ndarray:
    """`_background`'s recipe at patch scale on a height x width surface: (3, H, W) float32."""
    noise_gain = _lerp(0.75, 1.5, difficulty)
    patches = height * width / REF_SIZE**2  # how many training patches the surface holds
    # Low frequencies at 1/4 size, as in _low_frequency (a patch is REF_SIZE / 4 cells there).
    lh, lw, lref = max(8, height // 4), max(8, width // 4), REF_SIZE / 4
    low = np.full((lh, lw), rng.uniform(130, 205), np.float32)
    for cells, lo, hi in ((3, 2, 9), (7, 1.5, 6), (16, 1, 4)):
        low += np.float32(rng.uniform(lo, hi)) * _smooth_noise_hw(rng, lh, lw, cells, lref)
    for _ in range(rng.poisson(0.6 * patches)):  # stains, each about a patch across
        blob = _smooth_noise_hw(rng, lh, lw, rng.uniform(2, 6), lref)
        low += np.float32(rng.uniform(-30, 15)) * np.clip(
            (blob - np.float32(rng.uniform(0.2, 1.0))) * 2, 0, 1) / np.float32(
            max(1.0, patches**0.5))  # overlapping stains would add up: keep the patch's range
    yy, xx = np.mgrid[0:lh, 0:lw].astype(np.float32)
    yy, xx = yy / max(lh, lw) - 0.5, xx / max(lh, lw) - 0.5
    a = rng.uniform(0, 2 * np.pi)  # illumination gradient over the whole photo
    low += np.float32(rng.uniform(5, 60)) * (np.float32(np.cos(a)) * xx + np.float32(np.sin(a)) * yy)
    gray = cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC)

    grain = cv2.GaussianBlur(_uniform_noise(rng, (height, width)), (0, 0), 0.8)
    grain *= np.float32(2 * np.sqrt(np.pi) * 0.8)  # unit std again, as in _fine_noise
    gray += np.float32(noise_gain * rng.uniform(2.5, 6.5)) * grain
    gray += np.float32(rng.uniform(5, 20)) * (grain > 2.3) - np.float32(rng.uniform(5, 20)) * (grain < -2.4)
    gray += np.float32(rng.uniform(1, 4)) * _smooth_noise_hw(rng, height, width, 42, REF_SIZE)

    n = int(rng.integers(3, 40) * noise_gain * patches)  # pores per patch, as in _background
    centres = (rng.uniform(0, 1, (n, 2)) * [width, height] * 4).astype(int)
    axes = np.maximum(1, rng.uniform(0.5, 2.4, (n, 2)) * 4).astype(int)
    angles, depths = rng.uniform(0, 180, n), rng.uniform(25, 80, n).astype(int)
    pits = np.zeros((height, width), np.uint8)
    for c, ax, ang, dep in zip(centres.tolist(), axes.tolist(), angles.tolist(), depths.tolist(), strict=True):
        cv2.ellipse(pits, c, ax, ang, 0, 360, dep, -1, cv2.LINE_AA, shift=2)
    gray -= pits
    gray = cv2.GaussianBlur(gray, (0, 0), rng.uniform(0.3, 0.7))
    t = rng.uniform(-0.4, 1.2)
    tint = np.array([1 + 0.05 * t, 1 + 0.015 * t, 1 - 0.06 * t], np.float32)  # RGB
    return gray[None] * tint[:, None, None]


def _surface_crack_mask(rng: np.random.Generator, height: int, width: int, cracks: int,
                        difficulty: float) -> np.ndarray:
    """0/255 mask of `cracks` branching cracks drawn as `_crack_mask` draws them at 227 px
    (same width, step and jaggedness), each about 0.5-0.8 of the shorter side long."""
    mask = np.zeros((height, width), np.uint8)
    core = np.zeros((height, width), np.uint8)
    for _ in range(cracks):
        w0 = _lerp(7.5, 1.2, difficulty) * rng.uniform(0.65, 1.35)
        length = min(height, width) * rng.uniform(0.5, 0.8)
        centre = rng.uniform(0.3, 0.7, 2) * [width, height]
        heading, split = rng.uniform(0, np.pi), rng.uniform(0.3, 0.7)
        halves = []
        for turn, frac in ((0.0, split), (np.pi, 1 - split)):
            pts = _polyline(rng, centre, heading + turn, length * frac, 3.0)
            halves.append((pts, _widths(rng, len(pts), w0)))
            _draw(mask, core, *halves[-1])
        for _ in range(rng.poisson(1.2)):
            pts, widths = halves[int(rng.integers(2))]
            i = int(rng.integers(len(pts) // 5, max(len(pts) // 5 + 1, 4 * len(pts) // 5)))
            d = pts[min(i + 1, len(pts) - 1)] - pts[max(i - 1, 0)]
            ang = np.arctan2(d[1], d[0]) + rng.choice([-1, 1]) * rng.uniform(0.4, 1.1)
            sub = _polyline(rng, pts[i], ang, REF_SIZE * rng.uniform(0.15, 0.45), 3.0)
            _draw(mask, core, sub, _widths(rng, len(sub), widths[i] * rng.uniform(0.4, 0.75)))
    # Rough edges as in _crack_mask, at s = 1.
    soft = cv2.GaussianBlur(mask.astype(np.float32) / 255, (0, 0), 0.8)
    grain = cv2.GaussianBlur(_uniform_noise(rng, soft.shape), (0, 0), 1.0)
    rough = (soft + np.float32(0.25 * 2 * np.sqrt(np.pi)) * grain > 0.5) & (soft > 0.1)
    return np.where(rough | (core > 0), 255, 0).astype(np.uint8)


def render_surface(width: int, height: int, seed: int = 0, cracks: int = 1,
                   difficulty: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """A large concrete surface with `cracks` cracks at the training patches' scale: RGB uint8
    (height, width, 3) and its 0/255 crack mask (height, width), deterministic for the seed.

    A 227 px crop of it looks like a training patch (same grain, pores and crack width), so
    tiling it at 227 px and classifying the tiles is what the model was trained for."""
    if width < 1 or height < 1 or cracks < 0:
        raise ValueError(f"render_surface: {width}x{height} with {cracks} crack(s)")
    rng = np.random.default_rng([seed, SURFACE_STREAM])
    planes = _surface_background(rng, height, width, difficulty)
    mask = _surface_crack_mask(rng, height, width, cracks, difficulty)
    if cracks:
        planes = _add_crack(rng, planes, mask, difficulty)
    planes += np.float32(rng.uniform(0.6, 2.0)) * _uniform_noise(rng, (height, width)) + np.float32(0.5)
    return cv2.merge(list(np.clip(planes, 0, 255).astype(np.uint8))), mask
