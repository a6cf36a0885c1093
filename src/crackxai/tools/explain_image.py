"""Explain one image with any classifier: the pipeline's model file or a Keras ImageNet classifier.

    python -m crackxai.explain_image --model models/model.keras --image crack.jpg
    python -m crackxai.explain_image --model vgg16 --image cat.jpg --methods gradcam,lime --target 281
        [--out DIR] [--size S] [--layer NAME] [--weights imagenet|none] [key=value ...]

--model is a saved .keras classifier (raw 0-255 RGB in, probabilities out, as crackxai.stages.train
saves it; class names from a classes.json beside it, else data/processed/classes.json, both read
as the processed-data reader reads them, else class_<i>) or one of vgg16, vgg19, resnet50: the keras.applications ImageNet classifier, built
flat with its own preprocess_input inside so it also takes raw 0-255 RGB. ImageNet weights are
read from Keras's cache (~/.keras/models) or downloaded; `--weights none` gives random weights
(to try the pipeline offline). ImageNet class names come from imagenet_class_index.json in the
same cache, else the class ids are shown.

The image is any file OpenCV reads (decoded as the preprocess stage does it), resized to the
model's input size (--size, default 224, for a model without a fixed size and for the ImageNet
classifiers). The explained class is --target, else explain.target, else the predicted class.
Methods (crackxai.xai.registry; default: explain.methods, i.e. all six) are the explain stage's
Explainer classes, each built from its `explain.<method>` section of conf/ (Hydra overrides after
the options, e.g. explain.shap.max_evals=1000). Prints the top-5 predictions and writes into --out
(default reports/explain_image/<image stem>/), all at once:

    <method>.png        jet overlay of the positive evidence for the class
    <method>.npy        the raw (H, W) float32 map
    grid.png            the image and every method side by side
    shap_values.png     SHAP's own signed plot (red raises the class score, blue lowers it)
    lime_mask.png       LIME's get_image_and_mask (explain.lime.num_features / positive_only /
                        hide_rest) with the superpixel boundaries
    predictions.json    top-5, explained class, layer, seconds per method, out-of-distribution
                        verdict ("ood": distance and threshold; null for a model without one)

A pipeline model comes with an out-of-distribution detector beside it (models/model.ood.npz,
crackxai.models.ood). An image unlike the training images (noise, a blank frame, a photo of
something else) is then reported as "out of distribution" with its distance and the threshold,
and neither scored nor explained: only predictions.json is written. `--allow-ood` explains it
anyway (to see what the model reacts to). A model without a detector gets a warning and the usual
top-5.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np

from crackxai.config import Config, check_methods, explainer_settings, load_config
from crackxai.core.entry import command, log
from crackxai.core.errors import ConfigError, CrackxaiError, DataError
from crackxai.core.io import atomic_dir
from crackxai.core.paths import PROCESSED_DIR, REPORTS_DIR
from crackxai.data.decode import decode_to
from crackxai.data.processed import read_classes
from crackxai.models.io import load_model
from crackxai.models.ood import OOD_LABEL, FeatureExtractor, load_detector_for
from crackxai.models.predictor import Predictor
from crackxai.models.resnet import imagenet_cache_path, imagenet_reachable
from crackxai.xai import registry, render
from crackxai.xai.cam import resolve_layer
from crackxai.xai.lime import LimeExplainer
from crackxai.xai.shap import ShapExplainer

STAGE = "explain_image"
APPS = "https://storage.googleapis.com/tensorflow/keras-applications/"
IMAGENET = {  # name: (constructor, preprocess module, top weights file under APPS)
    "vgg16": ("VGG16", "vgg16", "vgg16/vgg16_weights_tf_dim_ordering_tf_kernels.h5"),
    "vgg19": ("VGG19", "vgg19", "vgg19/vgg19_weights_tf_dim_ordering_tf_kernels.h5"),
    "resnet50": ("ResNet50", "resnet50", "resnet/resnet50_weights_tf_dim_ordering_tf_kernels.h5"),
}
IMAGENET_SIZE = 224
CLASS_INDEX = "imagenet_class_index.json"
TOP = 5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m crackxai.explain_image",
        description="Explain one image with SHAP, the Grad-CAM family and LIME, for the "
                    "pipeline's model or a Keras ImageNet classifier (vgg16, vgg19, resnet50).")
    p.add_argument("--model", required=True,
                   help="a saved .keras model, or vgg16 | vgg19 | resnet50 (ImageNet)")
    p.add_argument("--image", required=True, type=Path, help="an image file OpenCV reads")
    p.add_argument("--methods", default=None,
                   help=f"comma-separated, from {','.join(registry.NAMES)} (default: explain.methods, "
                        "i.e. all six)")
    p.add_argument("--target", type=int, default=None,
                   help="class index to explain (default: explain.target, else the predicted one)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: reports/explain_image/<image stem>/)")
    p.add_argument("--size", type=int, default=IMAGENET_SIZE,
                   help="input size for a model without a fixed one and for the ImageNet "
                        f"classifiers (default {IMAGENET_SIZE})")
    p.add_argument("--layer", default=None,
                   help="feature-map layer for the CAM methods (default: the last one at least "
                        "explain.cam_min_size pixels a side)")
    p.add_argument("--weights", choices=("imagenet", "none"), default="imagenet",
                   help="ImageNet classifiers only: 'none' = random weights, to try it offline")
    p.add_argument("--allow-ood", action="store_true",
                   help="explain an image the model's out-of-distribution detector flags (by "
                        "default it is reported as out of distribution and not explained)")
    p.add_argument("overrides", nargs="*",
                   help="Hydra overrides of conf/, e.g. explain.shap.max_evals=1000 seed=1")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Models and their class names
# ---------------------------------------------------------------------------------------------


class ImageNetPreprocess(keras.layers.Layer):
    """`keras.applications.<family>.preprocess_input` as a layer: the model takes 0-255 RGB."""

    def __init__(self, family: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.family = family

    def call(self, inputs):  # noqa: ANN001, ANN201 - Keras API
        return getattr(keras.applications, self.family).preprocess_input(inputs)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "family": self.family}


def imagenet_classifier(name: str, size: int, weights: str = "imagenet") -> keras.Model:
    """The ImageNet classifier `name`, built flat (input_tensor=) behind its preprocessing, so
    tf-keras-vis reaches its feature maps; clear errors for weights that cannot be had."""
    ctor, family, weights_file = IMAGENET[name]
    if weights == "imagenet":
        cache = imagenet_cache_path().parent / Path(weights_file).name
        if not cache.is_file() and not imagenet_reachable():
            raise CrackxaiError(
                f"--model {name}: the ImageNet weights are not cached at '{cache}' and "
                f"{APPS}{weights_file} cannot be reached (no network). Place that file at that "
                "path, or use --weights none (random weights, to try the pipeline)."
            )
        if size != IMAGENET_SIZE:
            raise CrackxaiError(f"--model {name} with ImageNet weights takes "
                                f"{IMAGENET_SIZE}x{IMAGENET_SIZE} images: use --size "
                                f"{IMAGENET_SIZE} (or --weights none).")
    if size < 32:
        raise CrackxaiError(f"--size {size}: {name} needs images of at least 32x32.")
    inputs = keras.Input((size, size, 3), name="image")
    x = ImageNetPreprocess(family, name="imagenet_preprocess")(inputs)
    return getattr(keras.applications, ctor)(
        include_top=True, weights="imagenet" if weights == "imagenet" else None, input_tensor=x)


def imagenet_names(download: bool) -> list[str] | None:
    """The 1000 ImageNet class names from Keras's cached class index (fetched if `download` and
    the network answers); None when it cannot be had."""
    path = imagenet_cache_path().parent / CLASS_INDEX
    if not path.is_file() and download and imagenet_reachable():
        try:
            keras.applications.imagenet_utils.decode_predictions(np.zeros((1, 1000)))
        except Exception:  # noqa: BLE001 - any download failure: fall back to class ids
            return None
    if not path.is_file():
        return None
    index = json.loads(path.read_text(encoding="utf-8"))
    return [index[str(i)][1] for i in range(len(index))]


def class_names_for(model_path: Path, num_classes: int) -> tuple[list[str], str]:
    """Class names of a pipeline model and where they came from: the first classes.json (beside
    the model, else data/processed) that reads and has one name per output."""
    for folder in (model_path.parent, PROCESSED_DIR):
        try:
            names = read_classes(folder)
        except (DataError, OSError, ValueError, LookupError, TypeError):  # absent or malformed
            continue
        if len(names) == num_classes:
            return [str(n) for n in names], str(Path(folder) / "classes.json")
    return [f"class_{i}" for i in range(num_classes)], "none found: class_<i>"


def load_classifier(spec: str, size: int, weights: str) -> tuple[keras.Model, list[str], str]:
    """(model, class names, a one-line description) for a model path or ImageNet name."""
    path = Path(spec)
    if spec.lower() in IMAGENET and not path.exists():
        name = spec.lower()
        model = imagenet_classifier(name, size, weights)
        names = imagenet_names(download=weights == "imagenet")
        origin = "ImageNet class index" if names else f"{CLASS_INDEX} not cached: class ids"
        return (model, names or [f"class_{i}" for i in range(1000)],
                f"{name} ({'ImageNet' if weights == 'imagenet' else 'random'} weights), names: "
                f"{origin}")
    if not path.is_file():
        raise CrackxaiError(
            f"--model '{spec}': no such model file. Give the path of a saved .keras model "
            f"(e.g. models/model.keras) or one of {', '.join(IMAGENET)} (ImageNet classifiers)."
        )
    model = load_model(path)
    names, origin = class_names_for(path, int(model.output_shape[-1]))
    return model, names, f"{path}, names: {origin}"


# ---------------------------------------------------------------------------------------------
# The image
# ---------------------------------------------------------------------------------------------


def read_image_file(path: Path) -> bytes:
    """The file's bytes, checked to decode (before any model is loaded: bad input fails fast)."""
    from crackxai.data.decode import decode_image

    if not path.is_file():
        raise DataError(f"--image '{path}': no such file.")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"--image '{path}' cannot be read: {exc.strerror or exc}.") from None
    image, reason, detail, _ = decode_image(data, 32, 1)
    if image is None:
        raise DataError(f"--image '{path}' is not a usable image ({reason}: {detail}). Give a "
                        "file OpenCV can decode: JPEG, PNG, BMP, TIFF, WebP, ...")
    return data


def input_size(model: keras.Model, size: int) -> tuple[int, int]:
    h, w = model.input_shape[1:3]
    return int(h or size), int(w or size)


# ---------------------------------------------------------------------------------------------
# Extra pictures in the tools' own styles
# ---------------------------------------------------------------------------------------------


def save_shap_plot(path: Path, image: np.ndarray, attribution: np.ndarray, label: str) -> None:
    """SHAP's own signed plot. shap.image_plot draws with pyplot: Agg, as this tool only writes
    files (chosen here, when the plot is drawn, not at import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import shap

    shap.image_plot([attribution[None, ..., None]], image[None] / 255.0, labels=np.array([[label]]),
                    show=False)
    plt.gcf().savefig(path, format="png", dpi=100, bbox_inches="tight")
    plt.close("all")


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def parse_methods(text: str | None, default: list[str]) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()] if text else list(default)
    methods = list(dict.fromkeys(methods))
    check_methods(methods, "--methods", lambda key: "from the command line")
    return methods


def config(overrides: list[str]) -> Config:
    """conf/ composed with the overrides (conf/ holds the defaults: there is no other copy)."""
    return load_config(overrides)


def ood_verdict(spec: str, model: keras.Model, image: np.ndarray) -> dict[str, Any] | None:
    """{"distance", "threshold", "blank", "out_of_distribution"} from the detector beside a model file;
    None for the ImageNet classifiers and for a model saved without one (warned)."""
    path = Path(spec)
    if not path.is_file():
        return None
    detector = load_detector_for(path, model)
    if detector is None:
        return None
    features = FeatureExtractor(model, 1)(image[None])[1]
    return {"distance": float(detector.distance(features)[0]), "threshold": detector.threshold,
            "blank": bool(detector.blank(features)[0]),
            "out_of_distribution": bool(detector.flags(features)[0])}


def explain_image(args: argparse.Namespace) -> Path:
    cfg = config(args.overrides)
    methods = parse_methods(args.methods, cfg.explain.methods)
    data = read_image_file(args.image)
    model, names, about = load_classifier(args.model, args.size, args.weights)
    log(STAGE, f"model {about}")
    h, w = input_size(model, args.size)
    image = decode_to(data, h, w)
    predictor = Predictor(model, batch_size=cfg.explain.batch_size)
    probs = predictor(image[None])[0]
    ood = ood_verdict(args.model, model, image)
    out = args.out or REPORTS_DIR / "explain_image" / args.image.stem
    if ood and ood["out_of_distribution"]:
        why = ("a blank frame" if ood["blank"] else
               f"distance {ood['distance']:.1f} > threshold {ood['threshold']:.1f}")
        print(f"{args.image}: {OOD_LABEL} ({why}): unlike the images the model was trained on, "
              "so its class scores mean nothing here.")
        if not args.allow_ood:
            with atomic_dir(out) as tmp:
                (tmp / "predictions.json").write_text(json.dumps({
                    "model": str(args.model), "image": str(args.image), "input_size": [h, w],
                    "verdict": OOD_LABEL, "ood": ood, "top": []}, indent=2) + "\n",
                    encoding="utf-8")
            log(STAGE, f"not explained (--allow-ood explains it anyway); wrote {out}/"
                       "predictions.json")
            return out

    order = np.argsort(-probs)[:TOP]
    print(f"Top-{len(order)} predictions for {args.image}"
          + (f" ({OOD_LABEL}: not meaningful):" if ood and ood["out_of_distribution"] else ":"))
    for rank, c in enumerate(order, 1):
        print(f"  {rank}. {names[c]:<24} {probs[c]:.4f}  (class {c})")
    target = args.target if args.target is not None else cfg.explain.target
    target = int(order[0]) if target is None else int(target)
    if not 0 <= target < len(probs):
        raise ConfigError(f"--target {target}: the model has {len(probs)} classes "
                          f"(0..{len(probs) - 1}).")
    layer = args.layer or cfg.explain.layer
    if any(registry.get(m).is_cam for m in methods):
        layer = resolve_layer(model, layer, cfg.explain.cam_min_size)
    log(STAGE, f"explaining class {target} ({names[target]}, p={probs[target]:.4f}) with "
               f"{', '.join(methods)}" + (f"; CAM layer {layer}" if layer else ""))

    maps: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    with atomic_dir(out) as tmp:
        for method in methods:
            start = time.perf_counter()
            explainer = registry.create(method, model=model, predictor=predictor, layer=layer,
                                        **explainer_settings(cfg, method))
            if isinstance(explainer, LimeExplainer):  # the explanation too, for LIME's picture
                lime = explainer.explanation(image, target)
                maps[method] = explainer.map_of(lime, target)
                render.save_png(tmp / "lime_mask.png", explainer.picture(lime, target))
            else:
                maps[method] = explainer.explain(image[None], [target])[0]
            seconds[method] = round(time.perf_counter() - start, 3)
            log(STAGE, f"{method}: {seconds[method]:.1f} s")
            np.save(tmp / f"{method}.npy", maps[method])
            render.save_png(tmp / f"{method}.png", render.overlay(image, maps[method]))
            if isinstance(explainer, ShapExplainer):  # and SHAP's own signed plot
                save_shap_plot(tmp / "shap_values.png", image, maps[method], names[target])
        render.comparison_grid(image[None], {m: a[None] for m, a in maps.items()},
                               [f"{names[target]}\np={probs[target]:.2f}"], tmp / "grid.png")
        (tmp / "predictions.json").write_text(json.dumps({
            "model": str(args.model), "image": str(args.image), "input_size": [h, w],
            "target": target, "target_name": names[target], "layer": layer, "seed": cfg.seed,
            "verdict": OOD_LABEL if ood and ood["out_of_distribution"] else names[int(order[0])],
            "ood": ood,
            "top": [{"class": int(c), "name": names[c], "probability": float(probs[c])}
                    for c in order],
            "seconds": seconds,
        }, indent=2) + "\n", encoding="utf-8")
    log(STAGE, f"wrote {len(methods)} overlays, maps and grid.png to {out}/")
    return out


INTERRUPTED = "interrupted; nothing was written (outputs are written all at once)."


@command(STAGE, interrupted=INTERRUPTED)
def main(argv: list[str] | None = None) -> None:
    explain_image(parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
