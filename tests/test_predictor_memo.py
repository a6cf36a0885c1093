"""MemoPredictor: remembered images are not evaluated again, outputs equal the plain Predictor's,
and its head-sharing view predicts for a copy with a re-initialised head as that copy does."""

from __future__ import annotations

import numpy as np
import pytest

from crackxai.models.predictor import MemoPredictor, Predictor
from crackxai.xai import metrics as EM


@pytest.fixture(scope="module")
def model():
    import keras

    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv5_block1_1_conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = keras.layers.Dropout(0.5, name="head_dropout")(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="predictions")(x)
    net = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    net.set_weights([w + rng.uniform(-0.5, 0.5, w.shape) for w in net.get_weights()])
    return net


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 16, 16, 3)).astype(np.uint8)


def test_outputs_equal_the_plain_predictor_and_repeats_cost_nothing(model):
    x = images(23)
    memo, plain = MemoPredictor(model, batch_size=8), Predictor(model, batch_size=8)
    first = memo(x)
    np.testing.assert_allclose(first, plain(x), rtol=1e-6, atol=1e-7)
    assert (memo.n_evals, memo.n_computed) == (23, 23)
    # the same images again, shuffled and mixed with new ones: only the new ones are computed
    mixed = np.concatenate([x[::-1], images(5, seed=1)])
    again = memo(mixed)
    assert (memo.n_evals, memo.n_computed) == (51, 28)
    np.testing.assert_array_equal(again[:23], first[::-1])
    np.testing.assert_allclose(again[23:], plain(mixed[23:]), rtol=1e-6, atol=1e-7)
    # one image (H, W, 3) and an empty batch
    np.testing.assert_array_equal(memo(x[3]), first[3:4])
    assert memo(x[:0]).shape == (0, 2)


def test_dtype_is_part_of_the_key(model):
    memo = MemoPredictor(model, batch_size=8)
    x = images(4)
    memo(x)
    np.testing.assert_allclose(memo(x.astype(np.float32)), memo(x), rtol=1e-6)
    assert memo.n_computed == 8  # float32 copies are other bytes: computed, same values


def test_capacity_forgets_the_least_recently_used(model):
    memo = MemoPredictor(model, batch_size=8, capacity=10)
    x = images(12)
    memo(x[:10])
    memo(x[:2])  # used again: now the most recent
    memo(x[10:12])  # evicts x[2], x[3]
    before = memo.n_computed
    memo(x[:2])
    memo(x[4:12])
    assert memo.n_computed == before
    memo(x[2:4])
    assert memo.n_computed == before + 2


def test_head_sharing_view_equals_the_copy(model):
    copy = EM.randomized_copy(model, "head", seed=3)
    memo = MemoPredictor(model, batch_size=8)
    view = memo.sharing_features(copy)
    x = images(19)
    expected = Predictor(copy, batch_size=8)(x)
    assert not np.allclose(expected, memo(x))  # the head really differs
    computed = memo.n_computed
    np.testing.assert_allclose(view(x), expected, rtol=1e-5, atol=1e-6)
    assert memo.n_computed == computed  # no backbone pass: all remembered
    assert view.n_evals == 19 and view.num_classes == 2
    fresh = images(3, seed=9)  # not seen: computed once, remembered for the trained model too
    np.testing.assert_allclose(view(fresh), Predictor(copy)(fresh), rtol=1e-5, atol=1e-6)
    assert memo.n_computed == computed + 3
    memo(fresh)
    assert memo.n_computed == computed + 3


def test_head_sharing_view_of_a_float64_model():
    """train.precision=float64 models (numerics checks) keep float64 features: the view takes
    them as they are and answers float32 like every predictor."""
    import keras

    keras.mixed_precision.set_global_policy("float64")
    try:
        inputs = keras.Input((16, 16, 3))
        x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        net = keras.Model(inputs, keras.layers.Dense(2, activation="softmax",
                                                     name="predictions")(x))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    copy = EM.randomized_copy(net, "head", seed=3)
    view = MemoPredictor(net, batch_size=8).sharing_features(copy)
    x = images(5)
    got = view(x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, Predictor(copy)(x), rtol=1e-6, atol=1e-7)
