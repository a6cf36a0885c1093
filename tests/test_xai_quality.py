"""The extra explanation-quality metrics (xai/quality.py) on hand-made maps whose answer is known,
and the cascading re-initialisation of a model (xai/metrics.cascading_randomized_copies)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from crackxai.xai import quality as Q

H = W = 32


@pytest.fixture
def mask() -> np.ndarray:
    """A diagonal 'crack' 3 px wide: 94 of 1024 pixels (~9%)."""
    yy, xx = np.mgrid[:H, :W]
    return (np.abs(yy - xx) <= 1).astype(np.uint8)


# --- Localisation -----------------------------------------------------------------------------


def test_perfect_map_scores_one(mask):
    perfect = mask.astype(float)
    assert Q.relevance_rank_accuracy(perfect, mask) == 1.0
    assert Q.relevance_mass_accuracy(perfect, mask) == 1.0
    assert Q.roc_auc(perfect, mask) == 1.0


def test_inverted_map_scores_zero(mask):
    inverted = 1.0 - mask
    assert Q.relevance_rank_accuracy(inverted, mask) == 0.0
    assert Q.relevance_mass_accuracy(inverted, mask) == 0.0
    assert Q.roc_auc(inverted, mask) == 0.0
    assert Q.roc_auc(-mask.astype(float), mask) == 0.0  # negating also inverts the ranking


def test_random_map_scores_chance(mask):
    """Uniform random maps, seed 0, averaged over 50 maps: AUC 0.5 and rank/mass accuracy the mask
    fraction f = 94/1024, each within 0.02 (their standard errors here are < 0.005)."""
    rng = np.random.default_rng(0)
    maps = rng.random((50, H, W))
    masks = np.broadcast_to(mask, maps.shape)
    f = mask.mean()
    assert np.mean(Q.roc_auc_batch(maps, masks)) == pytest.approx(0.5, abs=0.02)
    assert np.mean(Q.relevance_rank_accuracy_batch(maps, masks)) == pytest.approx(f, abs=0.02)
    assert np.mean(Q.relevance_mass_accuracy_batch(maps, masks)) == pytest.approx(f, abs=0.02)


def test_constant_map_scores_exactly_chance(mask):
    """Ties: a constant map has no ranking, so every metric gives the chance value exactly."""
    flat = np.full((H, W), 0.3)
    assert Q.relevance_rank_accuracy(flat, mask) == pytest.approx(mask.mean())
    assert Q.relevance_mass_accuracy(flat, mask) == pytest.approx(mask.mean())
    assert Q.roc_auc(flat, mask) == 0.5
    # no positive mass at all: no location either, chance again (metrics.energy_pointing_game's rule)
    assert Q.relevance_mass_accuracy(-np.ones((H, W)), mask) == pytest.approx(mask.mean())


def test_partial_hand_computed():
    """4 pixels, mask = the first two; map ranks them 1st and 3rd."""
    mask = np.array([[1, 1, 0, 0]])
    a = np.array([[4.0, 2.0, 3.0, -1.0]])
    assert Q.relevance_rank_accuracy(a, mask) == 0.5  # top-2 = {4, 3}: one inside
    assert Q.relevance_mass_accuracy(a, mask) == pytest.approx(6 / 9)  # -1 is not mass
    assert Q.roc_auc(a, mask) == 0.75  # pairs (in, out): 4>3, 4>-1, 2<3, 2>-1
    # ties at the K-th value share the remaining slots: top-2 of [5, 2, 2, 2] = 5 + 1/3 of a hit
    assert Q.relevance_rank_accuracy(np.array([[5.0, 2, 2, 2]]), mask) == pytest.approx(
        (1 + 1 / 3) / 2)


def test_missing_or_degenerate_mask_is_none(mask):
    a = np.random.default_rng(1).random((H, W))
    for fn in (Q.relevance_rank_accuracy, Q.relevance_mass_accuracy, Q.roc_auc):
        assert fn(a, None) is None
        assert fn(a, np.zeros((H, W))) is None
    assert Q.roc_auc(a, np.ones((H, W))) is None  # no background pixel: AUC undefined
    assert Q.localisation_scores(a, None) == dict.fromkeys(
        ["relevance_rank_accuracy", "relevance_mass_accuracy", "roc_auc"])


def test_batch_matches_single_and_references(mask):
    """Batched == one by one; AUC == sklearn; mass accuracy == metrics.energy_pointing_game."""
    from crackxai.xai import metrics as EM

    rng = np.random.default_rng(2)
    maps = rng.normal(size=(6, H, W)) + 2 * mask  # informative but noisy
    maps[1] = np.round(maps[1])  # many ties
    masks = np.stack([mask] * 5 + [np.zeros_like(mask)])  # the last image has no mask
    for batch_fn, fn in ((Q.relevance_rank_accuracy_batch, Q.relevance_rank_accuracy),
                         (Q.relevance_mass_accuracy_batch, Q.relevance_mass_accuracy),
                         (Q.roc_auc_batch, Q.roc_auc)):
        assert batch_fn(maps, masks) == [fn(a, m) for a, m in zip(maps, masks, strict=True)]
        assert batch_fn(maps, masks)[-1] is None
    for a in maps[:5]:
        assert Q.roc_auc(a, mask) == pytest.approx(roc_auc_score(mask.ravel(), a.ravel()))
        assert Q.relevance_mass_accuracy(a, mask) == pytest.approx(
            EM.energy_pointing_game(a, mask))
    assert all(0.5 < s < 1 for s in Q.roc_auc_batch(maps[:5], masks[:5]))


def test_shape_and_value_checks(mask):
    with pytest.raises(ValueError, match="must both be"):
        Q.roc_auc(np.zeros((H, W + 1)), mask)
    with pytest.raises(ValueError, match="NaN"):
        Q.roc_auc(np.full((H, W), np.nan), mask)


# --- Complexity -------------------------------------------------------------------------------


def test_sparseness_and_complexity_extremes():
    n = H * W
    one_hot = np.zeros((H, W))
    one_hot[3, 5] = -2.0  # |a|: the sign does not matter
    constant = np.full((H, W), 0.7)
    assert Q.sparseness(one_hot) == pytest.approx(1 - 1 / n)
    assert Q.sparseness(constant) == pytest.approx(0.0, abs=1e-12)
    assert Q.sparseness(np.zeros((H, W))) == 0.0
    assert Q.complexity(one_hot) == pytest.approx(0.0)
    assert Q.complexity(constant) == pytest.approx(math.log(n))
    assert Q.complexity(np.zeros((H, W))) == pytest.approx(math.log(n))


def test_sparseness_hand_computed_and_batched():
    """Gini of [0, 0, 1, 3] = sum((2i - n - 1) a_i) / (n sum a) = (1*1 + 3*3) / (4*4) = 0.625;
    entropy of p = [1/4, 3/4]."""
    a = np.array([[0.0, 3.0], [0.0, -1.0]])
    assert Q.sparseness(a) == pytest.approx(0.625)
    assert Q.complexity(a) == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    maps = np.random.default_rng(3).normal(size=(4, 8, 8))
    np.testing.assert_allclose(Q.sparseness_batch(maps), [Q.sparseness(m) for m in maps])
    np.testing.assert_allclose(Q.complexity_batch(maps), [Q.complexity(m) for m in maps])


# --- Robustness -------------------------------------------------------------------------------


class CountingExplainer:
    def __init__(self, fn):
        self.fn = fn
        self.calls: list[int] = []

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.calls.append(len(images))
        return self.fn(images)


def test_max_sensitivity_of_a_constant_explainer_is_zero():
    image = np.random.default_rng(4).uniform(0, 255, (8, 8, 3))
    explain = CountingExplainer(lambda x: np.ones(x.shape[:3]))
    assert Q.max_sensitivity(explain, image, radius=5.0, n_samples=7) == 0.0
    assert explain.calls == [8]  # one call: the image and its 7 perturbations


def test_max_sensitivity_of_the_identity_reaches_its_bound():
    """e(x) = x on a 1-pixel image x = 2: ||e(x') - e(x)|| = |noise| <= r, so the relative score is
    at most r / 2, and the max of 200 draws of |U(-r, r)| exceeds 0.98 r unless all 200 miss
    (P = 0.98^200 ~ 0.018; fixed seed, so the test is deterministic)."""
    image = np.full((1, 1, 1), 2.0)
    identity = CountingExplainer(lambda x: x[..., 0])
    r = 0.1
    score = Q.max_sensitivity(identity, image, radius=r, n_samples=200, seed=0)
    assert 0.98 * r / 2 <= score <= r / 2
    assert Q.max_sensitivity(identity, image, radius=r, n_samples=200, seed=0,
                             relative=False) == pytest.approx(2 * score)
    # seeded; x' stays in the L-inf ball; clip keeps it in range
    assert Q.max_sensitivity(identity, image, radius=r, n_samples=200, seed=0) == score
    assert Q.max_sensitivity(identity, np.zeros((1, 1, 1)), radius=r, n_samples=50,
                             clip=(0.0, 1.0)) == math.inf  # zero map that changes


def test_max_sensitivity_of_the_identity_on_a_map():
    """Multi-pixel: ||noise||_2 over H*W values ~ r sqrt(H*W / 3) (E[U(-r,r)^2] = r^2/3), never more
    than r sqrt(H*W)."""
    image = np.full((16, 16, 3), 10.0)
    r = 1.0
    score = Q.max_sensitivity(lambda x: x[..., 0], image, radius=r, n_samples=20, seed=1)
    ref = np.linalg.norm(image[..., 0])
    assert score <= r * 16 / ref
    assert score == pytest.approx(r * math.sqrt(256 / 3) / ref, rel=0.1)


def test_seed_stability():
    rng = np.random.default_rng(5)
    a = rng.random((8, 8))
    assert Q.seed_stability(np.stack([a, a, a])) == pytest.approx(1.0)
    assert Q.seed_stability(np.stack([a, 3 * a + 1])) == pytest.approx(1.0)  # ranks only
    assert Q.seed_stability(np.stack([a, -a])) == pytest.approx(-1.0)
    maps = rng.random((4, 8, 8))
    from crackxai.xai import metrics as EM

    pairs = [EM.rank_correlation(maps[i], maps[j]) for i in range(4) for j in range(i + 1, 4)]
    assert Q.seed_stability(maps) == pytest.approx(np.mean(pairs))
    assert abs(Q.seed_stability(rng.random((20, 16, 16)))) < 0.05  # independent maps: ~0
    assert math.isnan(Q.seed_stability(np.ones((3, 4, 4))))
    with pytest.raises(ValueError, match="at least 2"):
        Q.seed_stability(a[None])


# --- Randomisation: similarity curves ---------------------------------------------------------


def test_map_similarity_and_cascade_curve(mask):
    rng = np.random.default_rng(6)
    trained = mask + 0.1 * rng.random((H, W))
    same = Q.map_similarity(trained, 5 * trained + 2)  # rescaled, shifted: the same map
    assert same == pytest.approx({"rho": 1.0, "abs_rho": 1.0, "rho_abs_maps": 1.0, "ssim": 1.0})
    flipped = Q.map_similarity(trained, -trained)
    assert flipped["rho"] == pytest.approx(-1.0) and flipped["abs_rho"] == pytest.approx(1.0)
    noise = Q.map_similarity(trained, rng.random((H, W)))
    assert noise["abs_rho"] < 0.1 and noise["ssim"] < 0.1

    steps = [("head", trained + 0.01 * rng.random((H, W))),
             ("conv5", trained + 0.5 * rng.random((H, W))),
             ("conv4", rng.random((H, W)))]
    curve = Q.cascading_randomisation(trained, steps)
    assert [c["block"] for c in curve] == ["head", "conv5", "conv4"]
    assert curve[0]["abs_rho"] > curve[1]["abs_rho"] > curve[2]["abs_rho"]
    assert curve[0]["ssim"] > curve[1]["ssim"] > curve[2]["ssim"]


def test_ssim_window_and_small_maps():
    a = np.random.default_rng(7).random((4, 5))
    assert Q.ssim(a, a) == pytest.approx(1.0)  # 3x3 window on a 4x5 map
    with pytest.raises(ValueError, match="too small"):
        Q.ssim(np.ones((2, 8)), np.ones((2, 8)))


def test_random_logit():
    assert Q.random_other_class(0, 2, seed=3) == 1  # binary: the other class
    drawn = {Q.random_other_class(4, 10, seed=s) for s in range(50)}
    assert 4 not in drawn and len(drawn) > 5
    assert Q.random_other_class(4, 10, seed=9) == Q.random_other_class(4, 10, seed=9)
    with pytest.raises(ValueError):
        Q.random_other_class(2, 2)
    a = np.random.default_rng(8).random((8, 8))
    assert Q.random_logit(a, a)["ssim"] == pytest.approx(1.0)  # class-blind method: fails
    assert Q.random_logit(a, 1 - a)["rho"] == pytest.approx(-1.0)  # opposite evidence


# --- Randomisation: the cascading re-initialisation of a model --------------------------------


@pytest.fixture(scope="module")
def resnet_like():
    """A tiny functional model named like ResNet50 (conv1_ .. conv5_, predictions), its weights
    moved off their initial values as training would."""
    import keras

    inputs = keras.Input((8, 8, 3), name="image")
    x = keras.layers.ZeroPadding2D(1, name="conv1_pad")(inputs)  # no weights
    x = keras.layers.Conv2D(2, 3, name="conv1_conv")(x)
    x = keras.layers.BatchNormalization(name="conv1_bn")(x)
    for stage in (2, 3, 4, 5):
        x = keras.layers.Conv2D(2, 3, padding="same", name=f"conv{stage}_block1_1_conv")(x)
        x = keras.layers.BatchNormalization(name=f"conv{stage}_block1_1_bn")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    model.set_weights([w + rng.uniform(0.1, 0.2, w.shape) for w in model.get_weights()])
    return model


def test_cascade_reinitialises_exactly_the_expected_layers(resnet_like):
    from crackxai.xai import metrics as EM

    trained = {layer.name: [w.copy() for w in layer.get_weights()] for layer in resnet_like.layers}
    expected = [("head", ("predictions",)), ("conv5", ("conv5_",)), ("conv4", ("conv4_",)),
                ("conv3", ("conv3_",)), ("conv2", ("conv2_",)), ("conv1", ("conv1_",))]
    done: tuple[str, ...] = ()
    snapshots = []
    for (step, model), (name, prefixes) in zip(
            EM.cascading_randomized_copies(resnet_like, seed=3), expected, strict=True):
        assert step == name
        done += prefixes
        for layer in model.layers:
            if not layer.weights:
                continue
            for a, b in zip(trained[layer.name], layer.get_weights(), strict=True):
                if layer.name.startswith(done):  # this step's block and every block above it
                    assert not np.allclose(a, b), (step, layer.name)
                else:
                    assert np.array_equal(a, b), (step, layer.name)
        snapshots.append([w.copy() for w in model.get_weights()])
    # the trained model is untouched; same seed, same cascade; another seed, another one
    for layer in resnet_like.layers:
        for a, b in zip(trained[layer.name], layer.get_weights(), strict=True):
            assert np.array_equal(a, b)
    again = [[w.copy() for w in m.get_weights()]
             for _, m in EM.cascading_randomized_copies(resnet_like, seed=3)]
    assert all(np.array_equal(a, b) for s, t in zip(snapshots, again, strict=True)
               for a, b in zip(s, t, strict=True))
    _, other = next(EM.cascading_randomized_copies(resnet_like, seed=4))
    assert not np.array_equal(other.get_layer("predictions").get_weights()[0],
                              snapshots[0][-2])


def test_cascade_steps_and_errors(resnet_like):
    import keras

    from crackxai.xai import metrics as EM

    steps = EM.cascading_layer_steps(resnet_like)
    assert steps[0] == ("head", ["predictions"])
    assert steps[-1] == ("conv1", ["conv1_conv", "conv1_bn"])  # conv1_pad has no weights
    assert EM.cascading_layer_steps(resnet_like, ("conv5_",)) == steps[:2]
    inputs = keras.Input((4,))
    plain = keras.Model(inputs, keras.layers.Dense(2, name="predictions")(inputs))
    with pytest.raises(ValueError, match="conv5"):
        EM.cascading_layer_steps(plain)


def test_matches_quantus_reference_values(mask):
    """Values from Quantus 0.6.0 (RelevanceRankAccuracy, RelevanceMassAccuracy on the positive
    part, AUC, Sparseness, Complexity; normalise=False) in a scratch venv, on these two maps.
    Sparseness differs by ~1e-6 through Quantus's +1e-7 on every value."""
    maps = np.random.default_rng(2).normal(size=(2, H, W)) + 2 * mask
    masks = np.stack([mask, mask])
    expected = {
        Q.relevance_rank_accuracy_batch: [0.4787234042553192, 0.6595744680851063],
        Q.relevance_mass_accuracy_batch: [0.3075683278113155, 0.3695050753947946],
        Q.roc_auc_batch: [0.893182338137726, 0.9241935483870968],
    }
    for fn, values in expected.items():
        np.testing.assert_allclose(fn(maps, masks), values, rtol=1e-12)
    np.testing.assert_allclose(Q.sparseness_batch(maps), [0.42375530575566167, 0.443673967147194],
                               atol=2e-6)
    np.testing.assert_allclose(Q.complexity_batch(maps), [6.633438138349256, 6.603805055583815],
                               rtol=1e-8)


def test_max_sensitivity_with_the_reference_map_skips_the_image():
    """A deterministic explainer's own map of the image, passed as `reference`: the same score,
    and only the perturbations are explained."""
    image = np.random.default_rng(6).uniform(0, 255, (8, 8, 3))
    square = CountingExplainer(lambda x: x[..., 0] ** 2)
    full = Q.max_sensitivity(square, image, radius=5.0, n_samples=4, seed=2, clip=(0, 255))
    reused = Q.max_sensitivity(square, image, radius=5.0, n_samples=4, seed=2, clip=(0, 255),
                               reference=image.astype(np.float32)[..., 0] ** 2)
    assert reused == pytest.approx(full, rel=1e-12)
    assert square.calls == [5, 4]


def test_head_copy_is_the_first_cascade_step(resnet_like):
    """The sanity check's head-randomised copy has the cascade's first-step weights, so the
    cascade can reuse the sanity maps instead of explaining that step again."""
    from crackxai.xai import metrics as EM

    head = EM.randomized_copy(resnet_like, "head", seed=5)
    _, first = next(EM.cascading_randomized_copies(resnet_like, seed=5))
    assert all(np.array_equal(a, b) for a, b in
               zip(head.get_weights(), first.get_weights(), strict=True))
