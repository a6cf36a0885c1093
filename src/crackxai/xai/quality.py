"""More explanation-quality metrics (what Quantus and xplique measure), as pure numpy functions.

A map is (H, W), larger = more evidence FOR the target class; a mask is (H, W) 0/1 (the crack);
batched forms take (N, H, W). Nothing here needs the model: where one is needed the caller passes
an `explain_fn` or the maps it computed. Definitions follow the papers (checked against Quantus
0.6's implementations, which this project cannot install beside Keras 3: its TF extra pins
tensorflow<2.16 / keras<3, and its core pulls opencv-python, which clashes with the headless build).

| metric | definition | paper | better | range |
| --- | --- | --- | --- | --- |
| relevance_rank_accuracy | share of the K = (mask size) highest-attributed pixels inside the mask (ties at the K-th value shared in expectation) | Arras et al. 2022, CLEVR-XAI | higher | [0, 1]; chance = mask fraction |
| relevance_mass_accuracy | positive attribution inside the mask / all positive attribution | Arras et al. 2022, CLEVR-XAI | higher | [0, 1]; chance = mask fraction |
| roc_auc | ROC AUC of the map as a score for "pixel is in the mask" (ties count 1/2) | Fawcett 2006; Quantus `AUC` | higher | [0, 1]; chance 0.5 |
| sparseness | Gini index of \\|attribution\\| | Chalasani et al. 2020 | higher | [0, 1 - 1/HW] |
| complexity | Shannon entropy (nats) of \\|a\\| / sum \\|a\\| | Bhatt et al. 2020 | lower | [0, ln HW] |
| max_sensitivity | max over n samples x' ~ U(L-inf ball of radius r) of \\|\\|e(x') - e(x)\\|\\|_2 / \\|\\|e(x)\\|\\|_2 | Yeh et al. 2019 | lower | [0, inf) |
| seed_stability | mean pairwise Spearman rho between the maps of k seeds | (stability of stochastic explainers) | higher | [-1, 1] |
| cascading_randomisation | per step (top block -> bottom randomised): similarity of the trained map to the randomised one | Adebayo et al. 2018 | lower | rho [-1, 1], SSIM [-1, 1] |
| random_logit | similarity of the target-class map to the map of a random other class | Sixt et al. 2020 | lower | as above |

Localisation metrics return None (JSON null, never 0) when the mask is missing or empty; ROC AUC
also when the mask covers the whole image (no negative pixel, AUC undefined).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats
from skimage.metrics import structural_similarity

ExplainFn = Callable[[np.ndarray], np.ndarray]
SSIM_WINDOW = 7  # skimage's default Gaussian-free 7x7 window; shrunk for maps smaller than that


# --- Localisation without a threshold ---------------------------------------------------------


def _flatten(attributions: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, H*W) float64 maps and (N, H*W) bool masks, shapes checked."""
    a = np.asarray(attributions, dtype=np.float64)
    m = np.asarray(masks) > 0
    if a.shape != m.shape or a.ndim != 3:
        raise ValueError(f"attributions {a.shape} and masks {m.shape} must both be (N, H, W)")
    if not np.isfinite(a).all():
        raise ValueError("attributions contain NaN or inf")
    return a.reshape(len(a), -1), m.reshape(len(m), -1)


def _none_where(scores: np.ndarray, undefined: np.ndarray) -> list[float | None]:
    return [None if bad else float(s) for s, bad in zip(scores, undefined, strict=True)]


def relevance_rank_accuracy_batch(attributions: np.ndarray, masks: np.ndarray
                                  ) -> list[float | None]:
    """Arras et al. 2022: with K = |mask|, the share of the K highest-attributed pixels that lie in
    the mask (signed values, largest first, as Quantus). Pixels tied at the K-th value share the
    remaining slots in proportion, i.e. the expected score under a random tie-break, so a
    constant map scores exactly the mask fraction instead of favouring raster order."""
    a, m = _flatten(attributions, masks)
    k = m.sum(axis=1)
    undefined = k == 0
    rows = np.arange(len(a))
    kth = -np.sort(-a, axis=1)[rows, np.maximum(k, 1) - 1]  # the K-th largest value per image
    above = a > kth[:, None]
    at = a == kth[:, None]
    slots = k - above.sum(axis=1)  # how many of the tied pixels make it into the top K
    hits = (above & m).sum(axis=1) + slots * (at & m).sum(axis=1) / at.sum(axis=1)
    return _none_where(hits / np.maximum(k, 1), undefined)


def relevance_mass_accuracy_batch(attributions: np.ndarray, masks: np.ndarray
                                  ) -> list[float | None]:
    """Arras et al. 2022: R_within / R_total over the POSITIVE attributions (negatives clipped to
    0: evidence against the class is not relevance mass; Quantus's docstring likewise). A map with
    no positive mass carries no location and scores the mask fraction (chance), the convention of
    metrics.energy_pointing_game, which this equals image by image."""
    a, m = _flatten(attributions, masks)
    positive = np.clip(a, 0.0, None)
    total = positive.sum(axis=1)
    inside = (positive * m).sum(axis=1)
    chance = m.mean(axis=1)
    score = np.where(total > 0, inside / np.where(total > 0, total, 1.0), chance)
    return _none_where(score, m.sum(axis=1) == 0)


def roc_auc_batch(attributions: np.ndarray, masks: np.ndarray) -> list[float | None]:
    """ROC AUC of the map as a score for mask pixels, by the Mann-Whitney rank formula
    (= sklearn.metrics.roc_auc_score; average ranks, so ties count 1/2). Threshold-free: 1 = every
    mask pixel outranks every background pixel, 0.5 = chance, 0 = inverted."""
    a, m = _flatten(attributions, masks)
    n_pos = m.sum(axis=1)
    n_neg = m.shape[1] - n_pos
    undefined = (n_pos == 0) | (n_neg == 0)
    ranks = stats.rankdata(a, axis=1)  # 'average' method
    u = (ranks * m).sum(axis=1) - n_pos * (n_pos + 1) / 2.0
    return _none_where(u / np.maximum(n_pos * n_neg, 1), undefined)


def _single(batch_fn: Callable[[np.ndarray, np.ndarray], list[float | None]],
            attribution: np.ndarray, mask: np.ndarray | None) -> float | None:
    if mask is None:
        return None
    return batch_fn(np.asarray(attribution)[None], np.asarray(mask)[None])[0]


def relevance_rank_accuracy(attribution: np.ndarray, mask: np.ndarray | None) -> float | None:
    """One map; None without a (non-empty) mask. See relevance_rank_accuracy_batch."""
    return _single(relevance_rank_accuracy_batch, attribution, mask)


def relevance_mass_accuracy(attribution: np.ndarray, mask: np.ndarray | None) -> float | None:
    """One map; None without a (non-empty) mask. See relevance_mass_accuracy_batch."""
    return _single(relevance_mass_accuracy_batch, attribution, mask)


def roc_auc(attribution: np.ndarray, mask: np.ndarray | None) -> float | None:
    """One map; None without a mask, or with an empty or full one. See roc_auc_batch."""
    return _single(roc_auc_batch, attribution, mask)


def localisation_scores(attribution: np.ndarray, mask: np.ndarray | None
                        ) -> dict[str, float | None]:
    return {
        "relevance_rank_accuracy": relevance_rank_accuracy(attribution, mask),
        "relevance_mass_accuracy": relevance_mass_accuracy(attribution, mask),
        "roc_auc": roc_auc(attribution, mask),
    }


# --- Complexity -------------------------------------------------------------------------------


def _abs_flat(attributions: np.ndarray) -> np.ndarray:
    a = np.abs(np.asarray(attributions, dtype=np.float64))
    return a.reshape(len(a), -1)


def sparseness_batch(attributions: np.ndarray) -> np.ndarray:
    """Chalasani et al. 2020: the Gini index of |a| (Hurley & Rickard's form),
    G = sum_i (2i - n - 1) a_(i) / (n sum a), a sorted ascending. One-hot -> 1 - 1/n, constant
    -> 0. An all-zero map counts as constant (0), as Quantus's +1e-7 makes it."""
    a = np.sort(_abs_flat(attributions), axis=1)
    n = a.shape[1]
    total = a.sum(axis=1)
    weights = 2.0 * np.arange(1, n + 1) - n - 1.0
    gini = (a * weights).sum(axis=1) / (n * np.where(total > 0, total, 1.0))
    return np.where(total > 0, gini, 0.0)


def complexity_batch(attributions: np.ndarray) -> np.ndarray:
    """Bhatt et al. 2020: entropy (nats) of the fractional contributions p = |a| / sum |a|.
    One-hot -> 0, constant -> ln(H*W). An all-zero map counts as uniform (ln(H*W))."""
    a = _abs_flat(attributions)
    total = a.sum(axis=1, keepdims=True)
    p = np.where(total > 0, a / np.where(total > 0, total, 1.0), 1.0 / a.shape[1])
    return stats.entropy(p, axis=1)


def sparseness(attribution: np.ndarray) -> float:
    return float(sparseness_batch(np.asarray(attribution)[None])[0])


def complexity(attribution: np.ndarray) -> float:
    return float(complexity_batch(np.asarray(attribution)[None])[0])


# --- Robustness -------------------------------------------------------------------------------


def max_sensitivity(
    explain_fn: ExplainFn,
    image: np.ndarray,
    radius: float,
    n_samples: int = 10,
    seed: int = 0,
    relative: bool = True,
    clip: tuple[float, float] | None = None,
    reference: np.ndarray | None = None,
) -> float:
    """Yeh et al. 2019, SENS_MAX estimated by Monte Carlo as they do: draw `n_samples` points
    uniformly in the L-inf ball of `radius` around the image (per-value U(-r, r), seeded), and
    return max ||e(x') - e(x)||_2 (Frobenius norm of the map difference), divided by ||e(x)||_2
    when `relative` (Quantus's default normalisation; makes methods with different map scales
    comparable). `clip` = (lo, hi) keeps x' in the valid pixel range (e.g. (0, 255)).

    `explain_fn` maps (N, H, W, C) images to (N, H, W) maps; it is called ONCE, on the image and
    all its perturbations together (so it can batch them), or on the perturbations only when
    `reference` is the image's own map already (a deterministic explainer's, so e(x) need not be
    computed twice). A zero map that stays zero scores 0; a zero map that changes scores inf
    (relative change undefined)."""
    x = np.asarray(image, dtype=np.float32)
    noise = np.random.default_rng(seed).uniform(-radius, radius, size=(n_samples, *x.shape))
    batch = x[None] + noise.astype(np.float32)
    if reference is None:
        batch = np.concatenate([x[None], batch])
    if clip is not None:
        batch = np.clip(batch, *clip)
    maps = np.asarray(explain_fn(batch), dtype=np.float64).reshape(len(batch), -1)
    if reference is not None:
        maps = np.concatenate([np.asarray(reference, np.float64).reshape(1, -1), maps])
    worst = float(np.linalg.norm(maps[1:] - maps[0], axis=1).max())
    if not relative or worst == 0.0:
        return worst
    ref = float(np.linalg.norm(maps[0]))
    return worst / ref if ref > 0 else float("inf")


def _rank_rows(flat: np.ndarray) -> np.ndarray:
    """Per row: average ranks, centred and scaled to unit norm (a constant row -> NaN), so the
    Spearman rho of two rows is their dot product."""
    ranks = stats.rankdata(flat, axis=1)
    ranks -= ranks.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(ranks, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return ranks / norms


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho between two flattened maps; NaN when either is constant (undefined)."""
    r = _rank_rows(np.stack([np.ravel(a), np.ravel(b)]).astype(np.float64))
    return float(np.clip(r[0] @ r[1], -1.0, 1.0))


def seed_stability(maps: np.ndarray) -> float:
    """Maps of the same image from k >= 2 seeds (k, H, W) -> the mean Spearman rho over the
    k(k-1)/2 pairs: 1 = the seed does not matter. SHAP's and LIME's sampling make their maps
    seed-dependent; a method whose ranking changes with the seed explains its sampler as much as
    the model. Pairs with a constant map (rho undefined) are left out; NaN if all are."""
    flat = np.asarray(maps, dtype=np.float64).reshape(len(maps), -1)
    if len(flat) < 2:
        raise ValueError("seed_stability needs the maps of at least 2 seeds")
    r = _rank_rows(flat)
    rho = np.clip(r @ r.T, -1.0, 1.0)[np.triu_indices(len(flat), k=1)]
    return float(np.nanmean(rho)) if np.isfinite(rho).any() else float("nan")


# --- Randomisation ----------------------------------------------------------------------------


def _unit_range(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    span = np.ptp(a)
    return (a - a.min()) / span if span > 0 else np.zeros_like(a)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM (skimage, 7x7 window or the largest odd one that fits) between the two maps, each
    min-max scaled to [0, 1] first (our convention; Quantus instead takes the joint range of the
    raw pair): a map that keeps its shape but changes scale, common after randomisation, still
    counts as the same map, so SSIM judges structure only, like the rank correlations."""
    a, b = _unit_range(a), _unit_range(b)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"maps {a.shape} and {b.shape} must both be (H, W)")
    side = min(a.shape)
    win = min(SSIM_WINDOW, side if side % 2 else side - 1)
    if win < 3:
        raise ValueError(f"maps {a.shape} are too small for SSIM (need 3x3)")
    return float(structural_similarity(a, b, data_range=1.0, win_size=win))


def map_similarity(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """How alike two maps of the same image are (Adebayo et al. 2018's measures):
    rho (Spearman, signed), abs_rho (|rho|, what the explain stage reports), rho_abs_maps
    (Spearman of |a| and |b|: the paper's 'absolute value' variant, blind to sign flips) and
    ssim. Low = the maps differ."""
    rho = spearman(a, b)
    return {
        "rho": rho,
        "abs_rho": abs(rho),
        "rho_abs_maps": spearman(np.abs(a), np.abs(b)),
        "ssim": ssim(a, b),
    }


def cascading_randomisation(trained_map: np.ndarray,
                            steps: Sequence[tuple[str, np.ndarray]]) -> list[dict[str, float | str]]:
    """Adebayo et al. 2018's cascading model-parameter randomisation, one curve per method:
    `steps` = [(block, map after re-initialising every layer from the top down to `block`
    inclusive), ...] in cascade order (e.g. from metrics.cascading_randomized_copies); returns
    [{'block', **map_similarity(trained, randomised)}, ...]. A method that explains the model
    falls towards 0 as more blocks are randomised; one that stays high (e.g. edge-detector-like
    maps) fails the sanity check."""
    return [{"block": block, **map_similarity(trained_map, m)} for block, m in steps]


def random_other_class(target: int, n_classes: int, seed: int = 0) -> int:
    """A class other than `target`, drawn uniformly (seeded), for random_logit. With 2 classes it
    is simply the other one."""
    if n_classes < 2 or not 0 <= target < n_classes:
        raise ValueError(f"need 0 <= target < n_classes and n_classes >= 2, got {target}, "
                         f"{n_classes}")
    others = np.delete(np.arange(n_classes), target)
    return int(np.random.default_rng(seed).choice(others))


def random_logit(map_target: np.ndarray, map_other: np.ndarray) -> dict[str, float]:
    """Sixt et al. 2020 (Quantus `RandomLogit`, SSIM there): similarity between the map for the
    target class and the map for another class (random_other_class) of the same image. A
    class-sensitive method gives different maps, so lower is better; a method whose map does not
    depend on the class (as they show for many modified-backprop methods) scores high."""
    return map_similarity(map_target, map_other)
