"""The batched explanation paths give the maps of the per-image ones (tf-keras-vis's own classes,
one image per call, for the CAMs; one image per explain() call for SHAP and LIME), on the real
crackxai model (saved, reloaded) and rendered images.

Tolerances: the CAMs here are computed from a compiled pass over a batch instead of tf-keras-vis's
eager one-image pass, so float32 sums run in another order (oneDNN picks its kernels by batch
size); after the [0, 1] normalisation the maps agree to 1e-4. SHAP and LIME see the same model
outputs for the same perturbed images and their samplers are seeded per image, so they agree to
float32 rounding of the predictions.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from crackxai.data.synthetic import render
from crackxai.models.io import load_model
from crackxai.models.predictor import Predictor
from crackxai.models.resnet import build_model
from crackxai.xai import metrics as EM
from crackxai.xai import registry
from crackxai.xai.batching import lockstep, predict_stream
from crackxai.xai.cam import _linear_zoom_matrix, upsample

SIZE = 64
N_IMAGES = 3
LAYER = "conv3_block4_out"  # 8x8 at 64 px: the explain stage's default CAM layer


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.stack([render(np.random.default_rng([7, i]), crack=i % 2 == 0, size=SIZE)[0]
                     for i in range(N_IMAGES)])


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, images: np.ndarray) -> keras.Model:
    keras.utils.set_random_seed(1)
    m = build_model(2, SIZE, weights=None)
    head = m.get_layer("predictions")
    # every feature map evidence for class 1, scaled so its logit leads by ~1: maps with signal
    kernel = np.abs(keras.ops.convert_to_numpy(head.kernel)) * np.array([-1.0, 1.0], np.float32)
    features = keras.Model(m.inputs, m.get_layer("avg_pool").output).predict(images, verbose=0)
    head.kernel.assign(kernel / (features @ (kernel[:, 1] - kernel[:, 0])).mean())
    path = tmp_path_factory.mktemp("model") / "model.keras"
    m.save(path)
    return load_model(path)


TARGETS = np.array([1, 0, 1])  # class 0 has negative evidence only: Grad-CAM's all-zero case


def tf_keras_vis_maps(method: str, model: keras.Model, images: np.ndarray, targets: np.ndarray,
                      layer: str, max_n: int = -1) -> np.ndarray:
    """tf-keras-vis's own map of each image, one call per image (how the stage called it)."""
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.scorecam import Scorecam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    tool = {"gradcam": Gradcam, "gradcam_pp": GradcamPlusPlus, "scorecam": Scorecam,
            "faster_scorecam": Scorecam}[method](model, model_modifier=ReplaceToLinear())
    extra = {"max_N": max_n} if "scorecam" in method else {}
    keras.utils.disable_interactive_logging()  # Scorecam's model.predict progress bars
    try:
        return np.concatenate([
            np.asarray(tool(CategoricalScore([int(t)]), images[i:i + 1].astype(np.float32),
                            penultimate_layer=layer, seek_penultimate_conv_layer=False, **extra),
                       np.float32).reshape(1, SIZE, SIZE)
            for i, t in enumerate(targets)])
    finally:
        keras.utils.enable_interactive_logging()


@pytest.mark.parametrize(("method", "layer", "max_n"), [
    ("gradcam", LAYER, None),
    ("gradcam_pp", LAYER, None),
    ("faster_scorecam", LAYER, 10),
    pytest.param("scorecam", "conv2_block3_out", -1,  # every one of its 256 channels, 16x16
                 marks=pytest.mark.slow),
])
def test_batched_cams_are_tf_keras_vis_maps(method, layer, max_n, model, images):
    predictor = Predictor(model, batch_size=16)
    settings = {} if max_n is None else {"max_N": max_n}
    explainer = registry.create(method, model=model, predictor=predictor, layer=layer, **settings)
    ours = explainer.explain(images, TARGETS)
    theirs = tf_keras_vis_maps(method, model, images, TARGETS, layer, max_n or -1)
    assert ours.shape == theirs.shape == (N_IMAGES, SIZE, SIZE)
    assert all(m.std() > 0 for m in ours[TARGETS == 1]), "no signal to compare"
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    if "scorecam" in method:  # k masked images per image, all through the predictor
        channels = model.get_layer(layer).output.shape[-1]
        assert predictor.n_evals == N_IMAGES * (max_n if max_n > 0 else channels)
    # an image's map does not depend on the other images in the call
    np.testing.assert_allclose(explainer.explain(images[1:], TARGETS[1:]), ours[1:], atol=1e-5)


@pytest.mark.parametrize("method", ["shap", "lime"])
def test_batched_shap_and_lime_are_the_per_image_maps(method, model, images):
    settings = ({"max_evals": 40, "batch_size": 20} if method == "shap"
                else {"num_samples": 60, "batch_size": 20})
    explainer = registry.create(method, model=model, predictor=Predictor(model, batch_size=16),
                                seed=5, **settings)
    together = explainer.explain(images, TARGETS)
    # the former path: the library on the predictor itself, one image after the other
    alone = np.stack([explainer.map_of(explainer.explanation(im, int(t))) if method == "shap"
                      else explainer.map_of(explainer.explanation(im, int(t)), int(t))
                      for im, t in zip(images, TARGETS, strict=True)])
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-6 * np.abs(alone).max())


@pytest.mark.parametrize(("small", "large"), [((8, 8), (64, 64)), ((7, 5), (224, 100)),
                                              ((1, 3), (16, 16)), ((4, 4), (4, 4))])
def test_score_cam_upsampling_is_scipy_zoom(small, large):
    from scipy.ndimage import zoom

    maps = np.random.default_rng(0).random((*small, 6)).astype(np.float32)
    factor = (large[0] / small[0], large[1] / small[1], 1)
    theirs = zoom(maps, factor, order=1, mode="nearest")  # the former Score-CAM upsampling
    rows, cols = (_linear_zoom_matrix(a, b) for a, b in zip(small, large, strict=True))
    ours = upsample(maps, rows, cols)
    assert ours.dtype == np.float32 and ours.shape == theirs.shape == (*large, 6)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)  # float32 rounding


def test_faithfulness_of_many_maps_is_per_map_faithfulness(model, images):
    predictor = Predictor(model, batch_size=16)
    maps = np.random.default_rng(0).random((N_IMAGES, SIZE, SIZE))
    batched = EM.faithfulness_batch(predictor, images, maps, TARGETS, "blur", steps=5, seed=3)
    assert predictor.n_evals == N_IMAGES * 2 * 6
    for i in range(N_IMAGES):
        one = EM.faithfulness(predictor, images[i], maps[i], int(TARGETS[i]), "blur", steps=5,
                              seed=3)
        assert batched[i] == pytest.approx(one, abs=1e-6)


def test_predict_stream_sends_full_batches():
    sizes: list[int] = []

    def predict(x: np.ndarray) -> np.ndarray:
        sizes.append(len(x))
        return x.reshape(len(x), -1)[:, :2]

    chunks = [np.full((n, 2, 2, 3), i, np.float32) for i, n in enumerate([3, 7, 1, 10, 4])]
    out = predict_stream(predict, chunks, batch_size=8)
    assert sizes == [8, 8, 8, 1]
    np.testing.assert_array_equal(out[:, 0], np.concatenate([c[:, 0, 0, 0] for c in chunks]))


def test_lockstep_gives_each_call_its_own_rng_and_joins_the_model_calls():
    sizes: list[int] = []

    def predict(x: np.ndarray) -> np.ndarray:
        sizes.append(len(x))
        return x * 2.0

    def work(n: int, model) -> list[float]:  # noqa: ANN001 - the lockstep's model function
        np.random.seed(n)
        draws = []
        for _ in range(3):
            draws.append(float(model(np.full((n, 1), np.random.rand()))[0, 0]))
        return draws

    np.random.seed(99)
    caller = np.random.get_state()[1].copy()
    together = lockstep([lambda m, n=n: work(n, m) for n in (1, 2, 3)], predict, batch_size=4)
    assert np.array_equal(np.random.get_state()[1], caller)  # the caller's RNG untouched
    alone = [work(n, predict) for n in (1, 2, 3)]
    assert together == alone
    sizes_alone = sizes[-9:]
    assert sizes[:-9] == [4, 2] * 3 and sizes_alone == [1, 1, 1, 2, 2, 2, 3, 3, 3]

    def broken(model) -> None:  # noqa: ANN001
        model(np.zeros((1, 1)))
        raise ValueError("inside the library")

    with pytest.raises(ValueError, match="inside the library"):
        lockstep([lambda m: work(1, m), broken], predict, batch_size=4)
