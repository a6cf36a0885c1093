"""How good is an attribution map? Faithfulness, localisation and sanity, as pure functions.

Every function takes numpy arrays (an image is (H, W, 3) 0-255 RGB, a map (H, W) where larger means
more evidence FOR the target class, a mask (H, W) 0/1) and, where the model is needed, a predictor:
any callable (N, H, W, 3) -> (N, C) probabilities, e.g. crackxai.models.predictor.Predictor.

- Faithfulness (Petsiuk et al. 2018, "RISE"): delete the most important pixels first (replace them
  with a baseline) and watch the target probability fall; insert them first into the baseline and
  watch it rise. Deletion AUC: lower is better; insertion AUC: higher is better.
- Localisation, where a ground-truth crack mask exists: pointing game (Zhang et al. 2016, "Top-down
  neural attention by excitation backprop", with their 15 px tolerance at 224 px scaled to the
  image size: 2 px at 32, 4 px at 64), energy-based pointing
  game (Wang et al. 2020, "Score-CAM", with the mask in place of the bounding box) and the IoU of the
  top-k% pixels with the mask. No mask -> NaN, never 0.
- Sanity (Adebayo et al. 2018, "Sanity checks for saliency maps"): Spearman rank correlation between
  the map of the trained model and the map of a copy with re-initialised top layers. A method whose
  map barely changes does not explain the model.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import cv2
import keras
import numpy as np
from scipy import stats

from crackxai.xai.batching import Predict, predict_stream
from crackxai.xai.options import BASELINES, RANDOMIZE_STAGES

HEAD_LAYER = "predictions"
BLUR_SIGMA_FRACTION = 0.1  # blur baseline: Gaussian sigma = 10% of the image side (erases cracks)
POINTING_TOLERANCE_224 = 15  # px, Zhang et al.'s tolerance; scaled to the image side below


# --- Faithfulness ------------------------------------------------------------------------------


def make_baseline(image: np.ndarray, kind: str = "blur") -> np.ndarray:
    """What a 'removed' pixel becomes: a strong Gaussian blur of the image, its per-channel mean,
    or black. float32 (H, W, 3) in 0-255."""
    image = np.asarray(image, dtype=np.float32)
    if kind == "blur":
        sigma = BLUR_SIGMA_FRACTION * max(image.shape[:2])
        return cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma,
                                borderType=cv2.BORDER_REFLECT)
    if kind == "mean":
        return np.broadcast_to(image.mean(axis=(0, 1)), image.shape).astype(np.float32)
    if kind == "black":
        return np.zeros_like(image)
    raise ValueError(f"unknown baseline {kind!r}: {' | '.join(BASELINES)}")


def rank_pixels(attribution: np.ndarray, seed: int = 0) -> np.ndarray:
    """Flat pixel indices, most evidence first. Ties (flat regions, constant maps) are broken by a
    seeded random order rather than raster order, which would favour the top rows."""
    flat = np.asarray(attribution, dtype=np.float64).ravel()
    tiebreak = np.random.default_rng(seed).permutation(flat.size)
    return np.lexsort((tiebreak, -flat))


def perturbed_images(image: np.ndarray, attribution: np.ndarray, baseline: str = "blur",
                     steps: int = 20, seed: int = 0) -> np.ndarray:
    """The 2 * (steps + 1) images of the deletion curve, then of the insertion curve, float32
    (2 * (steps + 1), H, W, 3): step k removes (deletion) or reveals (insertion) the top k/steps
    of the pixels."""
    image = np.asarray(image, dtype=np.float32)
    h, w, c = image.shape
    base = make_baseline(image, baseline).reshape(h * w, c)
    flat = image.reshape(h * w, c)
    order = rank_pixels(attribution, seed)
    counts = np.round(np.linspace(0.0, 1.0, steps + 1) * h * w).astype(int)
    batch = np.empty((2 * (steps + 1), h * w, c), dtype=np.float32)
    for k, n in enumerate(counts):
        top = order[:n]
        batch[k] = flat
        batch[k, top] = base[top]  # deletion: the top pixels become baseline
        batch[steps + 1 + k] = base
        batch[steps + 1 + k, top] = flat[top]  # insertion: the top pixels come back
    return batch.reshape(-1, h, w, c)


def perturbation_curves_batch(
    predict: Predict,
    images: np.ndarray,
    attributions: np.ndarray,
    targets: np.ndarray | list[int],
    baseline: str = "blur",
    steps: int = 20,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """perturbation_curves of N (image, map, target) triples at once: (fractions (steps + 1,),
    deletion probabilities (N, steps + 1), insertion probabilities (N, steps + 1)). The perturbed
    images of all of them go to the predictor in full batches of its `batch_size` (64 for a plain
    function), made one image at a time so memory stays bounded."""
    targets = np.asarray(targets, dtype=int).reshape(-1)
    chunks = (perturbed_images(image, attribution, baseline, steps, seed)
              for image, attribution in zip(images, attributions, strict=True))
    probs = predict_stream(predict, chunks, int(getattr(predict, "batch_size", 64)))
    probs = probs.reshape(len(targets), 2 * (steps + 1), -1)
    target_probs = np.take_along_axis(probs, targets[:, None, None], axis=-1)[..., 0]
    return np.linspace(0.0, 1.0, steps + 1), target_probs[:, :steps + 1], target_probs[:, steps + 1:]


def perturbation_curves(
    predict: Predict,
    image: np.ndarray,
    attribution: np.ndarray,
    target: int,
    baseline: str = "blur",
    steps: int = 20,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fractions, deletion probabilities, insertion probabilities), each of length steps + 1.

    Step k removes (deletion) or reveals (insertion) the top k/steps of the pixels
    (perturbed_images); they go to the predictor together, in batches of its batch_size.
    """
    fractions, deletion, insertion = perturbation_curves_batch(
        predict, np.asarray(image)[None], np.asarray(attribution)[None], [target], baseline, steps,
        seed)
    return fractions, deletion[0], insertion[0]


def auc(x: np.ndarray, y: np.ndarray) -> float:
    """Area under y(x) by the trapezoid rule (x in [0, 1] here, so the AUC is in [0, 1])."""
    return float(np.trapezoid(y, x))


def faithfulness(
    predict: Predict,
    image: np.ndarray,
    attribution: np.ndarray,
    target: int,
    baseline: str = "blur",
    steps: int = 20,
    seed: int = 0,
) -> dict[str, float]:
    """{'deletion_auc': lower is better, 'insertion_auc': higher is better}."""
    return faithfulness_batch(predict, np.asarray(image)[None], np.asarray(attribution)[None],
                              [target], baseline, steps, seed)[0]


def faithfulness_batch(
    predict: Predict,
    images: np.ndarray,
    attributions: np.ndarray,
    targets: np.ndarray | list[int],
    baseline: str = "blur",
    steps: int = 20,
    seed: int = 0,
) -> list[dict[str, float]]:
    """faithfulness of each (image, map, target), the model seeing full batches across them."""
    x, deletion, insertion = perturbation_curves_batch(predict, images, attributions, targets,
                                                       baseline, steps, seed)
    return [{"deletion_auc": auc(x, d), "insertion_auc": auc(x, i)}
            for d, i in zip(deletion, insertion, strict=True)]


# --- Localisation ------------------------------------------------------------------------------


def _valid_mask(mask: np.ndarray | None) -> np.ndarray | None:
    if mask is None:
        return None
    mask = np.asarray(mask) > 0
    return mask if mask.any() else None


def dilate(mask: np.ndarray, tolerance: int | None = None) -> np.ndarray:
    """Pixels within `tolerance` px (Euclidean) of the mask; by default `pointing_tolerance` of
    the mask's size."""
    mask = np.asarray(mask) > 0
    if tolerance is None:
        tolerance = pointing_tolerance(mask.shape)
    if tolerance <= 0:
        return mask
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * tolerance + 1, 2 * tolerance + 1))
    return cv2.dilate(mask.astype(np.uint8), disk).astype(bool)


def pointing_tolerance(shape: tuple[int, ...]) -> int:
    """Zhang et al.'s 15 px at 224 px, scaled to this image size: 4 px at 64, 10 px at 150."""
    return max(1, round(POINTING_TOLERANCE_224 * max(shape[:2]) / 224))


def pointing_game(attribution: np.ndarray, mask: np.ndarray | None,
                  tolerance: int | None = None) -> float:
    """1.0 if the map's maximum lies within `tolerance` px of the mask, else 0.0; NaN without a mask.
    `tolerance` defaults to `pointing_tolerance` of the mask's size.

    When several pixels share the maximum (a flat or constant map), the score is the fraction of
    them that hit: the expected hit of a random pick among them, so a constant map scores chance.
    """
    mask = _valid_mask(mask)
    if mask is None:
        return float("nan")
    attribution = np.asarray(attribution, dtype=np.float64)
    peaks = attribution == attribution.max()
    return float(dilate(mask, tolerance)[peaks].mean())


def pointing_game_chance(mask: np.ndarray | None, tolerance: int | None = None) -> float:
    """What a uniformly random point scores: the area fraction of the (tolerance-dilated) mask."""
    mask = _valid_mask(mask)
    if mask is None:
        return float("nan")
    return float(dilate(mask, tolerance).mean())


def energy_pointing_game(attribution: np.ndarray, mask: np.ndarray | None) -> float:
    """Share of the positive attribution that falls inside the mask; NaN without a mask.

    A map with no positive evidence at all carries no location and counts as uniform, i.e. scores
    the mask's area fraction (chance), consistent with `pointing_game` on a constant map.
    """
    mask = _valid_mask(mask)
    if mask is None:
        return float("nan")
    positive = np.clip(np.asarray(attribution, dtype=np.float64), 0.0, None)
    total = positive.sum()
    if total <= 0:
        return float(mask.mean())
    return float(positive[mask].sum() / total)


def topk_iou(attribution: np.ndarray, mask: np.ndarray | None, top_k_percent: float = 5.0,
             seed: int = 0) -> float:
    """IoU between the top `top_k_percent` % pixels of the map and the mask; NaN without a mask."""
    mask = _valid_mask(mask)
    if mask is None:
        return float("nan")
    k = max(1, int(round(mask.size * top_k_percent / 100.0)))
    top = np.zeros(mask.size, dtype=bool)
    top[rank_pixels(attribution, seed)[:k]] = True
    flat = mask.ravel()
    return float((top & flat).sum() / (top | flat).sum())


def localisation(attribution: np.ndarray, mask: np.ndarray | None, top_k_percent: float = 5.0,
                 tolerance: int | None = None, seed: int = 0) -> dict[str, float]:
    return {
        "pointing_game": pointing_game(attribution, mask, tolerance),
        "energy_pointing_game": energy_pointing_game(attribution, mask),
        "topk_iou": topk_iou(attribution, mask, top_k_percent, seed),
    }


# --- Sanity: model-parameter randomisation ----------------------------------------------------


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho between two flattened maps; NaN when either is constant (undefined)."""
    a, b = np.ravel(a), np.ravel(b)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(stats.spearmanr(a, b).statistic)


def randomized_layer_names(model: keras.Model, randomize: str = "head") -> list[str]:
    """Layers re-initialised by `randomize`: the head ('predictions'), plus all layers of the top
    ResNet stage (top_block: conv5_*) or two (top_2_blocks: conv5_*, conv4_*)."""
    if randomize not in RANDOMIZE_STAGES:
        raise ValueError(f"unknown randomize {randomize!r}: {' | '.join(RANDOMIZE_STAGES)}")
    stages = RANDOMIZE_STAGES[randomize]
    return [layer.name for layer in model.layers if layer.weights and (
        layer.name == HEAD_LAYER or (stages and layer.name.startswith(stages)))]


def _reseeded(initializer: keras.initializers.Initializer, seed: int):
    config = initializer.get_config()
    if "seed" not in config:  # Zeros, Ones, Constant: nothing random
        return initializer
    return initializer.__class__.from_config({**config, "seed": seed})


def randomized_copy(model: keras.Model, randomize: str = "head", seed: int = 0) -> keras.Model:
    """A copy of `model` whose chosen layers are re-initialised with their own initializers
    (seeded: the same seed gives the same copy); all other weights are the trained ones. A layer
    gets the weights the cascade gives it (cascading_randomized_copies), so the 'head' copy is
    the cascade's first step."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    _reinitialise(clone, randomized_layer_names(clone, randomize), seed)
    return clone


def _reinitialise(model: keras.Model, names: list[str], seed: int) -> None:
    """Re-initialise the named layers in place, each variable with its own initializer seeded by
    the layer's position in the model: the same layer gets the same weights in any copy."""
    position = {layer.name: i for i, layer in enumerate(model.layers)}
    for name in names:
        layer = model.get_layer(name)
        for j, variable in enumerate(layer.weights):
            # Dense/Conv2D: kernel, bias; BatchNormalization: gamma, beta, moving_mean/variance
            initializer = getattr(layer, f"{variable.name}_initializer", None)
            if initializer is None:
                raise ValueError(f"no initializer for {layer.name}/{variable.name}")
            initializer = _reseeded(initializer, seed * 100_003 + position[name] * 16 + j)
            variable.assign(initializer(variable.shape, dtype=variable.dtype))


# --- Sanity: cascading randomisation, top block to bottom -------------------------------------

# ResNet50's stages, top (next to the head) to bottom. Each cascade step re-initialises one more
# (Adebayo et al. 2018, "cascading randomization": from the logits down, cumulatively).
CASCADE_STAGES = ("conv5_", "conv4_", "conv3_", "conv2_", "conv1_")


def cascading_layer_steps(model: keras.Model, stages: tuple[str, ...] = CASCADE_STAGES
                          ) -> list[tuple[str, list[str]]]:
    """[(step name, layers newly re-initialised at that step), ...]: first the head ('head':
    'predictions'), then each stage prefix in order ('conv5', 'conv4', ...). Applied in order the
    steps are cumulative. Only layers with weights count; a stage with none is an error (a typo
    or another architecture would otherwise pass silently as 'nothing changed')."""
    weighted = [layer.name for layer in model.layers if layer.weights]
    steps = [("head", [name for name in weighted if name == HEAD_LAYER])]
    steps += [(prefix.rstrip("_"), [name for name in weighted if name.startswith(prefix)])
              for prefix in stages]
    empty = [step for step, names in steps if not names]
    if empty:
        raise ValueError(f"no layers with weights for cascade step(s) {empty} in {model.name}")
    return steps


def cascading_randomized_copies(model: keras.Model, stages: tuple[str, ...] = CASCADE_STAGES,
                                seed: int = 0) -> Iterator[tuple[str, keras.Model]]:
    """Yield (step, model) for each cascading_layer_steps step: ONE copy of `model`, re-initialised
    further at each step (head, then head + conv5, then head + conv5 + conv4, ...), each layer
    with its own initializer. Use the yielded model (compute its maps) before advancing: the next
    step changes it in place, so the cascade costs one copy, not one per step. Seeded per
    variable by its position in the model, so a layer gets the same random weights whatever the
    step order; the trained model is never touched."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    for step, names in cascading_layer_steps(clone, stages):
        _reinitialise(clone, names, seed)
        yield step, clone
