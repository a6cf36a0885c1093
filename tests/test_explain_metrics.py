"""Explanation-quality metrics on hand-computed cases, and the sanity-check randomisation."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from crackxai.xai import metrics as EM


class KeyPixelPredictor:
    """A toy model whose class-1 probability is the mean brightness of a few known pixels."""

    def __init__(self, key: np.ndarray):
        self.key = key  # (H, W) bool
        self.n_evals = 0

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, dtype=np.float32)
        self.n_evals += len(images)
        p = images[:, self.key].mean(axis=(1, 2)) / 255.0
        return np.stack([1 - p, p], axis=1)


@pytest.fixture
def toy():
    key = np.zeros((4, 4), dtype=bool)
    key[[0, 1, 2, 3], [1, 3, 0, 2]] = True  # 4 of 16 pixels decide the class
    image = np.full((4, 4, 3), 255, dtype=np.uint8)
    return KeyPixelPredictor(key), image, key


# --- faithfulness ------------------------------------------------------------------------------


def test_deletion_and_insertion_auc_hand_computed(toy):
    predict, image, key = toy
    true_map = key.astype(float) + np.linspace(0, 0.1, 16).reshape(4, 4)  # key pixels first
    reversed_map = -true_map
    # steps=4 -> 4 pixels per step. True ranking: the key pixels go in the first step.
    good = EM.faithfulness(predict, image, true_map, 1, baseline="black", steps=4)
    bad = EM.faithfulness(predict, image, reversed_map, 1, baseline="black", steps=4)
    # deletion curve [1, 0, 0, 0, 0] -> 0.125 ; reversed [1, 1, 1, 1, 0] -> 0.875
    assert good["deletion_auc"] == pytest.approx(0.125)
    assert bad["deletion_auc"] == pytest.approx(0.875)
    # insertion curve [0, 1, 1, 1, 1] -> 0.875 ; reversed [0, 0, 0, 0, 1] -> 0.125
    assert good["insertion_auc"] == pytest.approx(0.875)
    assert bad["insertion_auc"] == pytest.approx(0.125)
    assert predict.n_evals == 2 * 2 * 5  # both curves of both maps, steps + 1 images each


def test_reversed_ranking_is_worse_on_a_larger_image():
    rng = np.random.default_rng(0)
    key = np.zeros((16, 16), dtype=bool)
    key.ravel()[rng.choice(256, 20, replace=False)] = True
    predict = KeyPixelPredictor(key)
    image = rng.integers(150, 256, (16, 16, 3)).astype(np.uint8)
    true_map = key + 0.01 * rng.random((16, 16))
    for baseline in ("blur", "mean", "black"):
        good = EM.faithfulness(predict, image, true_map, 1, baseline=baseline, steps=8)
        bad = EM.faithfulness(predict, image, -true_map, 1, baseline=baseline, steps=8)
        assert good["deletion_auc"] < bad["deletion_auc"], baseline
        assert good["insertion_auc"] > bad["insertion_auc"], baseline


def test_curves_start_and_end_at_the_image_and_the_baseline(toy):
    predict, image, key = toy
    x, deletion, insertion = EM.perturbation_curves(predict, image, key, 1, "black", steps=4)
    assert x.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert deletion[0] == insertion[-1] == pytest.approx(1.0)  # the untouched image
    assert deletion[-1] == insertion[0] == pytest.approx(0.0)  # all black


def test_baselines():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
    blur = EM.make_baseline(image, "blur")
    mean = EM.make_baseline(image, "mean")
    assert blur.shape == mean.shape == image.shape and blur.dtype == np.float32
    assert blur.std() < 0.2 * image.std()  # strong: the texture is gone
    assert np.allclose(mean, image.mean(axis=(0, 1)))
    assert not EM.make_baseline(image, "black").any()
    with pytest.raises(ValueError, match="blur"):
        EM.make_baseline(image, "grey")


def test_rank_pixels_breaks_ties_with_the_seed_not_raster_order():
    flat = np.zeros((8, 8))
    flat[5, 5] = 1.0
    a, b = EM.rank_pixels(flat, seed=0), EM.rank_pixels(flat, seed=0)
    assert a[0] == 5 * 8 + 5 and np.array_equal(a, b)
    assert not np.array_equal(a[1:], np.arange(64)[np.arange(64) != 45])
    assert not np.array_equal(a, EM.rank_pixels(flat, seed=1))


# --- localisation ------------------------------------------------------------------------------


def test_map_equal_to_mask_scores_perfectly():
    mask = np.zeros((20, 20), dtype=np.uint8)
    mask[3, 2:12] = 1
    mask[4, 8:18] = 1  # 20 of 400 px = 5%
    scores = EM.localisation(mask.astype(float), mask, top_k_percent=5.0)
    assert scores == {"pointing_game": 1.0, "energy_pointing_game": 1.0, "topk_iou": 1.0}


def test_pointing_game_tolerance():
    assert [EM.pointing_tolerance((n, n)) for n in (32, 64, 150, 224)] == [2, 4, 10, 15]
    mask = np.zeros((20, 20), dtype=np.uint8)
    mask[10, 10] = 1
    near = np.zeros((20, 20))
    near[10, 12] = 1.0  # 2 px from the mask
    far = np.zeros((20, 20))
    far[2, 2] = 1.0
    assert EM.pointing_game(near, mask, tolerance=3) == 1.0
    assert EM.pointing_game(near, mask, tolerance=1) == 0.0
    assert EM.pointing_game(near, mask) == 0.0  # default tolerance at 20 px: 1 px
    assert EM.pointing_game(far, mask, tolerance=3) == 0.0


def test_constant_map_scores_chance():
    mask = np.zeros((10, 10), dtype=np.uint8)
    mask[:, :3] = 1  # 30%
    constant = np.ones((10, 10))
    assert EM.pointing_game(constant, mask, tolerance=0) == pytest.approx(0.3)
    assert EM.pointing_game_chance(mask, tolerance=0) == pytest.approx(0.3)
    assert EM.pointing_game_chance(mask, tolerance=1) == pytest.approx(0.4)  # dilated by 1 column
    assert EM.energy_pointing_game(constant, mask) == pytest.approx(0.3)
    assert EM.energy_pointing_game(-constant, mask) == pytest.approx(0.3)  # no positive evidence


def test_energy_pointing_game_hand_case():
    mask = np.zeros((4, 4), dtype=np.uint8)
    mask[0, 0] = mask[0, 1] = 1
    attribution = np.full((4, 4), -5.0)  # negative evidence is ignored
    attribution[0, 0] = 3.0  # inside
    attribution[3, 3] = 1.0  # outside
    assert EM.energy_pointing_game(attribution, mask) == pytest.approx(3.0 / 4.0)


def test_topk_iou_hand_case():
    mask = np.zeros((10, 10), dtype=np.uint8)
    mask[0, 0] = mask[0, 1] = 1
    attribution = np.zeros((10, 10))
    attribution[0, 0] = 2.0  # in the mask
    attribution[9, 9] = 1.0  # not
    # top 2% = 2 px: {(0,0), (9,9)}; mask {(0,0), (0,1)} -> IoU 1/3
    assert EM.topk_iou(attribution, mask, top_k_percent=2.0) == pytest.approx(1 / 3)


def test_no_mask_gives_nan_never_zero():
    attribution = np.random.default_rng(0).random((8, 8))
    for mask in (None, np.zeros((8, 8), dtype=np.uint8)):
        scores = EM.localisation(attribution, mask)
        assert all(math.isnan(v) for v in scores.values())
        assert math.isnan(EM.pointing_game_chance(mask))


# --- sanity ------------------------------------------------------------------------------------


def test_rank_correlation():
    a = np.random.default_rng(0).random((8, 8))
    assert EM.rank_correlation(a, a) == pytest.approx(1.0)
    assert EM.rank_correlation(a, -a) == pytest.approx(-1.0)
    assert EM.rank_correlation(a, 2 * a**3 + 1) == pytest.approx(1.0)  # ranks only
    assert math.isnan(EM.rank_correlation(a, np.ones((8, 8))))


@pytest.fixture(scope="module")
def stage_model() -> keras.Model:
    """A small functional model named like ResNet50's top (conv4_*, conv5_*, predictions), its
    weights moved off their initial values as training would."""
    inputs = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv3_block1_1_conv")(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv4_block1_1_conv")(x)
    x = keras.layers.BatchNormalization(name="conv4_block1_1_bn")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv5_block1_1_conv")(x)
    x = keras.layers.BatchNormalization(name="conv5_block1_1_bn")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    model.set_weights([w + rng.uniform(0.1, 0.2, w.shape) for w in model.get_weights()])
    return model


@pytest.mark.parametrize("randomize, prefixes", [
    ("head", ("predictions",)),
    ("top_block", ("predictions", "conv5_")),
    ("top_2_blocks", ("predictions", "conv5_", "conv4_")),
])
def test_randomized_copy_changes_exactly_the_chosen_layers(stage_model, randomize, prefixes):
    before = [w.copy() for w in stage_model.get_weights()]
    copy = EM.randomized_copy(stage_model, randomize, seed=3)
    assert sorted(EM.randomized_layer_names(stage_model, randomize)) == sorted(
        layer.name for layer in stage_model.layers if layer.weights and
        layer.name.startswith(prefixes))
    for trained, fresh in zip(stage_model.layers[1:], copy.layers[1:], strict=True):
        assert trained.name == fresh.name
        for a, b in zip(trained.get_weights(), fresh.get_weights(), strict=True):
            if trained.name.startswith(prefixes):
                assert not np.allclose(a, b), trained.name  # every variable re-initialised
            else:
                assert np.array_equal(a, b), trained.name
    # the trained model is untouched, and the same seed gives the same copy
    assert all(np.array_equal(a, b) for a, b in zip(before, stage_model.get_weights(), strict=True))
    again = EM.randomized_copy(stage_model, randomize, seed=3)
    assert all(np.array_equal(a, b) for a, b in
               zip(copy.get_weights(), again.get_weights(), strict=True))
    other = EM.randomized_copy(stage_model, randomize, seed=4)
    assert not np.array_equal(copy.get_layer("predictions").get_weights()[0],
                              other.get_layer("predictions").get_weights()[0])


def test_randomized_head_uses_its_initializers(stage_model):
    copy = EM.randomized_copy(stage_model, "head", seed=0)
    kernel, bias = copy.get_layer("predictions").get_weights()
    assert not bias.any()  # zeros initializer
    limit = math.sqrt(6 / (4 + 2))  # glorot_uniform for a 4 -> 2 kernel
    assert np.abs(kernel).max() <= limit
