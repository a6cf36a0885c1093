"""Seconds per image per explanation method, and the shared Predictor's speed-up over the
reference usage at identical settings (same masker, max_evals, batch sizes, samples and seeds).

    .venv/bin/python benchmarks/explain_speed.py [--images 2] [--methods shap,lime,...]
        [--max-evals 500] [--num-samples 1000] [--repeats 1]

Model: models/model.keras when present (run from the project root), else the pipeline's 64x64
ResNet50 with random weights. Images: synthetic concrete surfaces at the model's input size.

Reference, as in the notebooks this replaces:
  shap  shap.Explainer(f, masker) with f = lambda x: model(x, training=False).numpy(), an eager
        call per batch of 50. (The notebooks' literal `model(x)` runs the random augmentation
        layers of a model that has them, making the attributions random; the crackxai model has
        none, see crackxai/models/predictor.py.)
  lime  explain_instance(..., classifier_fn=model.predict, batch_size=10), lime's default.
Ours: the Explainer from crackxai.xai.registry through the shared Predictor (lime with
explain.lime.batch_size=50). The two runs must give the same attributions (np.allclose).
The CAM methods call tf-keras-vis either way: their seconds per image only.

Timings are medians over images (and --repeats) after one untimed warm-up per path.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from crackxai.config import default_config  # noqa: E402
from crackxai.core.paths import MODEL_FILE  # noqa: E402
from crackxai.data.synthetic import render  # noqa: E402
from crackxai.models.io import load_model
from crackxai.models.predictor import Predictor  # noqa: E402
from crackxai.models.resnet import build_model  # noqa: E402
from crackxai.xai import registry  # noqa: E402

SEED = 42


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=2, help="images timed per method (default 2)")
    p.add_argument("--methods", default=",".join(registry.NAMES))
    p.add_argument("--max-evals", type=int, default=500, help="SHAP max_evals (default 500)")
    p.add_argument("--num-samples", type=int, default=1000, help="LIME samples (default 1000)")
    p.add_argument("--repeats", type=int, default=1, help="timed passes over the images")
    return p.parse_args()


def pipeline_model(images: np.ndarray) -> tuple[keras.Model, str]:
    if MODEL_FILE.is_file():
        return load_model(MODEL_FILE), str(MODEL_FILE)
    keras.utils.set_random_seed(SEED)
    model = build_model(2, int(images.shape[1]), weights=None)
    # A random head barely reacts to masking (p1 moves by ~1e-4), so float32 rounding (~6e-8
    # between model.predict and a graph) would be a visible part of LIME's regression targets.
    # Make every feature map evidence for class 1, scaled to a logit lead of ~2 (p1 ~ 0.9):
    # the explanations then have signal to compare, as a trained model's do.
    head = model.get_layer("predictions")
    kernel = np.abs(keras.ops.convert_to_numpy(head.kernel)) * np.array([-1.0, 1.0], np.float32)
    features = keras.Model(model.inputs, model.get_layer("avg_pool").output).predict(
        images.astype(np.float32), verbose=0)
    head.kernel.assign(kernel * 2.0 / (features @ (kernel[:, 1] - kernel[:, 0])).mean())
    return model, "random-init crackxai ResNet50 (head rescaled, see above), 64x64, 2 classes"


def timed(fn, *args):  # noqa: ANN001, ANN201
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def same(ours: np.ndarray, ref: np.ndarray) -> tuple[bool, float, float]:
    """allclose at 1e-4 of the map's scale; the largest difference relative to it; the scale."""
    scale = float(np.abs(ref).max()) or 1.0
    return (bool(np.allclose(ours, ref, rtol=1e-4, atol=1e-4 * scale)),
            float(np.abs(ours - ref).max() / scale), scale)


def main() -> None:
    args = parse_args()
    methods = [m for m in args.methods.split(",") if m]
    size = int(load_model(MODEL_FILE).input_shape[1]) if MODEL_FILE.is_file() else 64
    images = np.stack([render(np.random.default_rng([SEED, i]), crack=i % 2 == 0, size=size)[0]
                       for i in range(args.images + 1)])  # the first one is the warm-up
    model, about = pipeline_model(images)
    cfg = default_config().explain
    cfg.shap.max_evals, cfg.lime.num_samples = args.max_evals, args.num_samples
    predictor = Predictor(model, batch_size=cfg.batch_size)
    targets = predictor(images).argmax(1)

    def build(method: str, predict, **overrides):  # noqa: ANN001, ANN202
        section = getattr(cfg, method, None)  # explain.<method>, if the method has settings
        section = dataclasses.asdict(section) if section is not None else {}
        explainer = registry.create(method, model=model, predictor=predict, seed=SEED,
                                    cam_min_size=cfg.cam_min_size, **{**section, **overrides})
        return lambda im, t: explainer.explain(im[None], [t])[0]

    # the reference paths: the same explainer code, only the model function differs
    def eager(x: np.ndarray) -> np.ndarray:
        return model(x, training=False).numpy()

    def predict(x: np.ndarray) -> np.ndarray:
        return model.predict(x, verbose=0)

    refs = {"shap": build("shap", eager),
            "lime": build("lime", predict, batch_size=10)}  # lime's default batch_size
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"model: {about}; {args.images} image(s) of {size}x{size}; SHAP {cfg.shap.masker} "
          f"max_evals={cfg.shap.max_evals} batch_size={cfg.shap.batch_size}; LIME "
          f"num_samples={cfg.lime.num_samples} (ours batch_size={cfg.lime.batch_size}, "
          f"reference 10); ScoreCAM max_N={cfg.scorecam.max_N}, Faster max_N="
          f"{cfg.faster_scorecam.max_N}; {os.cpu_count()} CPU(s), load average {load:.1f} "
          "(a shared CPU: compare the ratios, not the seconds)", flush=True)
    header = (f"{'method':<16}{'ours s/img':>11}{'evals/img':>10}{'reference s/img':>17}"
              f"{'speed-up':>10}  same maps")
    rows = []
    for method in methods:
        ours = build(method, predictor)
        ours(images[0], targets[0])  # warm-up: imports, tracing, the linear copy
        if method in refs:
            refs[method](images[0], targets[0])
        t_ours, t_ref, checks, evals = [], [], [], []
        for _ in range(args.repeats):
            for im, t in zip(images[1:], targets[1:], strict=True):
                before = predictor.n_evals
                seconds, a = timed(ours, im, t)
                t_ours.append(seconds)
                evals.append(predictor.n_evals - before)
                if method in refs:
                    seconds, b = timed(refs[method], im, t)
                    t_ref.append(seconds)
                    checks.append(same(a, b))
        mine = statistics.median(t_ours)
        if t_ref:
            ref = statistics.median(t_ref)
            ok = all(c[0] for c in checks)
            worst = max(c[1] for c in checks)
            scale = min(c[2] for c in checks)
            row = (f"{method:<16}{mine:>11.2f}{statistics.median(evals):>10.0f}{ref:>17.2f}"
                   f"{ref / mine:>9.2f}x  {'yes' if ok else 'NO'} (max |diff| {worst:.1e} of "
                   f"max |map| {scale:.1e})")
        else:
            row = f"{method:<16}{mine:>11.2f}{statistics.median(evals):>10.0f}{'-':>17}{'-':>10}"
        rows.append(row)
        print(row if len(rows) > 1 else header + "\n" + row, flush=True)
    print("\n" + header + "\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
