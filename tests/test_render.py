"""Overlays, the comparison grid and PNG writing."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from crackxai.xai import render


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (32, 32, 3)).astype(np.uint8)


def test_overlay_shape_dtype_and_blend(image):
    attribution = np.zeros((32, 32), np.float32)
    attribution[10:20, 10:20] = 1.0
    out = render.overlay(image, attribution)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(render.overlay(image, attribution, alpha=0.0), image)
    pure = render.overlay(image, attribution, alpha=1.0)
    assert pure[15, 15, 0] > 100 and pure[15, 15, 2] < 50  # hot spot: red end of jet
    assert pure[0, 0, 2] > 100 and pure[0, 0, 0] < 50  # no evidence: blue end


def test_overlay_shows_positive_evidence_only(image):
    signed = np.linspace(-1, 1, 32 * 32).reshape(32, 32)
    clipped = np.clip(signed, 0, None)
    assert np.array_equal(render.overlay(image, signed), render.overlay(image, clipped))
    heat = render.positive_evidence(signed)
    assert heat.min() == 0.0 and heat.max() == 1.0
    assert not render.positive_evidence(-np.ones((4, 4))).any()  # no evidence stays zero


def test_overlay_resizes_a_coarse_map(image):
    assert render.overlay(image, np.ones((4, 4))).shape == (32, 32, 3)


def test_save_png_roundtrip(tmp_path, image):
    path = tmp_path / "sub" / "x.png"
    render.save_png(path, image)
    assert np.array_equal(np.asarray(Image.open(path)), image)
    assert [p.name for p in path.parent.iterdir()] == ["x.png"]  # no temp file left


def test_comparison_grid_written(tmp_path, image):
    images = np.stack([image, image[::-1]])
    maps = {m: np.random.default_rng(1).random((2, 32, 32)) for m in ("gradcam", "shap", "lime")}
    path = tmp_path / "grid.png"
    render.comparison_grid(images, maps, ["#1 true A\npred A (0.90)", "#2 true B\npred A (0.60)"],
                           path)
    wide = Image.open(path)
    assert wide.format == "PNG"
    render.comparison_grid(images, {"gradcam": maps["gradcam"]}, ["a", "b"], tmp_path / "n.png")
    assert Image.open(tmp_path / "n.png").width < wide.width  # one column per method


def test_import_chooses_no_backend_and_no_pyplot():
    """Importing render changes nothing for the caller (no matplotlib.use, no pyplot state)."""
    import subprocess
    import sys

    code = ("import sys, matplotlib; "
            "before = dict.__getitem__(matplotlib.rcParams, 'backend'); "
            "import crackxai.xai.render; "
            "assert dict.__getitem__(matplotlib.rcParams, 'backend') is before; "
            "assert 'matplotlib.pyplot' not in sys.modules")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
