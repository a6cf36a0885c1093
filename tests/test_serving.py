"""The served model (crackxai.tracking.serving): probabilities and Grad-CAM for images of any size,
in process and from a real `mlflow models serve` over HTTP.

Real components: the crackxai ResNet50 (random weights: what is tested is the serving, not the
accuracy; the train stage's own logging is tested in tests/test_model_registry.py), logged with
registry.log_model as the train stage logs it into a real SQLite MLflow store with its Model
Registry, promoted to @champion; real image files (../shared/crack-sample when present, else
synthetic PNG/JPEG files of other sizes); the explain stage's Grad-CAM built as that stage builds
it; a real server process on 127.0.0.1 answering real HTTP POSTs (slow).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from crackxai.config import explainer_settings, load_config
from crackxai.core.errors import CrackxaiError
from crackxai.data.decode import decode_to, fit_to
from crackxai.models.io import load_model, save_model
from crackxai.models.predictor import Predictor
from crackxai.models.resnet import build_model
from crackxai.tracking.registry import (
    CHAMPION_ALIAS,
    check_classes,
    gradcam_settings,
    log_model,
)
from crackxai.xai import registry
from crackxai.xai.cam import resolve_layer
from tests.conftest import REPO, SHARED_SAMPLE, free_ports
from tests.test_train import CLASSES, ENV_LEAKS, SIZE

NAME = "crackxai"


def _png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()


def _files() -> list[bytes]:
    """Image files of several sizes: real crack photos (227x227 JPEG) when the sample is here,
    and synthetic ones: a 50x70 PNG, a 300x200 JPEG, a grayscale PNG."""
    rng = np.random.default_rng(0)
    files = [_png(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)),
             cv2.imencode(".jpg", rng.integers(0, 256, (300, 200, 3), dtype=np.uint8))[1].tobytes(),
             cv2.imencode(".png", rng.integers(0, 256, (40, 40), dtype=np.uint8))[1].tobytes()]
    if (SHARED_SAMPLE / "Positive").is_dir():
        files = [(SHARED_SAMPLE / c / sorted(os.listdir(SHARED_SAMPLE / c))[0]).read_bytes()
                 for c in ("Positive", "Negative")] + files
    return files


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> dict:
    """The crackxai model logged and registered as the train stage does it, promoted to
    @champion, in a temp SQLite store; the config is conf/'s defaults."""
    root = tmp_path_factory.mktemp("serving")
    with pytest.MonkeyPatch.context() as mp:
        for var in ENV_LEAKS:
            mp.delenv(var, raising=False)
        cfg = load_config([])
        keras.utils.set_random_seed(cfg.seed)
        model_file = root / "models" / "model.keras"
        model_file.parent.mkdir()
        save_model(build_model(len(CLASSES), SIZE, None, seed=cfg.seed), model_file)
        store = f"sqlite:///{root / 'mlflow.db'}"
        mlflow.set_tracking_uri(store)
        mlflow.set_experiment("crackxai")
        examples = np.random.default_rng(1).integers(0, 256, (1, SIZE, SIZE, 3), dtype=np.uint8)
        with mlflow.start_run() as run:
            logged = log_model(model_file, CLASSES, examples, NAME, gradcam=gradcam_settings(cfg),
                               num_outputs=len(CLASSES))
    mlflow.MlflowClient(store).set_registered_model_alias(NAME, CHAMPION_ALIAS, logged["version"])
    return {"root": root, "store": store, "run_id": run.info.run_id, "cfg": cfg,
            "model": load_model(model_file), "model_file": model_file}


@pytest.fixture(scope="module")
def champion(served):
    mlflow.set_tracking_uri(served["store"])
    return mlflow.pyfunc.load_model(f"models:/{NAME}@{CHAMPION_ALIAS}")


def _explain_stage_gradcam(served: dict, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Grad-CAM as the explain stage builds it (crackxai.stages.explain: check_inputs, then
    registry.create with explainer_settings)."""
    cfg, model = served["cfg"], served["model"]
    layer = resolve_layer(model, cfg.explain.layer, cfg.explain.cam_min_size)
    explainer = registry.create("gradcam", model=model, predictor=Predictor(model), layer=layer,
                                **explainer_settings(cfg, "gradcam"))
    return explainer.explain(images, targets)


def test_run_and_champion_uris_give_probabilities_for_images_of_any_size(served, champion):
    mlflow.set_tracking_uri(served["store"])
    model = served["model"]
    by_run = mlflow.pyfunc.load_model(f"runs:/{served['run_id']}/model")
    # raw arrays at the model's size: exactly the Keras model's probabilities
    x = np.random.default_rng(2).uniform(0, 255, (3, SIZE, SIZE, 3)).astype(np.float32)
    expected = model.predict(x, verbose=0)
    for pyfunc in (by_run, champion):
        out = pyfunc.predict(x)
        np.testing.assert_allclose(out[CLASSES].to_numpy(), expected, rtol=1e-5, atol=1e-6)
        assert list(out["predicted"]) == [CLASSES[i] for i in expected.argmax(axis=1)]
        assert "gradcam" not in out.columns
    # image files of other sizes: decoded and resized as explain_image does it
    files = _files()
    decoded = np.stack([decode_to(f, SIZE, SIZE) for f in files]).astype(np.float32)
    expected = model.predict(decoded, verbose=0)
    as_text = pd.DataFrame({"image": [base64.b64encode(f).decode() for f in files]})
    for request in (as_text, pd.DataFrame({"image": files}), files):
        np.testing.assert_allclose(champion.predict(request)[CLASSES].to_numpy(), expected,
                                   rtol=1e-5, atol=1e-6)
    # arrays of different sizes in one list: each resized
    arrays = [np.random.default_rng(3).integers(0, 256, s, dtype=np.uint8)
              for s in ((SIZE, SIZE, 3), (45, 61, 3))]
    expected = model.predict(np.stack([fit_to(a, SIZE, SIZE) for a in arrays]).astype(np.float32),
                             verbose=0)
    np.testing.assert_allclose(champion.predict(arrays)[CLASSES].to_numpy(), expected, rtol=1e-5,
                               atol=1e-6)
    # the plain Keras model inside (README: "Using the trained model")
    assert isinstance(champion.unwrap_python_model().model, keras.Model)


def test_model_files_hold_the_weights_once_classes_and_gradcam_settings(served):
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}@{CHAMPION_ALIAS}",
                                                     tracking_uri=served["store"]))
    assert [p.name for p in local.rglob("*.keras")] == ["model.keras"]
    assert (local / "artifacts" / "model.keras").read_bytes() == served["model_file"].read_bytes()
    meta = json.loads((local / "artifacts" / "crackxai.json").read_text())
    assert meta == {"classes": CLASSES, "gradcam": gradcam_settings(served["cfg"])}
    assert (local / "code" / "crackxai" / "tracking" / "serving.py").is_file()
    assert not list((local / "code").rglob("__pycache__"))
    # the input example is what the curl example sends: base64 PNG in an `image` column
    example = json.loads((local / "serving_input_example.json").read_text())
    assert example["dataframe_split"]["columns"] == ["image"]
    assert example["params"] == {"explain": "none"}


def test_gradcam_maps_equal_the_explain_stage(served, champion):
    files = _files()
    images = np.stack([decode_to(f, SIZE, SIZE) for f in files]).astype(np.float32)
    out = champion.predict(pd.DataFrame({"image": [base64.b64encode(f).decode() for f in files]}),
                           params={"explain": "gradcam"})
    predicted = np.array([CLASSES.index(c) for c in out["predicted"]])
    maps = np.stack(out["gradcam"])
    assert maps.shape == (len(files), SIZE, SIZE) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1
    np.testing.assert_allclose(maps, _explain_stage_gradcam(served, images, predicted),
                               rtol=1e-5, atol=1e-6)
    # another layer on request
    layer = "conv3_block4_out"
    other = champion.predict(images, params={"explain": "gradcam", "layer": layer})
    model = served["model"]
    explainer = registry.create("gradcam", model=model, predictor=Predictor(model), layer=layer,
                                **explainer_settings(served["cfg"], "gradcam"))
    np.testing.assert_allclose(np.stack(other["gradcam"]), explainer.explain(images, predicted),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("request_", "params", "message"), [
    (pd.DataFrame({"image": ["not base64!"]}), None, "Image 0 of the request is text but not "
                                                      "base64"),
    (pd.DataFrame({"image": [base64.b64encode(b"GIF89a junk").decode()]}), None,
     r"Image 0 of the request is not a usable image \(not_an_image"),
    ([_png(np.zeros((40, 40, 3), np.uint8))[:-20]], None, r"not a usable image \(truncated"),
    (pd.DataFrame({"picture": ["x"]}), None, "has columns \\['picture'\\] but no 'image' column"),
    (np.zeros((2, 5)), None, r"array of shape \(2, 5\): expected \(N, H, W, 3\)"),
    (np.full((1, SIZE, SIZE, 3), 300.0), None, "values outside 0-255"),
    ([np.zeros((4, 4))], None, r"Image 0 of the request is ndarray of shape \(4, 4\)"),
    (pd.DataFrame({"image": []}), None, "holds no image"),
    (np.zeros((1, SIZE, SIZE, 3)), {"explain": "shap"}, "choose one of none, gradcam"),
    (np.zeros((1, SIZE, SIZE, 3)), {"explain": "gradcam", "layer": "nope"},
     "Grad-CAM is not available .*CAM layer 'nope'"),
])
def test_bad_input_is_one_clear_error(champion, request_, params, message):
    with pytest.raises(MlflowException, match=message) as err:
        champion.predict(request_, params=params)
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"  # HTTP 400 from the server
    assert "Traceback" not in err.value.message and "\n" not in err.value.message


def test_class_names_must_make_distinct_columns():
    assert check_classes(CLASSES, 2) == CLASSES
    for bad in (["predicted", "crack"], ["crack", "crack"]):
        with pytest.raises(CrackxaiError, match="distinct and none of those.*Rename"):
            check_classes(bad)
    with pytest.raises(CrackxaiError, match="for a model with 3 outputs"):
        check_classes(CLASSES, 3)


# ----------------------------------------------------------------------------------------------
# Outside this process (slow: each loads TensorFlow again)
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_pyfunc_loads_where_crackxai_is_not_installed(served, champion, tmp_path):
    """`python -I -S` with only site-packages on sys.path (the editable crackxai install is
    invisible): the model's own code/ copy of crackxai serves it."""
    local = mlflow.artifacts.download_artifacts(f"models:/{NAME}@{CHAMPION_ALIAS}",
                                                tracking_uri=served["store"], dst_path=str(tmp_path))
    x = np.random.default_rng(4).uniform(0, 255, (2, SIZE, SIZE, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    site_dirs = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    code = "\n".join([
        "import sys",
        f"sys.path.extend({site_dirs!r})",
        "try:",
        "    import crackxai",
        "except ModuleNotFoundError:",
        "    pass",
        "else:",
        "    sys.exit('crackxai is importable: the test proves nothing')",
        "import numpy as np, mlflow",
        f"model = mlflow.pyfunc.load_model({local!r})",
        "out = model.predict(np.load('x.npy'), params={'explain': 'gradcam'})",
        "import crackxai",
        "print('CRACKXAI', crackxai.__file__)",
        f"np.save('probs.npy', out[{CLASSES!r}].to_numpy())",
        "np.save('maps.npy', np.stack(out['gradcam']))",
    ])
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TF_CPP_MIN_LOG_LEVEL": "2",
           "KERAS_BACKEND": "tensorflow"}
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "/code/crackxai/__init__.py" in out.stdout, out.stdout  # the model's copy
    here = champion.predict(x, params={"explain": "gradcam"})
    np.testing.assert_allclose(np.load(tmp_path / "probs.npy"), here[CLASSES].to_numpy(),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "maps.npy"), np.stack(here["gradcam"]),
                               rtol=1e-5, atol=1e-6)


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.slow
def test_mlflow_models_serve_answers_http_posts_like_the_model_in_process(served, champion,
                                                                         tmp_path):
    """`mlflow models serve -m models:/crackxai@champion --env-manager local` on 127.0.0.1: real
    POSTs to /invocations, with and without Grad-CAM, equal the in-process answers."""
    (port,) = free_ports()
    env = {**os.environ, "MLFLOW_TRACKING_URI": served["store"],
           # the server execs uvicorn by name: this interpreter's scripts first on PATH
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}@{CHAMPION_ALIAS}",
         "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the server did not answer /ping in 300 s"
            time.sleep(1)

        files = _files()
        rows = [[base64.b64encode(f).decode()] for f in files]
        request = pd.DataFrame({"image": [r[0] for r in rows]})
        for params in (None, {"explain": "gradcam"}):
            body = {"dataframe_split": {"columns": ["image"], "data": rows}}
            if params:
                body["params"] = params
            status, answer = _post(f"{base}/invocations", body)
            assert status == 200, answer
            here = champion.predict(request, params=params)
            got = pd.DataFrame(answer["predictions"])
            assert list(got.columns) == list(here.columns)
            np.testing.assert_allclose(got[CLASSES].to_numpy(), here[CLASSES].to_numpy(),
                                       rtol=1e-5, atol=1e-6)
            assert list(got["predicted"]) == list(here["predicted"])
            if params:
                np.testing.assert_allclose(np.array(got["gradcam"].tolist(), np.float32),
                                           np.stack(here["gradcam"]), rtol=1e-5, atol=1e-6)
        # raw values as nested lists ("inputs"): the same as in process
        x = np.random.default_rng(5).integers(0, 256, (2, SIZE, SIZE, 3))
        status, answer = _post(f"{base}/invocations", {"inputs": x.tolist()})
        assert status == 200, answer
        np.testing.assert_allclose(pd.DataFrame(answer["predictions"])[CLASSES].to_numpy(),
                                   champion.predict(x.astype(np.float32))[CLASSES].to_numpy(),
                                   rtol=1e-5, atol=1e-6)
        # bad input: a 400 with a one-paragraph JSON error, no stack trace
        status, answer = _post(f"{base}/invocations", {
            "dataframe_split": {"columns": ["image"], "data": [["not base64!"]]}})
        assert status == 400 and answer["error_code"] == "INVALID_PARAMETER_VALUE"
        assert "not base64" in answer["message"] and "stack_trace" not in answer
        status, answer = _post(f"{base}/invocations", {"inputs": x.tolist(),
                                                        "params": {"explain": "lime"}})
        assert status == 400 and "choose one of none, gradcam" in answer["message"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def test_readme_curl_example_is_the_served_format():
    """The README's curl example posts the format these tests send (dataframe_split, image)."""
    readme = (REPO / "README.md").read_text()
    assert "mlflow models serve -m models:/crackxai@champion --env-manager local" in readme
    assert '"dataframe_split": {"columns": ["image"]' in readme


def test_served_model_flags_out_of_distribution_images_with_the_detector_beside_it(served):
    """A detector saved beside the model (as the train stage does) ships with it, and the served
    model's out_of_distribution column is that detector's verdict on the same images."""
    from crackxai.core.paths import ood_file_for
    from crackxai.models.ood import FeatureExtractor, fit_for_model

    model, model_file = served["model"], served["model_file"]
    rng = np.random.default_rng(5)
    surface = rng.normal(128, 12, (40, SIZE, SIZE, 3)).clip(0, 255).astype(np.float32)
    detector = fit_for_model(model, surface[:30], np.arange(30) % 2, surface[30:], 0.9)
    detector.save(ood_file_for(model_file))
    mlflow.set_tracking_uri(served["store"])
    try:
        with mlflow.start_run() as run:
            log_model(model_file, CLASSES, surface[:1], None, num_outputs=len(CLASSES),
                      gradcam=gradcam_settings(served["cfg"]))
    finally:
        ood_file_for(model_file).unlink()
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    images = np.concatenate([surface[30:33], np.zeros((1, SIZE, SIZE, 3), np.float32),
                             rng.uniform(0, 255, (2, SIZE, SIZE, 3)).astype(np.float32)])
    out = pyfunc.predict(images)
    expected = detector.flags(FeatureExtractor(model)(images)[1])
    assert out["out_of_distribution"].tolist() == expected.astype(bool).tolist()
    assert out["out_of_distribution"].iloc[3]  # the black frame
