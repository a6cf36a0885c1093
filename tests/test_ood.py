"""Out-of-distribution detection (crackxai.models.ood): inputs unlike the training data are
flagged, not scored.

Unit tests of the detector on hand-made feature clouds (exact Mahalanobis, the conformal
threshold, save/load, bad files); then real components: the train stage fits and saves the
detector beside a small real ResNet50 trained on synthetic concrete, and noise, blank frames and
scikit-image's sample photos are flagged by it, in explain_image and evaluate_folder too; a slow
test does the same on the real images of ../shared/crack-sample and checks how many real test
images are flagged.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest

from crackxai.core.errors import CrackxaiError
from crackxai.core.paths import OOD_FILE, ood_file_for
from crackxai.models.ood import (
    FORMAT_VERSION,
    OodDetector,
    conformal_threshold,
    detector_path,
    fit_detector,
    load_detector_for,
)

# ----------------------------------------------------------------------------------------------
# The detector on hand-made feature clouds
# ----------------------------------------------------------------------------------------------

DIM = 12


def with_pixel_std(stats: np.ndarray, pixel_std: float = 10.0) -> np.ndarray:
    """FeatureExtractor's layout: the statistics, then the image's pixel standard deviation."""
    return np.column_stack([stats, np.full(len(stats), pixel_std)])


def clouds(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two classes, Gaussian, one shared correlated covariance, means 4 apart; pixel std 5-15."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(99).normal(size=(DIM, DIM)) / math.sqrt(DIM)
    labels = np.arange(n) % 2
    means = np.stack([np.zeros(DIM), np.full(DIM, 4 / math.sqrt(DIM))])
    stats = rng.normal(size=(n, DIM)) @ mix + means[labels]
    return np.column_stack([stats, rng.uniform(5, 15, n)]), labels


@pytest.fixture(scope="module")
def fitted() -> tuple[OodDetector, np.ndarray, np.ndarray]:
    train, labels = clouds(600, 0)
    val, _ = clouds(400, 1)
    return fit_detector(train, val, 0.95, labels, max_components=DIM), train, val


def test_distance_is_the_mahalanobis_distance_to_the_nearest_class_mean(fitted):
    from sklearn.covariance import LedoitWolf

    detector, train, _ = fitted
    _, labels = clouds(600, 0)
    stats = train[:, :-1]
    means = np.stack([stats[labels == c].mean(0) for c in (0, 1)])
    precision = np.linalg.inv(LedoitWolf(assume_centered=True).fit(stats - means[labels])
                              .covariance_)
    points, _ = clouds(50, 2)
    z = [points[:, :-1] - m for m in means]
    expected = np.sqrt(np.min([np.einsum("ij,jk,ik->i", d, precision, d) for d in z], axis=0))
    np.testing.assert_allclose(detector.distance(points), expected, rtol=1e-4)


def test_threshold_lets_the_quantile_of_val_pass_and_flags_far_points(fitted):
    detector, _, val = fitted
    passed = np.mean(~detector.flags(val))
    assert 0.95 <= passed <= 0.95 + 2 / len(val)  # conformal: ceil(401 * 0.95) = 381 of 400
    test, _ = clouds(2000, 3)  # new in-distribution points: about 5% flagged, not more
    assert np.mean(detector.flags(test)) < 0.07
    rng = np.random.default_rng(4)
    far = with_pixel_std(rng.normal(size=(100, DIM)) * 8)  # much wider than the training cloud
    assert detector.flags(far).all()
    centres = with_pixel_std(np.stack([np.zeros(DIM), np.full(DIM, 4 / math.sqrt(DIM))]))
    assert not detector.flags(centres).any()  # each class's centre: distance ~0
    assert detector.distance(centres).max() < 0.2 * detector.threshold


def test_a_blank_frame_is_flagged_even_at_the_centre(fitted):
    """No texture (pixel std below half the training minimum, just above 5 here): flagged by its
    own rule, wherever its statistics lie."""
    detector, train, _ = fitted
    assert detector.min_pixel_std == pytest.approx(train[:, -1].min() / 2)
    centre = np.zeros((1, DIM))
    assert detector.flags(with_pixel_std(centre, 0.0)).all()
    assert detector.blank(with_pixel_std(centre, 2.0)).all()
    assert not detector.flags(with_pixel_std(centre, 3.0)).any()


def test_conformal_threshold_is_the_right_order_statistic():
    d = np.arange(1.0, 21.0)[::-1]  # 20 distances, unsorted
    assert conformal_threshold(d, 0.9) == 19.0  # ceil(21 * 0.9) = 19th smallest
    assert conformal_threshold(d, 0.99) == 20.0  # beyond n: the largest
    with pytest.raises(CrackxaiError, match="empty validation split"):
        conformal_threshold(np.array([]), 0.95)


def test_fewer_components_than_dimensions_still_separate(fitted):
    """The stored low-rank form (top eigenvectors + one residual variance) keeps the file small;
    it must still pass val at the quantile and flag far points."""
    _, train, val = fitted
    _, labels = clouds(600, 0)
    small = fit_detector(train, val, 0.9, labels, max_components=3)
    assert small.components.shape == (DIM, 3)
    assert 0.9 <= np.mean(~small.flags(val)) <= 0.9 + 2 / len(val)
    assert small.flags(with_pixel_std(np.random.default_rng(5).normal(size=(50, DIM)) * 8)).all()


def test_save_load_round_trip(fitted, tmp_path):
    detector, _, val = fitted
    path = tmp_path / "model.ood.npz"
    detector.save(path)
    loaded = OodDetector.load(path)
    np.testing.assert_allclose(loaded.distance(val), detector.distance(val), rtol=1e-5)
    assert (loaded.threshold, loaded.quantile) == (detector.threshold, detector.quantile)
    assert not list(tmp_path.glob(".*"))  # atomic write: no temporary file left


def test_wrong_feature_size_is_a_clear_error(fitted):
    detector, _, _ = fitted
    with pytest.raises(CrackxaiError, match=r"13 features per image.*another model"):
        detector.distance(np.zeros((2, 2048)))


@pytest.mark.parametrize("damage", ["truncated", "not_npz", "old_version", "missing_field"])
def test_bad_detector_file_is_a_one_paragraph_error(damage, fitted, tmp_path):
    detector, _, _ = fitted
    path = tmp_path / "model.ood.npz"
    detector.save(path)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "not_npz":
        path.write_text("hello")
    else:
        with np.load(path) as npz:
            arrays = dict(npz)
        meta = json.loads(str(arrays["meta"]))
        if damage == "old_version":
            meta["version"] = FORMAT_VERSION + 1
        else:
            del meta["threshold"]
        arrays["meta"] = np.array(json.dumps(meta))
        np.savez(path, **arrays)
    with pytest.raises(CrackxaiError) as err:
        OodDetector.load(path)
    message = str(err.value)
    assert str(path) in message and "dvc checkout" in message and "\n" not in message
    assert {"truncated": "corrupt", "not_npz": "corrupt", "old_version": "format version",
            "missing_field": "lacks a field"}[damage] in message
    with pytest.raises(CrackxaiError):  # load_detector_for does not hide a corrupt file
        load_detector_for(tmp_path / "model.keras")


def test_missing_detector_is_a_warning_not_an_error(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="crackxai"):
        assert load_detector_for(tmp_path / "model.keras") is None
    assert "no out-of-distribution detector beside the model" in caplog.text
    with pytest.raises(CrackxaiError, match="not found"):
        OodDetector.load(tmp_path / "model.ood.npz")


def test_detector_file_sits_beside_the_model():
    assert ood_file_for("models/model.keras") == Path("models/model.ood.npz")
    assert detector_path(Path("/x/run.3.keras")) == Path("/x/run.3.ood.npz")
    assert Path("models/model.ood.npz") == OOD_FILE


# ----------------------------------------------------------------------------------------------
# A real model: the train stage fits the detector; noise, blank frames and photos are flagged
# ----------------------------------------------------------------------------------------------

SIZE = 32
CLASSES = ["Negative", "Positive"]


def outsiders(size: int) -> dict[str, np.ndarray]:
    """Images unlike concrete surfaces, as (N, size, size, 3) uint8 0-255 RGB: uniform noise, an
    all-black and an all-white frame, and scikit-image's bundled photos (no download)."""
    import cv2
    from skimage import data

    def fit(photo: np.ndarray) -> np.ndarray:
        return cv2.resize(photo, (size, size), interpolation=cv2.INTER_AREA)[None]

    return {"noise": np.random.default_rng(0).integers(0, 256, (20, size, size, 3), np.uint8),
            "black": np.zeros((1, size, size, 3), np.uint8),
            "white": np.full((1, size, size, 3), 255, np.uint8),
            "astronaut": fit(data.astronaut()), "coffee": fit(data.coffee())}


def write_concrete(root: Path, sizes: dict[str, int], size: int = SIZE) -> None:
    """data/processed of the procedural concrete surfaces (crackxai.data.synthetic), rendered at
    64 px and shrunk as preprocess does."""
    import hashlib

    import cv2
    import pandas as pd

    from crackxai.data.processed import write_classes, write_split
    from crackxai.data.synthetic import render

    out = root / "data" / "processed"
    out.mkdir(parents=True)
    write_classes(out, CLASSES, size)
    for i, (split, n) in enumerate(sizes.items()):
        labels = np.arange(n, dtype=np.int64) % 2
        rng = np.random.default_rng(i)
        images = np.stack([cv2.resize(render(rng, bool(k), 64)[0], (size, size),
                                      interpolation=cv2.INTER_AREA) for k in labels])
        records = pd.DataFrame({
            "path": [f"{split}/{j}.jpg" for j in range(n)], "label": labels,
            "class": [CLASSES[k] for k in labels],
            "sha256": [hashlib.sha256(im.tobytes()).hexdigest() for im in images],
            "has_mask": False})
        write_split(out, split, images, labels, records)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The train stage, 2 epochs from random init on 96 synthetic concrete images at 32 px."""
    import shutil

    from crackxai.config import load_config
    from crackxai.stages.train import main
    from tests.test_train import ENV_LEAKS, REPO

    root = tmp_path_factory.mktemp("ood")
    shutil.copytree(REPO / "conf", root / "conf")
    write_concrete(root, {"train": 96, "val": 48, "test": 16})
    with pytest.MonkeyPatch.context() as mp:
        for var in ENV_LEAKS:
            mp.delenv(var, raising=False)
        mp.chdir(root)
        main(load_config(["train.epochs=2", "train.batch_size=16", "train.patience=2",
                          "tracking.registered_model=null"]))
    return root


@pytest.fixture(scope="module")
def model_and_detector(trained):
    from crackxai.models.io import load_model

    model = load_model(trained / "models" / "model.keras")
    return model, load_detector_for(trained / "models" / "model.keras", model)


def test_train_stage_saves_and_logs_the_detector(trained, model_and_detector):
    import mlflow

    from crackxai.models.ood import FeatureExtractor, weights_fingerprint

    model, detector = model_and_detector
    assert detector is not None and detector.quantile == 0.99  # train.ood_quantile's default
    assert detector.layer == "conv2_block3_out" and detector.num_features == 2 * 256 + 1
    assert detector.fingerprint == weights_fingerprint(model)
    assert (trained / OOD_FILE).stat().st_size < 1e6  # a few hundred kB
    val = np.load(trained / "data" / "processed" / "val_images.npy")
    probs, features = FeatureExtractor(model, 16)(val)
    np.testing.assert_allclose(probs, model.predict(val, verbose=0), atol=1e-5)
    assert np.mean(~detector.flags(features)) >= 0.99  # the conformal threshold on val
    run_id = json.loads((trained / "models" / "mlflow_run.json").read_text())["run_id"]
    mlflow.set_tracking_uri(f"sqlite:///{trained / 'mlflow.db'}")
    logged = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="ood/model.ood.npz",
                                                 dst_path=str(trained / "download"))
    assert Path(logged).read_bytes() == (trained / OOD_FILE).read_bytes()


def test_noise_blank_frames_and_photos_are_flagged(model_and_detector):
    from crackxai.models.ood import FeatureExtractor

    model, detector = model_and_detector
    extractor = FeatureExtractor(model, 32)
    for name, images in outsiders(SIZE).items():
        features = extractor(images)[1]  # too far, or (black, white) a blank frame
        assert detector.flags(features).all(), (name, detector.distance(features),
                                                detector.threshold, detector.blank(features))


def test_a_detector_fit_on_other_weights_is_ignored(trained, model_and_detector, tmp_path, caplog):
    import shutil

    from crackxai.models.resnet import build_model

    other = build_model(2, SIZE, seed=1)
    shutil.copy(trained / OOD_FILE, tmp_path / "model.ood.npz")
    with caplog.at_level(logging.WARNING, logger="crackxai"):
        assert load_detector_for(tmp_path / "model.keras", other) is None
    assert "fit on other weights" in caplog.text


def test_explain_image_reports_an_outsider_instead_of_a_class(trained, project, capsys):
    import cv2

    from crackxai.tools.explain_image import main as explain_main

    model = trained / "models" / "model.keras"
    photo = project / "astronaut.png"
    cv2.imwrite(str(photo), outsiders(SIZE)["astronaut"][0][..., ::-1])
    explain_main(["--model", str(model), "--image", str(photo), "--methods", "gradcam",
                  "--out", str(project / "astro")])
    out = capsys.readouterr().out
    assert "out of distribution (distance" in out and "Top-" not in out
    report = json.loads((project / "astro" / "predictions.json").read_text())
    assert report["verdict"] == "out of distribution" and report["top"] == []
    assert report["ood"]["distance"] > report["ood"]["threshold"]
    assert not (project / "astro" / "gradcam.png").exists()  # not explained

    concrete = project / "concrete.png"  # a val image: in distribution, scored and explained
    cv2.imwrite(str(concrete), np.load(trained / "data" / "processed" / "val_images.npy")[0]
                [..., ::-1])
    explain_main(["--model", str(model), "--image", str(concrete), "--methods", "gradcam",
                  "--out", str(project / "concrete")])
    report = json.loads((project / "concrete" / "predictions.json").read_text())
    assert report["ood"]["out_of_distribution"] is False
    assert report["verdict"] == report["top"][0]["name"]  # the predicted class
    assert (project / "concrete" / "gradcam.png").is_file()


def test_evaluate_folder_counts_outsiders(trained, tmp_path):
    import cv2
    import pandas as pd

    from crackxai.tools.evaluate_folder import evaluate_folder

    folder = tmp_path / "folder"
    val = np.load(trained / "data" / "processed" / "val_images.npy")
    labels = np.load(trained / "data" / "processed" / "val_labels.npy")
    for k, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True)
        for i in np.flatnonzero(labels == k)[:4]:
            cv2.imwrite(str(folder / name / f"{i:03d}.png"), val[i][..., ::-1])
    extra = outsiders(SIZE)
    for name in ("black", "astronaut", "coffee"):
        cv2.imwrite(str(folder / "Positive" / f"z_{name}.png"), extra[name][0][..., ::-1])
    metrics = evaluate_folder(trained / "models" / "model.keras", folder, tmp_path / "out",
                              gallery_size=0)
    assert metrics["ood"]["flagged"] >= 3 and metrics["ood"]["threshold"] > 0
    table = pd.read_csv(tmp_path / "out" / "predictions.csv")
    outsider = table["path"].str.contains("z_")
    assert (table.loc[outsider, "verdict"] == "out of distribution").all()
    assert metrics["ood"]["rate"] == pytest.approx(
        (table["verdict"] == "out of distribution").mean())


@pytest.mark.slow
def test_real_crack_images_pass_and_outsiders_are_flagged(tmp_path, crack_sample):
    """experiment=real_sample (download -> preprocess -> train) on ../shared/crack-sample: at most
    5% of the real test images are flagged; noise, blank frames and the photos all are."""
    import shutil

    from crackxai.config import load_config
    from crackxai.data.processed import load_split
    from crackxai.models.io import load_model
    from crackxai.models.ood import FeatureExtractor
    from crackxai.stages import download, preprocess, train
    from tests.test_train import ENV_LEAKS, REPO

    shutil.copytree(REPO / "conf", tmp_path / "conf")
    with pytest.MonkeyPatch.context() as mp:
        for var in ENV_LEAKS:
            mp.delenv(var, raising=False)
        mp.chdir(tmp_path)
        cfg = load_config(["experiment=real_sample", f"data.path={crack_sample}",
                           "train.epochs=4", "tracking.registered_model=null"])
        for stage in (download, preprocess, train):
            stage.main(cfg)
    model = load_model(tmp_path / "models" / "model.keras")
    detector = load_detector_for(tmp_path / "models" / "model.keras", model)
    extractor = FeatureExtractor(model, 64)
    test = load_split("test", tmp_path / "data" / "processed")
    probs, features = extractor(test.images)
    assert np.mean(probs.argmax(1) == test.labels) > 0.9
    assert np.mean(detector.flags(features)) <= 0.05
    for name, images in outsiders(model.input_shape[1]).items():
        assert detector.flags(extractor(images)[1]).all(), name
