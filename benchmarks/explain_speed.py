"""Each explanation method's rate as a fraction of the hardware ceiling, measured in one run.

    .venv/bin/python benchmarks/explain_speed.py [--images 8] [--cam-images 64]
        [--methods shap,lime,...] [--max-evals 500] [--num-samples 1000] [--no-reference]
        [--no-stage]

Model: models/model.keras when present (run from the project root), else the pipeline's 64x64
ResNet50 with random weights (head rescaled so the maps have signal). Images: synthetic concrete
surfaces at the model's input size. Settings: conf/explain/default.yaml (batch size 64).

Per method, one explain() call on all its images, and right before and after it the ceiling
(their mean, so a drifting shared CPU moves both):
  shap, lime, scorecam, faster_scorecam: model evaluations per second (the images through the
      Predictor) over the shared Predictor's images/s on full batches of its batch size;
  gradcam, gradcam_pp: images per second over the bare compiled forward+backward pass
      (crackxai.xai.cam.gradient_pass) on one full batch; --cam-images images (default 64, one
      batch: the CAMs are cheap, and a batch of 8 says more about the set-up than the pass);
  faithfulness: the deletion + insertion curves of --images maps (crackxai.xai.metrics
      faithfulness_batch), images through the Predictor per second over the same ceiling.
Reference (unless --no-reference): the per-image path the explain stage took before, on (up to
8 of) the same images: tf-keras-vis's Gradcam / GradcamPlusPlus called once per image;
shap.Explainer / lime's explain_instance on the Predictor, one image after the other. The
speed-up over it and the largest map difference (relative to the map's largest value).
Stage (unless --no-stage): the explain stage's per-method section, crackxai.xai.scoring
explain_selection (maps, the sanity rerun on a head-randomised copy, faithfulness, localisation,
files), on --images images (the default n_images): seconds per method.

The CPU is shared (the load average is printed): compare the ratios, not the seconds. Column
`ratio` divides wall-clock rates; column `cpu` the same rates per CPU second of this process (the
work a method does per evaluation, whatever share of the cores the others leave it: steadier
than `ratio` under load, but blind to cores a method leaves idle). A method is near the ceiling
when both are.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from crackxai.config import default_config
from crackxai.config.explain import quality_settings  # noqa: E402
from crackxai.core.paths import MODEL_FILE  # noqa: E402
from crackxai.data.synthetic import render  # noqa: E402
from crackxai.models.io import load_model  # noqa: E402
from crackxai.models.predictor import Predictor  # noqa: E402
from crackxai.models.resnet import build_model  # noqa: E402
from crackxai.xai import metrics as EM  # noqa: E402
from crackxai.xai import registry, scoring  # noqa: E402
from crackxai.xai.assess import SANITY_CHUNK, predictors  # noqa: E402
from crackxai.xai.cam import gradient_pass, resolve_layer  # noqa: E402
from crackxai.xai.selection import Selection  # noqa: E402

SEED = 42
GRADIENT = ("gradcam", "gradcam_pp")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=8,
                   help="images per perturbation method and per stage section (default 8)")
    p.add_argument("--cam-images", type=int, default=64,
                   help="images per gradient CAM (default 64, one batch)")
    p.add_argument("--methods", default=",".join(registry.NAMES))
    p.add_argument("--max-evals", type=int, default=500, help="SHAP max_evals (default 500)")
    p.add_argument("--num-samples", type=int, default=1000, help="LIME samples (default 1000)")
    p.add_argument("--no-reference", action="store_true", help="skip the per-image reference")
    p.add_argument("--no-stage", action="store_true", help="skip the stage sections")
    return p.parse_args()


def pipeline_model(images: np.ndarray) -> tuple[keras.Model, str]:
    if MODEL_FILE.is_file():
        return load_model(MODEL_FILE), str(MODEL_FILE)
    keras.utils.set_random_seed(SEED)
    model = build_model(2, int(images.shape[1]), weights=None)
    # A random head barely reacts to masking; make every feature map evidence for class 1,
    # scaled to a logit lead of ~2 (p1 ~ 0.9), so the maps have signal, as a trained model's do.
    head = model.get_layer("predictions")
    kernel = np.abs(keras.ops.convert_to_numpy(head.kernel)) * np.array([-1.0, 1.0], np.float32)
    features = keras.Model(model.inputs, model.get_layer("avg_pool").output).predict(
        images.astype(np.float32), verbose=0)
    head.kernel.assign(kernel * 2.0 / (features @ (kernel[:, 1] - kernel[:, 0])).mean())
    return model, "random-init crackxai ResNet50 (head rescaled, see above), 2 classes"


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def timed_cpu(fn: Callable[[], Any]) -> tuple[np.ndarray, Any]:
    """([wall seconds, this process's CPU seconds], fn())."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return np.array([time.perf_counter() - wall, time.process_time() - cpu]), result


def rate(fn: Callable[[], Any], items: int, repeats: int = 2) -> np.ndarray:
    """[items per wall second, items per CPU second] of fn(), each the best of `repeats` runs
    (the least disturbed by others)."""
    return items / np.min([timed_cpu(fn)[0] for _ in range(repeats)], axis=0)


def max_diff(ours: np.ndarray, ref: np.ndarray) -> str:
    scale = float(np.abs(ref).max()) or 1.0
    return f"{np.abs(ours - ref).max() / scale:.1e}"


def tf_keras_vis_per_image(method: str, model: keras.Model, layer: str
                           ) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """The stage's former Grad-CAM path: a tf-keras-vis call per image on a linear copy."""
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    tool = (Gradcam if method == "gradcam" else GradcamPlusPlus)(
        model, model_modifier=ReplaceToLinear())
    return lambda images, targets: np.concatenate([
        np.asarray(tool(CategoricalScore([int(t)]), images[i:i + 1].astype(np.float32),
                        penultimate_layer=layer, seek_penultimate_conv_layer=False),
                   np.float32).reshape(1, *images.shape[1:3])
        for i, t in enumerate(targets)])


def main() -> None:
    args = parse_args()
    methods = [m for m in args.methods.split(",") if m]
    size = int(load_model(MODEL_FILE).input_shape[1]) if MODEL_FILE.is_file() else 64
    n_all = max(args.images, args.cam_images)
    images = np.stack([render(np.random.default_rng([SEED, i]), crack=i % 2 == 0, size=size)[0]
                       for i in range(n_all)])
    model, about = pipeline_model(images)
    cfg = default_config().explain
    cfg.shap.max_evals, cfg.lime.num_samples = args.max_evals, args.num_samples
    batch = cfg.batch_size
    predictor = Predictor(model, batch_size=batch)
    targets = predictor(images).argmax(1)
    layer = resolve_layer(model, cfg.layer, cfg.cam_min_size)
    full = np.concatenate([images] * (-(-4 * batch // n_all)))[:4 * batch]  # 4 full batches

    def predictor_ceiling() -> np.ndarray:
        return rate(lambda: predictor(full), len(full))

    def gradient_ceiling() -> np.ndarray:
        x, t = full[:batch].astype(np.float32), targets[np.arange(batch) % n_all]
        return rate(lambda: gradient_pass(model, layer, x, t, batch), batch)

    def build(method: str, predict: Any = predictor, mdl: keras.Model = model) -> Any:
        section = getattr(cfg, method, None)  # explain.<method>, if the method has settings
        section = dataclasses.asdict(section) if section is not None else {}
        explainer = registry.create(method, model=mdl, predictor=predict, seed=SEED, layer=layer,
                                    cam_min_size=cfg.cam_min_size, **section)
        explainer.name = method
        return explainer

    predictor_ceiling(), gradient_ceiling()  # warm-up: tracing
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"model: {about}; {size}x{size}; CAM layer {layer}; Predictor batch {batch}; SHAP "
          f"{cfg.shap.masker} max_evals={cfg.shap.max_evals}; LIME num_samples="
          f"{cfg.lime.num_samples}; Score-CAM max_N={cfg.scorecam.max_N}, Faster max_N="
          f"{cfg.faster_scorecam.max_N}; {os.cpu_count()} CPU(s), load average {load:.1f} (a "
          "shared CPU: compare the ratios, not the seconds)", flush=True)
    header = (f"{'method':<16}{'images':>7}{'rate':>9}{'ceiling':>9}{'ratio':>7}{'cpu':>6}  "
              f"{'unit':<13}"
              f"{'per-image ref':>14}{'speed-up':>9}  max|diff|/max|map|")
    print(header, flush=True)
    rows = [header]

    def report(name: str, n: int, value: np.ndarray, ceiling: np.ndarray, unit: str,
               ref: tuple[float, str] | None) -> None:
        """value, ceiling: [per wall second, per CPU second of this process]."""
        extra = (f"{ref[0]:>14.1f}{value[0] / ref[0]:>8.1f}x  {ref[1]}" if ref else
                 f"{'-':>14}{'-':>9}")
        ratio = value / ceiling
        row = (f"{name:<16}{n:>7}{value[0]:>9.1f}{ceiling[0]:>9.1f}{ratio[0]:>7.2f}"
               f"{ratio[1]:>6.2f}  {unit:<13}{extra}")
        rows.append(row)
        print(row, flush=True)

    for method in methods:
        gradient = method in GRADIENT
        n = args.cam_images if gradient else args.images
        x, t = images[:n], targets[:n]
        explainer = build(method)
        explainer.explain(x[:2], t[:2])  # warm-up: imports, tracing
        ceiling_fn = gradient_ceiling if gradient else predictor_ceiling
        before = ceiling_fn()
        evals = predictor.n_evals
        seconds, maps = timed_cpu(lambda e=explainer, x=x, t=t: e.explain(x, t))
        evals = predictor.n_evals - evals
        ceiling = (before + ceiling_fn()) / 2
        value = n / seconds if gradient else evals / seconds
        ref = None
        if not args.no_reference and method in (*GRADIENT, "shap", "lime"):
            if gradient:
                per_image = tf_keras_vis_per_image(method, model, layer)
                per_image(x[:1], t[:1])  # warm-up: the clone
            elif method == "shap":  # shap.Explainer on the predictor, one image at a time
                per_image = lambda x, t, e=explainer: np.stack(  # noqa: E731
                    [e.map_of(e.explanation(im, int(c))) for im, c in zip(x, t, strict=True)])
            else:  # lime: explain_instance on the predictor, one image at a time
                per_image = lambda x, t, e=explainer: np.stack(  # noqa: E731
                    [e.map_of(e.explanation(im, int(c)), int(c))
                     for im, c in zip(x, t, strict=True)])
            m = min(n, 8)  # the per-image path is slow: its rate from 8 images
            before_evals = predictor.n_evals
            ref_seconds, ref_maps = timed(lambda p=per_image, x=x[:m], t=t[:m]: p(x, t))
            ref_value = m / ref_seconds if gradient else (
                (predictor.n_evals - before_evals) / ref_seconds)
            ref = (ref_value, max_diff(maps[:m], ref_maps))
        report(method, n, value, ceiling, "images/s" if gradient else "evals/s", ref)

    # the faithfulness curves of --images maps, all through the Predictor together
    maps = np.random.default_rng(0).random((args.images, size, size))
    fx, ft = images[:args.images], targets[:args.images]
    q = scoring.Quality()
    before = predictor_ceiling()
    evals = predictor.n_evals
    seconds, _ = timed_cpu(lambda: EM.faithfulness_batch(predictor, fx, maps, ft, q.baseline,
                                                         q.steps, q.seed))
    evals = predictor.n_evals - evals
    report("faithfulness", args.images, evals / seconds, (before + predictor_ceiling()) / 2,
           "evals/s", None)

    if not args.no_stage:
        stage_sections(methods, images[:args.images], targets[:args.images], model, build)
    print("\n" + "\n".join(rows))


def stage_sections(methods: list[str], images: np.ndarray, targets: np.ndarray,
                   model: keras.Model, build: Callable[..., Any]) -> None:
    """Seconds of the explain stage's per-method section on these images, as the stage runs it
    (explainer and sanity explainer built, then scoring.explain_selection)."""
    cfg = default_config()
    quality = quality_settings(cfg)  # as the stage reads explain.metrics
    random_model = EM.randomized_copy(model, quality.randomize, seed=cfg.seed)
    predictor_for = predictors(model, random_model, quality.randomize, cfg.explain.batch_size)
    predictor, random_predictor = predictor_for(model), predictor_for(random_model)
    n = len(images)
    info = pd.DataFrame({"row": np.arange(n)})
    sel = Selection(np.arange(n), images, targets, [None] * n, info)
    print(f"\nexplain stage, per-method section (maps + sanity rerun + faithfulness + "
          f"localisation + files) on {n} images:", flush=True)
    total = 0.0
    with tempfile.TemporaryDirectory() as out:
        for method in methods:
            seconds, _ = timed(lambda m=method: scoring.explain_selection(
                build(m, predictor), sel, predictor, quality, Path(out),
                build(m, random_predictor, random_model), chunk=SANITY_CHUNK))
            total += seconds
            print(f"  {method:<16}{seconds:>7.1f} s  ({seconds / n:.2f} s/image, first call "
                  "includes tracing)", flush=True)
    print(f"  {'all methods':<16}{total:>7.1f} s", flush=True)


if __name__ == "__main__":
    main()
