"""`crackxai inspect`: whole photos tiled at the patch scale, classified, mapped, explained.

Real components throughout: a small Keras CNN trained here on the synthetic 227 px patches
(resized to 32 px, as the preprocess stage resizes them; the pipeline's ResNet50 would take
minutes to train), large synthetic surfaces from crackxai.data.synthetic.render_surface with
their crack masks, real image files (a corrupt one among them) and the tool's own entry point.
"""

from __future__ import annotations

import csv
import html.parser
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest

from crackxai.data import synthetic, tiles
from crackxai.data.processed import write_classes
from crackxai.evaluation import inspection
from crackxai.models.batching import predict_groups
from crackxai.models.predictor import Predictor
from crackxai.tools.inspect import inspect_photos, main
from crackxai.xai import registry
from crackxai.xai.metrics import pointing_tolerance

REPO = Path(__file__).resolve().parents[1]
SIZE = 32  # the tiny model's input
SURFACE = (1024, 768)  # width, height


# ----------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------


def patches(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic training patches as the pipeline sees them: 227 px, area-resized to SIZE."""
    images, labels = [], []
    for label in (0, 1):
        for i in range(n_per_class):
            rgb, _ = synthetic.render(np.random.default_rng([seed, label, i]), bool(label))
            images.append(cv2.resize(rgb, (SIZE, SIZE), interpolation=cv2.INTER_AREA))
            labels.append(label)
    return np.stack(images), np.array(labels)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small CNN (raw 0-255 RGB in, softmax out, like the pipeline's model) trained on
    synthetic patches, saved with classes.json beside it as the train stage leaves it."""
    x, y = patches(110, seed=7)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    h = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(h)
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="features")(h)
    h = keras.layers.GlobalMaxPooling2D()(h)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(h))
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=10, batch_size=32, shuffle=True, verbose=0)
    folder = tmp_path_factory.mktemp("model")
    model.save(folder / "model.keras")
    write_classes(folder, ["Negative", "Positive"], SIZE)
    return folder / "model.keras"


@pytest.fixture(scope="module")
def model(model_file: Path) -> keras.Model:
    return keras.saving.load_model(model_file)


def write_rgb(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


@pytest.fixture(scope="module")
def surfaces(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, np.ndarray]]:
    """Three 1024x768 surfaces, one crack each, as PNG files, with their masks."""
    folder = tmp_path_factory.mktemp("surfaces")
    out = []
    for seed in (11, 12, 13):
        rgb, mask = synthetic.render_surface(*SURFACE, seed=seed)
        out.append((write_rgb(folder / f"surface_{seed}.png", rgb), mask))
    return out


def read_summary(folder: Path) -> list[dict[str, str]]:
    with open(folder / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def run(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str, str]:
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------------------------
# Tiling, stitching, batching
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape, stride", [((768, 1024), 227), ((768, 1024), 113),
                                           ((3000, 454), 200), ((227, 300), 227)])
def test_tiles_cover_every_pixel_with_the_last_flush_with_the_edge(shape, stride):
    h, w = shape
    tiling = tiles.plan(h, w, 227, stride)
    assert not tiling.padded
    cover = tiles.stitch(tiling, np.ones(len(tiling)), "max")
    assert cover.shape == (h, w) and cover.min() == 1.0  # every pixel seen by a tile
    boxes = tiling.boxes()
    assert (boxes[:, 2] - boxes[:, 0] == 227).all() and (boxes[:, 3] - boxes[:, 1] == 227).all()
    assert boxes[:, 2].max() == w and boxes[:, 3].max() == h
    assert len(tiling) == np.prod(tiling.grid)
    # Overlaps are averaged: constant tiles stitch to the constant, one hot tile to its share.
    assert np.allclose(tiles.stitch(tiling, np.full(len(tiling), 0.3)), 0.3)
    hot = np.zeros(len(tiling))
    hot[0] = 1.0
    stitched = tiles.stitch(tiling, hot, "mean")
    assert stitched[0, 0] == 1.0 and stitched.max() == 1.0 and stitched[-1, -1] == 0.0


def test_small_photo_is_padded_never_stretched():
    photo = synthetic.render_surface(100, 80, seed=3, cracks=0)[0]
    tiling = tiles.plan(80, 100, 227)
    assert tiling.padded and len(tiling) == 1
    padded = tiles.pad(photo, tiling)
    assert padded.shape == (227, 227, 3)
    tile = tiles.cut(padded, tiling, 227)[0]  # at source scale: the photo, pixel for pixel
    assert np.array_equal(tile[tiling.top:tiling.top + 80, tiling.left:tiling.left + 100], photo)
    assert tiling.boxes().tolist() == [[0, 0, 100, 80]]
    assert tiles.stitch(tiling, np.array([0.7])).shape == (80, 100)


def test_tiles_of_all_photos_share_full_batches(model):
    predictor = Predictor(model, batch_size=16)
    rng = np.random.default_rng(0)
    groups = [(name, rng.integers(0, 255, (n, SIZE, SIZE, 3), dtype=np.uint8))
              for name, n in (("a", 5), ("bad", 0), ("b", 20), ("c", 3), ("d", 16))]
    calls: list[int] = []

    def predict(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        return predictor(x)

    out = list(predict_groups(predict, iter(groups), 16))
    assert calls == [16, 16, 12]  # 44 images: full batches across photos, one short at the end
    assert [k for k, _ in out] == ["a", "bad", "b", "c", "d"]
    for (_, images), (_, probs) in zip(groups, out, strict=True):
        assert len(probs) == len(images)
        if len(images):
            assert np.allclose(probs, predictor(images), atol=1e-5)


def test_regions_are_connected_components_with_their_probabilities():
    pmap = np.zeros((300, 400), np.float32)
    pmap[10:60, 20:120] = 0.9
    pmap[60:100, 20:50] = 0.6  # touches the first: one region
    pmap[200:250, 300:390] = 0.55
    regions = inspection.flagged_regions(pmap, 0.5)
    assert [r["box"] for r in regions] == [[20, 10, 120, 100], [300, 200, 390, 250]]
    assert regions[0]["max_p"] == 0.9 and regions[1]["max_p"] == 0.55
    assert regions[0]["area"] == 50 * 100 + 40 * 30
    assert regions[0]["mean_p"] == pytest.approx((5000 * 0.9 + 1200 * 0.6) / 6200, abs=1e-4)
    assert inspection.flagged_regions(pmap, 0.95) == []


# ----------------------------------------------------------------------------------------------
# Localisation on synthetic surfaces
# ----------------------------------------------------------------------------------------------


def test_render_surface_is_deterministic_and_at_patch_scale():
    a, mask = synthetic.render_surface(*SURFACE, seed=5)
    b, same = synthetic.render_surface(*SURFACE, seed=5)
    assert np.array_equal(a, b) and np.array_equal(mask, same)
    assert a.shape == (768, 1024, 3) and mask.shape == (768, 1024)
    assert not np.array_equal(a, synthetic.render_surface(*SURFACE, seed=6)[0])
    crack = mask > 0
    assert 0.001 < crack.mean() < 0.02  # one thin crack, not a blown-up patch
    gray = a.mean(axis=2)
    assert gray[crack].mean() < gray[~crack].mean() - 30  # the mask is the dark crack
    # Width at patch scale: a training crack is 2-6 px wide at 227 px (difficulty 0.5).
    width = 2 * cv2.distanceTransform(crack.astype(np.uint8), cv2.DIST_L2, 3).max()
    assert 2 <= width <= 16


def test_stitched_maps_localise_the_crack_well_above_a_random_map(model, surfaces):
    """Pointing game and IoU of the stitched probability map and of the stitched Grad-CAM heat
    map against each surface's crack mask, beside a random map's (crackxai.evaluation.inspection)."""
    predictor = Predictor(model, batch_size=64)
    explainer = registry.create("gradcam", model=model, predictor=predictor, cam_min_size=7)
    tolerance = pointing_tolerance((227, 227))
    files = [(p.name, p) for p, _ in surfaces]
    scores: dict[str, list[float]] = {}
    for photo, (_, mask) in zip(inspect_photos(files, predictor, 1, 227, 113, 0.5, explainer),
                                surfaces, strict=True):
        assert photo.score > 0.9  # every surface has a crack
        assert photo.regions and photo.heat.shape == mask.shape
        for name, values, stitched, reduce in (
                ("p", photo.probabilities, photo.probability_map, "mean"),
                ("cam", photo.tile_heat, photo.heat, "max")):
            ours = inspection.localisation(stitched, mask, 0.5, tolerance)
            rand = inspection.random_localisation(
                values, lambda v, t=photo.tiling, r=reduce: tiles.stitch(t, v, r), mask, 0.5,
                tolerance)
            for k in ours:
                scores.setdefault(f"{name} {k}", []).append(ours[k])
                scores.setdefault(f"{name} {k} random", []).append(rand[k])
        # The largest flagged region contains the crack.
        x0, y0, x1, y1 = photo.regions[0]["box"]
        assert mask[y0:y1, x0:x1].any()
    mean = {k: float(np.mean(v)) for k, v in scores.items()}
    print({k: round(v, 3) for k, v in mean.items()})  # the figures, with -s
    assert mean["cam pointing_game"] >= 0.65
    for key in ("p pointing_game", "p iou", "cam pointing_game", "cam iou"):
        assert mean[key] > 3 * mean[f"{key} random"], (key, mean)


# ----------------------------------------------------------------------------------------------
# The tool: outputs, errors
# ----------------------------------------------------------------------------------------------


class _Html(html.parser.HTMLParser):
    """Collects the image sources and checks that every opened table tag is closed."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag, attrs):  # noqa: ANN001 - HTMLParser API
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag in ("table", "tr", "td", "th"):
            self.open.append(tag)

    def handle_endtag(self, tag):  # noqa: ANN001 - HTMLParser API
        if tag in ("table", "tr", "td", "th"):
            assert self.open and self.open.pop() == tag


def test_folder_outputs_sorted_by_crack_score(project, capsys, model_file, surfaces):
    folder = project / "photos"
    surface, mask = surfaces[0]
    write_rgb(folder / "site" / "crack.png", cv2.cvtColor(cv2.imread(str(surface)),
                                                          cv2.COLOR_BGR2RGB))
    write_rgb(folder / "clean.jpg", synthetic.render_surface(640, 480, seed=4, cracks=0)[0])
    write_rgb(folder / "tiny.png", synthetic.render_surface(100, 80, seed=9, cracks=0)[0])
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    code, out, err = run(capsys, "--model", model_file, folder, "--explain", "gradcam",
                         "--quiet")
    assert code == 0, err
    report = project / "reports" / "inspect"  # the default --out
    rows = read_summary(report)
    assert [r["photo"] for r in rows][0] == "site/crack.png"  # highest crack score first
    assert [r["photo"] for r in rows][-1] == "broken.jpg"  # errors last
    assert rows[-1]["status"] == "error" and "truncated" in rows[-1]["error"]
    scores = [float(r["crack_score"]) for r in rows if r["status"] == "ok"]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0.9
    assert "tiny.png is 100x80" in out and "padded" in out  # the warning

    crack = json.loads((report / "site__crack.json").read_text())
    assert (crack["width"], crack["height"], crack["tile"], crack["stride"]) == (1024, 768, 227,
                                                                               227)
    assert len(crack["tiles"]) == np.prod(crack["grid"]) == 20 and not crack["padded"]
    assert crack["crack_score"] == max(t["p"] for t in crack["tiles"])
    assert crack["regions"] and crack["explain"] == "gradcam"
    for region in crack["regions"]:
        x0, y0, x1, y1 = region["box"]
        assert 0 <= x0 < x1 <= 1024 and 0 <= y0 < y1 <= 768 and region["max_p"] >= 0.5
    assert any(mask[r["box"][1]:r["box"][3], r["box"][0]:r["box"][2]].any()
               for r in crack["regions"])
    overlay = cv2.imread(str(report / "site__crack.png"))
    assert overlay.shape == (768, 1024, 3)

    tiny = json.loads((report / "tiny.json").read_text())
    assert tiny["padded"] and (tiny["width"], tiny["height"]) == (100, 80)
    assert tiny["tiles"] == [{"box": [0, 0, 100, 80], "p": tiny["crack_score"]}]
    assert cv2.imread(str(report / "tiny.png")).shape == (80, 100, 3)  # not stretched

    page = (report / "index.html").read_text()
    parser = _Html()
    parser.feed(page)
    assert not parser.open
    assert parser.images == [r["overlay"] for r in rows if r["status"] == "ok"]  # csv order
    assert parser.images[0] == "site__crack.png" and len(parser.images) == 3
    assert "broken.jpg" in page and "not inspected" in page


def test_unreadable_files_only_is_an_error_after_the_summary(project, capsys, model_file):
    folder = project / "junk"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("not a photo")
    code, _, err = run(capsys, "--model", model_file, folder, "--out", project / "out")
    assert code == 2
    assert "None of the 2 file(s) could be read" in err and "Traceback" not in err
    rows = read_summary(project / "out")
    assert {r["status"] for r in rows} == {"error"} and len(rows) == 2


@pytest.mark.parametrize("case", ["missing_model", "missing_path", "bad_stride",
                                  "not_a_gradient_cam"])
def test_bad_input_is_one_paragraph_before_any_work(case, project, capsys, model_file, surfaces):
    photo = surfaces[0][0]
    model, extra, expected = model_file, [], ""
    if case == "missing_model":
        model, expected = project / "models" / "nope.keras", "Model file"
    elif case == "missing_path":
        photo, expected = project / "nowhere", "does not exist"
    elif case == "bad_stride":
        extra, expected = ["--stride", "300"], "--stride 300"
    else:
        extra, expected = ["--explain", "scorecam"], "--explain scorecam"
    code, out, err = run(capsys, "--model", model, photo, "--out", project / "out", *extra)
    assert code == 2
    assert err.startswith("crackxai.inspect: error: ") and expected in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (project / "out").exists()  # nothing was inspected or written


@pytest.mark.slow
def test_model_from_an_mlflow_run_uri(project, capsys, model_file, surfaces):
    """--model runs:/<id>/model --uri STORE: the model logged as the train stage logs it is
    fetched and used; an unknown run is one paragraph before any work."""
    import mlflow

    from crackxai.tracking.registry import log_model

    store = f"sqlite:///{project / 'mlflow.db'}"
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(store)
    mlflow.set_experiment("inspect")  # not an experiment id another test left active
    try:
        with mlflow.start_run() as active:
            log_model(model_file, ["Negative", "Positive"], np.zeros((1, SIZE, SIZE, 3), np.uint8),
                      None)
    finally:
        mlflow.set_tracking_uri(before)
    photo = surfaces[0][0]
    code, _, err = run(capsys, "--model", "runs:/0123456789abcdef/model", "--uri", store, photo,
                       "--out", project / "out")
    last = err.strip().splitlines()[-1]  # MLflow may log its own INFO lines first
    assert code == 2 and last.startswith("crackxai.inspect: error: Cannot fetch the model")
    assert "Traceback" not in err and not (project / "out").exists()
    code, _, err = run(capsys, "--model", f"runs:/{active.info.run_id}/model", "--uri", store,
                       photo, "--out", project / "out", "--quiet")
    assert code == 0, err
    rows = read_summary(project / "out")
    assert rows[0]["photo"] == photo.name and float(rows[0]["crack_score"]) > 0.9


def test_tiles_the_detector_beside_the_model_flags_score_zero(tmp_path):
    """With an out-of-distribution detector beside the model (as the train stage saves it), a
    blank tile is reported out of distribution and scores 0; a tile like the training data
    does not."""
    from crackxai.core.paths import ood_file_for
    from crackxai.models.io import save_model
    from crackxai.models.ood import fit_for_model
    from crackxai.models.resnet import build_model

    rng = np.random.default_rng(0)

    def surface(n: int) -> np.ndarray:  # 227 px textured patches, area-resized as inspect does
        big = rng.normal(128, 40, (n, 227, 227, 3)).clip(0, 255).astype(np.uint8)
        return np.stack([cv2.resize(b, (32, 32), interpolation=cv2.INTER_AREA) for b in big])

    model = build_model(2, 32, None, seed=0)
    model_file = tmp_path / "model.keras"
    save_model(model, model_file)
    fit_for_model(model, surface(40), np.arange(40) % 2, surface(20), 0.999).save(
        ood_file_for(model_file))
    photo = np.zeros((227, 454, 3), np.uint8)
    photo[:, :227] = rng.normal(128, 40, (227, 227, 3)).clip(0, 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "wall.png"), photo)
    (out,) = inspect_photos([("wall", tmp_path / "wall.png")], Predictor(model, 8), 1, 227, 227,
                            0.5, model_path=str(model_file))
    assert out.out_of_distribution.tolist() == [False, True]  # the right tile is a blank frame
    assert out.probabilities[1] == 0.0


# ----------------------------------------------------------------------------------------------
# --runner ray: a real private Ray cluster (num_cpus=2, 2 actors) against the local runner
# ----------------------------------------------------------------------------------------------

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,  # not imported: see
                               reason="the optional `ray` group is not installed")  # test_runners


@needs_ray
def test_ray_runner_gives_the_local_outputs_in_input_order(project, capsys, model_file, surfaces):
    """Photos by path to 2 actors that each load the model once: the same probability maps,
    Grad-CAM heat maps, regions, JSON, overlays and summary as the local runner, each photo
    written in the order of the input list (a broken and a padded photo among them)."""
    from crackxai.core.ray_pool import ray_cluster
    from crackxai.tools.inspect import InspectJob, ray_photos

    folder = project / "photos"
    for path, _ in surfaces:
        (folder / path.name).parent.mkdir(parents=True, exist_ok=True)
        (folder / path.name).write_bytes(path.read_bytes())
    write_rgb(folder / "tiny.png", synthetic.render_surface(100, 80, seed=9, cracks=0)[0])
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    names = sorted(p.name for p in folder.iterdir())  # list_photos' order
    args = ["--model", model_file, folder, "--explain", "gradcam", "--stride", "150"]
    code, _, err = run(capsys, *args, "--out", project / "local")
    assert code == 0, err
    with ray_cluster(None, num_cpus=2) as ray:
        assert ray.cluster_resources()["CPU"] == 2
        code, out, err = run(capsys, *args, "--out", project / "ray", "--runner", "ray",
                             "--num-actors", "2")
        assert code == 0, err
        files = [(n, folder / n) for n in names]
        job = InspectJob(str(model_file), 1, 227, 150, 0.5, 8, "gradcam", "features")
        remote = list(ray_photos(job, files, None, 2))
    assert "runner ray: 2 actor(s)" in out and "tiny.png is 100x80" in out  # the driver warns
    written = re.findall(rf"\[\d+/{len(names)}\] (\S+): ", out)
    assert written == names  # in input order

    local_files = sorted(p.name for p in (project / "local").iterdir())
    assert local_files == sorted(p.name for p in (project / "ray").iterdir())
    for name in local_files:
        a, b = project / "local" / name, project / "ray" / name
        if name.endswith(".png"):
            assert np.array_equal(cv2.imread(str(a)), cv2.imread(str(b))), name
        elif name != "index.html":  # the page holds nothing the summary does not
            assert a.read_text() == b.read_text(), name

    model = keras.saving.load_model(model_file)
    predictor = Predictor(model, 8)
    gradcam = registry.create("gradcam", model=model, predictor=predictor, layer="features")
    local = list(inspect_photos(files, predictor, 1, 227, 150, 0.5, gradcam))
    assert [p.name for p in remote] == names
    for a, b in zip(local, remote, strict=True):
        assert a.error == b.error and a.path == b.path
        if a.error:
            continue
        np.testing.assert_array_equal(b.probabilities, a.probabilities, err_msg=a.name)
        np.testing.assert_array_equal(b.probability_map, a.probability_map, err_msg=a.name)
        np.testing.assert_array_equal(b.heat, a.heat, err_msg=a.name)
        assert b.regions == a.regions


def test_ray_runner_without_ray_is_one_paragraph(tmp_path: Path, surfaces) -> None:
    """A fresh Python where `import ray` fails (the default install): one paragraph naming the
    install command, before the model is loaded or anything is written."""
    code = ("import sys; sys.modules['ray'] = None\n"
            "from crackxai.tools.inspect import main\n"
            f"main(['--model', 'nowhere.keras', {str(surfaces[0][0])!r}, '--runner', 'ray', "
            f"'--out', {str(tmp_path / 'out')!r}])\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO)
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]  # TensorFlow may print its notices first
    assert last.startswith("crackxai.inspect: error: --runner ray needs Ray")
    assert "uv sync --group ray" in last and "--runner local" in last
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()
