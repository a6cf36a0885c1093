"""The explanation methods and the shared Predictor, on the real crackxai model (saved, reloaded).

64x64 inputs, not 32x32: at 32x32 the last feature map (conv5_block3_out) is 1x1, so every CAM
is constant. The head is set so that every feature map is evidence FOR class 1 and against class 0
(a random head can make Grad-CAM's ReLU zero everywhere): class 1's Grad-CAM is then a real map
and class 0's is all zeros, deterministically.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest

from crackxai.config import ExplainConfig, default_config
from crackxai.core.errors import CrackxaiError
from crackxai.data.synthetic import render
from crackxai.models.io import load_model
from crackxai.models.predictor import Predictor
from crackxai.models.resnet import build_model
from crackxai.xai import registry
from crackxai.xai.cam import find_last_conv_layer

SIZE = 64
METHODS = registry.NAMES


def explain(method, model, predictor, images, targets, cfg, seed, layer=None) -> np.ndarray:
    """One explain() call with the method built from an ExplainConfig, as the explain stage does."""
    section = getattr(cfg, method, None)  # explain.<method>, if the method has settings
    section = dataclasses.asdict(section) if section is not None else {}
    explainer = registry.create(method, model=model, predictor=predictor, seed=seed,
                                layer=layer or cfg.layer, cam_min_size=cfg.cam_min_size, **section)
    return explainer.explain(images, targets)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.stack([render(np.random.default_rng(i), crack=i == 0, size=SIZE)[0]
                     for i in range(2)])


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, images: np.ndarray) -> keras.Model:
    keras.utils.set_random_seed(0)
    m = build_model(2, SIZE, weights=None)
    head = m.get_layer("predictions")
    kernel = np.abs(keras.ops.convert_to_numpy(head.kernel)) * np.array([-1.0, 1.0], np.float32)
    # scaled so the class-1 logit leads by ~1 (p1 ~ 0.7): a saturated softmax hides every change
    features = keras.Model(m.inputs, m.get_layer("avg_pool").output).predict(images, verbose=0)
    kernel /= (features @ (kernel[:, 1] - kernel[:, 0])).mean()
    head.kernel.assign(kernel)
    path = tmp_path_factory.mktemp("model") / "model.keras"
    m.save(path)
    return load_model(path)


@pytest.fixture(scope="module")
def predictor(model: keras.Model) -> Predictor:
    return Predictor(model, batch_size=16)


def small_cfg() -> ExplainConfig:
    cfg = default_config().explain
    cfg.shap.max_evals = 40
    cfg.shap.batch_size = 20
    cfg.lime.num_samples = 40
    cfg.lime.batch_size = 20
    cfg.scorecam.max_N = 8  # of 2048 feature maps: keeps the test fast
    cfg.faster_scorecam.max_N = 4
    cfg.cam_min_size = 1  # conv5_block3_out (2x2), where the head above fixes the evidence's sign
    return cfg


ONES = np.array([1, 1])


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_finite_varying_maps(method, model, predictor, images):
    maps = explain(method, model, predictor, images, ONES, small_cfg(), seed=0)
    assert maps.shape == (2, SIZE, SIZE) and maps.dtype == np.float32
    assert np.isfinite(maps).all()
    assert all(m.std() > 0 for m in maps), f"{method} gave a constant map"


@pytest.mark.parametrize("method", ["shap", "lime", "gradcam"])
def test_same_seed_same_maps(method, model, predictor, images):
    cfg = small_cfg()
    a = explain(method, model, predictor, images, ONES, cfg, seed=3)
    b = explain(method, model, predictor, images, ONES, cfg, seed=3)
    np.testing.assert_array_equal(a, b)


def test_lime_depends_on_its_seed_and_not_on_the_other_images(model, predictor, images):
    cfg = small_cfg()
    both = explain("lime", model, predictor, images, ONES, cfg, seed=3)
    assert not np.array_equal(both, explain("lime", model, predictor, images, ONES, cfg, seed=4))
    alone = explain("lime", model, predictor, images[1:], ONES[1:], cfg, seed=3)
    np.testing.assert_array_equal(both[1], alone[0])


def test_shap_leaves_numpy_global_rng_alone(model, predictor, images):
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    explain("shap", model, predictor, images[:1], ONES[:1], small_cfg(), seed=0)
    assert np.random.rand() == expected


def test_blur_masker(model, predictor, images):
    cfg = small_cfg()
    cfg.shap.masker = "blur(5, 5)"
    maps = explain("shap", model, predictor, images[:1], ONES[:1], cfg, seed=0)
    assert np.isfinite(maps).all() and maps.std() > 0


def test_target_changes_the_map(model, predictor, images):
    cfg = small_cfg()
    # two softmax classes: p0 = 1 - p1, so SHAP values of class 0 are those of class 1 negated
    s1 = explain("shap", model, predictor, images[:1], [1], cfg, seed=0)
    s0 = explain("shap", model, predictor, images[:1], [0], cfg, seed=0)
    np.testing.assert_allclose(s0, -s1, atol=1e-6)
    g1 = explain("gradcam", model, predictor, images[:1], [1], cfg, seed=0)
    g0 = explain("gradcam", model, predictor, images[:1], [0], cfg, seed=0)
    assert g1.max() > 0 and not g0.any()  # class 0 has only negative evidence: ReLU'd away


def test_cam_layer_is_the_last_feature_map_of_at_least_cam_min_size(model):
    assert find_last_conv_layer(model) == "conv5_block3_out"  # 2x2 at 64 px
    assert find_last_conv_layer(model, min_size=4) == "conv4_block6_out"
    default_min_size = default_config().explain.cam_min_size
    assert find_last_conv_layer(model, min_size=default_min_size) == "conv3_block4_out"
    assert find_last_conv_layer(model, min_size=1000) == "conv5_block3_out"  # none: the last
    full = keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3))
    assert find_last_conv_layer(full, min_size=7) == "conv5_block3_out"  # 7x7 at 224 px
    vgg = keras.applications.VGG16(weights=None, include_top=False, input_shape=(None, None, 3))
    assert find_last_conv_layer(vgg, min_size=7) == "block5_conv3"  # unknown size: the last


def test_last_conv_layer_and_layer_override(model, predictor, images):
    cfg = small_cfg()
    default = explain("gradcam", model, predictor, images[:1], [1], cfg, seed=0)
    conv4 = explain("gradcam", model, predictor, images[:1], [1], cfg, seed=0,
                    layer="conv4_block6_out")
    assert conv4.shape == default.shape and not np.allclose(conv4, default)
    cfg.layer = "conv4_block6_out"  # explain.layer does the same
    np.testing.assert_array_equal(explain("gradcam", model, predictor, images[:1], [1], cfg, 0),
                                  conv4)


@pytest.mark.parametrize("layer", ["conv9_nonexistent", "avg_pool"])
def test_bad_layer_is_a_clear_error(layer, model, predictor, images):
    with pytest.raises(CrackxaiError, match=r"CAM layer .*conv5_block3_out"):
        explain("gradcam", model, predictor, images[:1], [1], small_cfg(), seed=0, layer=layer)


def test_unknown_method_and_bad_target(model, predictor, images):
    with pytest.raises(CrackxaiError, match="Unknown explanation method 'occlusion'.*gradcam_pp"):
        explain("occlusion", model, predictor, images, ONES, small_cfg(), seed=0)
    with pytest.raises(CrackxaiError, match="Target class 2 does not exist"):
        explain("gradcam", model, predictor, images[:1], [2], small_cfg(), seed=0)


def test_predictor_matches_model_predict_and_counts(model, images):
    predictor = Predictor(model, batch_size=3)
    batch = np.concatenate([images, images[::-1], images[:1]])  # 5 images: batches of 3 + 2
    expected = model.predict(batch.astype(np.float32), verbose=0)
    probs = predictor(batch)
    assert probs.dtype == np.float32 and probs.shape == (5, 2)
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    np.testing.assert_allclose(predictor(images[0]), expected[:1], atol=1e-5)  # one (H, W, 3)
    assert predictor.n_evals == 6


def test_scorecam_through_the_predictor_equals_replace_to_linear(model, images):
    """Our Score-CAM (log-probabilities through the shared Predictor) is tf-keras-vis's own
    Scorecam with ReplaceToLinear, and its evaluations are counted."""
    from tf_keras_vis.scorecam import Scorecam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    predictor = Predictor(model)
    cfg = small_cfg()
    ours = explain("faster_scorecam", model, predictor, images[:1], [1], cfg, seed=0)
    assert predictor.n_evals == cfg.faster_scorecam.max_N
    keras.utils.disable_interactive_logging()
    try:
        theirs = Scorecam(model, model_modifier=ReplaceToLinear())(
            CategoricalScore([1]), images[:1].astype(np.float32), max_N=cfg.faster_scorecam.max_N,
            penultimate_layer="conv5_block3_out", seek_penultimate_conv_layer=False)
    finally:
        keras.utils.enable_interactive_logging()
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_gradcam_follows_the_model_weights_and_leaves_its_softmax(model, predictor, images):
    before = explain("gradcam", model, predictor, images[:1], [1], small_cfg(), seed=0)
    assert np.allclose(predictor(images).sum(1), 1.0)  # the model itself keeps its softmax
    assert model.get_layer("predictions").activation is keras.activations.softmax
    head = model.get_layer("predictions").kernel
    original = keras.ops.convert_to_numpy(head)
    try:
        head.assign(-original)  # now every feature map is evidence AGAINST class 1
        after = explain("gradcam", model, predictor, images[:1], [1], small_cfg(), seed=0)
    finally:
        head.assign(original)
    assert before.max() > 0 and not after.any()


@pytest.mark.slow
def test_partition_tree_is_shaps_own():
    import shap

    from crackxai.xai.shap import _masker_class

    for shape in [(8, 8, 3), (64, 48, 3)]:
        ours = _masker_class()("inpaint_telea", shape).clustering
        np.testing.assert_array_equal(ours, shap.maskers.Image("inpaint_telea", shape).clustering)
