"""Explanation runners (crackxai.xai.runners): a real local Ray cluster (num_cpus=2, 2 actors)
against the in-process runner, on a tiny saved Keras model."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from crackxai.core.errors import CrackxaiError
from crackxai.xai import runners

# find_spec, not import: ray reads its settings when imported, and runners.ray_cluster sets them
pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                reason="the optional `ray` group is not installed")

SIZE = 16
ROWS = [5, 0, 3, 1, 4]  # not sorted: the maps must come back in this order


@pytest.fixture(scope="module")
def job_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("runner")
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="features",
                            kernel_initializer=keras.initializers.GlorotUniform(0))(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, activation="softmax",
                                 kernel_initializer=keras.initializers.GlorotUniform(1))(x)
    keras.Model(inputs, outputs).save(d / "model.keras")
    images = np.random.default_rng(0).integers(0, 255, (6, SIZE, SIZE, 3), dtype=np.uint8)
    np.save(d / "images.npy", images)
    return d / "model.keras", d / "images.npy"


def jobs(model: Path, images: Path) -> list[runners.Job]:
    lime = {"num_samples": 30, "num_features": 3, "positive_only": True, "hide_rest": False,
            "hide_color": None, "batch_size": 10,
            "segmentation": {"algo": "quickshift", "kernel_size": 2, "max_dist": 20,
                             "ratio": 0.2}}
    return [runners.Job(str(model), str(images), "gradcam", {"seed": 3}, layer="features",
                        batch_size=8, seed=3),
            runners.Job(str(model), str(images), "lime", {"seed": 3, **lime}, batch_size=8,
                        seed=3)]


def test_ray_maps_equal_local_maps_in_input_order(job_files: tuple[Path, Path]) -> None:
    targets = [1, 0, 1, 1, 0]
    with runners.ray_cluster(None, num_cpus=2) as ray:
        assert ray.cluster_resources()["CPU"] == 2
        for job in jobs(*job_files):
            local = runners.explain_maps("local", job, ROWS, targets).maps
            remote = runners.explain_maps("ray", job, ROWS, targets, num_actors=2).maps
            assert remote.shape == (len(ROWS), SIZE, SIZE)
            np.testing.assert_allclose(remote, local, atol=1e-6, err_msg=job.method)
            # in input order: row 5's map is the one explained alone for row 5
            alone = runners.explain_maps("local", job, [5], [1]).maps
            np.testing.assert_allclose(remote[0], alone[0], atol=1e-6)


def test_in_order_rejects_missing_or_extra_rows() -> None:
    with pytest.raises(CrackxaiError, match="asked for"):
        runners.in_order(np.array([1, 2]), np.array([1, 3]))
    with pytest.raises(CrackxaiError, match="asked for"):
        runners.in_order(np.array([1, 2]), np.array([1, 2, 2]))
    assert runners.in_order(np.array([2, 1, 7]), np.array([7, 1, 2])).tolist() == [2, 1, 0]


def test_unknown_runner_is_one_paragraph(job_files: tuple[Path, Path]) -> None:
    with pytest.raises(CrackxaiError, match="local, ray"):
        runners.explain_maps("dask", jobs(*job_files)[0], [0], [0])


def test_without_ray_the_error_names_the_install_command(tmp_path: Path) -> None:
    """A fresh Python where `import ray` fails (the default install): one paragraph, the fix."""
    code = ("import sys; sys.modules['ray'] = None\n"
            "from crackxai.xai.runners import import_ray\n"
            "try:\n    import_ray()\nexcept Exception as e:\n    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.startswith("CrackxaiError") and "uv sync --group ray" in out
