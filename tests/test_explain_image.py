"""`python -m crackxai.explain_image` end to end, in-process: a saved 3-class crackxai model, a
named ImageNet classifier with random weights, and bad inputs (exit 2, one-line error)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest

from crackxai.data.synthetic import render
from crackxai.models.resnet import build_model, imagenet_cache_path
from crackxai.tools.explain_image import main
from crackxai.xai.registry import NAMES as METHODS

TINY = ["explain.shap.max_evals=30", "explain.shap.batch_size=15", "explain.lime.num_samples=30",
        "explain.lime.batch_size=15", "explain.scorecam.max_N=4", "explain.faster_scorecam.max_N=2"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-class crackxai model with its classes.json beside it."""
    folder = tmp_path_factory.mktemp("model")
    keras.utils.set_random_seed(0)
    build_model(3, 32, weights=None).save(folder / "model.keras")
    (folder / "classes.json").write_text(json.dumps({"classes": ["asphalt", "brick", "concrete"],
                                                     "image_size": 32}))
    return folder


@pytest.fixture(scope="module")
def image_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A non-square JPEG, so it is resized to the model's input."""
    rgb = render(np.random.default_rng(1), crack=True, size=96)[0][:, :80]
    path = tmp_path_factory.mktemp("images") / "wall.jpg"
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_pipeline_model_all_methods(project, capsys, model_dir, image_file):
    code, out, err = run(capsys, "--model", model_dir / "model.keras", "--image", image_file,
                         "--target", "2", *TINY)
    assert code == 0, err
    folder = project / "reports" / "explain_image" / "wall"  # the default --out
    for method in METHODS:
        assert (folder / f"{method}.png").is_file()
        attribution = np.load(folder / f"{method}.npy")
        assert attribution.shape == (32, 32) and np.isfinite(attribution).all()
    for extra in ("grid.png", "shap_values.png", "lime_mask.png"):
        assert (folder / extra).stat().st_size > 0
    report = json.loads((folder / "predictions.json").read_text())
    assert report["target"] == 2 and report["target_name"] == "concrete"
    # at 32 px conv5_block3_out is 1x1: the last map >= explain.cam_min_size (7) is conv2's 8x8
    assert report["layer"] == "conv2_block3_out" and report["input_size"] == [32, 32]
    assert [t["name"] for t in report["top"]] != [] and len(report["top"]) == 3  # all 3 classes
    assert "Top-3 predictions" in out
    for name in ("asphalt", "brick", "concrete"):
        assert name in out
    assert abs(sum(t["probability"] for t in report["top"]) - 1.0) < 1e-4


def test_named_imagenet_model_with_random_weights(project, capsys, image_file, tmp_path):
    out_dir = tmp_path / "vgg"
    code, out, err = run(capsys, "--model", "vgg16", "--weights", "none", "--size", "32",
                         "--image", image_file, "--methods", "gradcam,faster_scorecam,lime",
                         "--out", out_dir, *TINY)
    assert code == 0, err
    assert "Top-5 predictions" in out
    report = json.loads((out_dir / "predictions.json").read_text())
    assert report["layer"] == "block3_conv3" and len(report["top"]) == 5  # 8x8 at 32 px
    assert sorted(p.name for p in out_dir.glob("*.npy")) == [
        "faster_scorecam.npy", "gradcam.npy", "lime.npy"]
    assert (out_dir / "grid.png").is_file()


def test_imagenet_weights_missing_is_a_clear_error(project, capsys, image_file, monkeypatch):
    cached = imagenet_cache_path().parent / "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
    if cached.is_file():
        pytest.skip(f"VGG16 ImageNet weights are cached at {cached}")
    import socket

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(socket, "create_connection", offline)  # never download 500 MB in a test
    code, _, err = run(capsys, "--model", "vgg16", "--image", image_file)
    assert code == 2
    assert "not cached at" in err and "--weights none" in err and "Traceback" not in err


@pytest.mark.parametrize("case", ["missing_model", "missing_image", "unreadable_image",
                                  "unknown_method", "bad_target", "bad_layer"])
def test_bad_inputs_exit_2_with_one_line(case, project, capsys, model_dir, image_file):
    garbage = project / "notes.jpg"
    garbage.write_bytes(b"this is not an image at all" * 10)
    model, image, extra = model_dir / "model.keras", image_file, []
    expected = {
        "missing_model": "no such model file",
        "missing_image": "no such file",
        "unreadable_image": "not a usable image",
        "unknown_method": "unknown method",
        "bad_target": "the model has 3 classes",
        "bad_layer": "CAM layer 'conv9'",
    }[case]
    if case == "missing_model":
        model = project / "models" / "nope.keras"
    elif case == "missing_image":
        image = project / "nope.png"
    elif case == "unreadable_image":
        image = garbage
    elif case == "unknown_method":
        extra = ["--methods", "gradcam,occlusion"]
    elif case == "bad_target":
        extra = ["--target", "7", "--methods", "gradcam"]
    else:
        extra = ["--layer", "conv9", "--methods", "gradcam"]
    code, _, err = run(capsys, "--model", model, "--image", image, *extra)
    assert code == 2
    assert expected in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
