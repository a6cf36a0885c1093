"""crackxai's served model: probabilities, predicted class and, on request, a Grad-CAM map.

An mlflow.pyfunc.PythonModel, logged by crackxai.tracking.registry.log_model as models from code
(tracking/served_model.py), so `mlflow.pyfunc.load_model(uri)` and `mlflow models serve -m uri`
both run it. Input, one image per row or item, any size (each is resized to the model's input as
`python -m crackxai.explain_image` does: crackxai.data.decode):

    a DataFrame with an `image` column of encoded files (JPEG, PNG, ... anything OpenCV reads):
        bytes, or base64 text, which is how JSON carries them:
        {"dataframe_split": {"columns": ["image"], "data": [["<base64>"], ...]}}
    an array (N, H, W, 3) or (H, W, 3) of raw 0-255 RGB values, uint8 or float
        ({"inputs": [...]} over HTTP)
    a list of images, each an array of its own size, bytes or base64 text

Params (the signature's params schema): `explain` "none" (default) or "gradcam"; `layer` the
feature map Grad-CAM reads ("" = the one recorded when the model was logged).

Output: a DataFrame, one row per image: one column per class (its probability, named by the
class), `predicted` (the class name), `out_of_distribution` (only for a model logged with an OOD
detector; see OOD below), and with explain=gradcam `gradcam`: the (H, W) float32 map in [0, 1]
at the model's input resolution, for the predicted class (a nested list in JSON). The maps are
crackxai.xai.registry's "gradcam" Explainer with the settings recorded at logging time (the
explain stage's explain.layer and explain.cam_min_size then), so they equal the explain stage's.

Bad input raises MlflowException(INVALID_PARAMETER_VALUE): `mlflow models serve` answers it with
HTTP 400 and {"error_code": "INVALID_PARAMETER_VALUE", "message": ...}, no stack trace.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel

from crackxai.core.errors import CrackxaiError, DataError
from crackxai.tracking.registry import (
    EXPLAIN_CHOICES,
    EXPLAIN_PARAM,
    GRADCAM_COLUMN,
    IMAGE_COLUMN,
    KERAS_ARTIFACT,
    LAYER_PARAM,
    META_ARTIFACT,
    OOD_ARTIFACT,
    OOD_COLUMN,
    PREDICTED_COLUMN,
)

logger = logging.getLogger(__name__)

FORMATS = ("a DataFrame with an 'image' column of encoded image files (bytes, or base64 text: "
           '{"dataframe_split": {"columns": ["image"], "data": [["<base64>"]]}} over HTTP), an '
           "array (N, H, W, 3) of 0-255 RGB values, or a list of images")


def bad_request(message: str) -> MlflowException:
    """What predict raises for bad input: HTTP 400 from `mlflow models serve`."""
    return MlflowException.invalid_parameter_value(message)


def _items(model_input: Any) -> list[Any] | np.ndarray:
    """The request's images: a numeric (N, H, W, 3) array as it is, else a list of items."""
    if isinstance(model_input, dict):  # {"inputs": {"image": [...]}}
        if IMAGE_COLUMN not in model_input:
            raise bad_request(f"The request has inputs {sorted(model_input)} but no "
                              f"'{IMAGE_COLUMN}'. Send {FORMATS}.")
        model_input = model_input[IMAGE_COLUMN]
    if isinstance(model_input, pd.DataFrame):
        if IMAGE_COLUMN not in model_input.columns:
            raise bad_request(f"The request's table has columns {list(model_input.columns)} "
                              f"but no '{IMAGE_COLUMN}' column. Send {FORMATS}.")
        return list(model_input[IMAGE_COLUMN])
    if isinstance(model_input, pd.Series):
        return list(model_input)
    if isinstance(model_input, np.ndarray) and model_input.dtype.kind in "uif":
        if model_input.ndim == 3:
            return model_input[None]
        if model_input.ndim == 4:
            return model_input
        raise bad_request(f"The request is an array of shape {model_input.shape}: expected "
                          f"(N, H, W, 3) or (H, W, 3) RGB values. Send {FORMATS}.")
    if isinstance(model_input, (list, tuple, np.ndarray)):
        return list(model_input)
    raise bad_request(f"The request is a {type(model_input).__name__}. Send {FORMATS}.")


def _pixels(i: int, item: Any) -> np.ndarray:
    """One image given as values: (H, W, 3), finite, 0-255; uint8 stays uint8 (resized as the
    preprocess stage resizes decoded files), anything else becomes float32."""
    try:
        image = np.asarray(item)
        image = image if image.dtype == np.uint8 else image.astype(np.float32)
    except (TypeError, ValueError):
        image = None
    if image is None or image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        shape = getattr(image, "shape", None)
        raise bad_request(f"Image {i} of the request is {type(item).__name__}"
                          + (f" of shape {shape}" if shape is not None else "")
                          + f", not an image: expected (H, W, 3) RGB values or an encoded image "
                          f"file. Send {FORMATS}.")
    return _in_range(image, f"Image {i} of the request")


def _in_range(x: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(x).all() or x.min() < 0 or x.max() > 255:
        raise bad_request(f"{what}: values outside 0-255 (or NaN/inf). Send raw RGB values "
                          "0-255; the model normalises them itself.")
    return x


def _file_bytes(i: int, item: str | bytes) -> bytes:
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    try:
        return base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"Image {i} of the request is text but not base64 (starts "
                          f"{item[:20]!r}). Encode the file's bytes, e.g. `base64 -w0 crack.jpg` "
                          "or base64.b64encode(open(path, 'rb').read()).decode().") from None


def to_images(model_input: Any, height: int, width: int) -> np.ndarray:
    """The request as float32 (N, height, width, 3) 0-255 RGB: files decoded and images resized
    as explain_image does (crackxai.data.decode); an array already at that size is used as it
    is, so the probabilities equal the Keras model's on the same array."""
    from crackxai.data.decode import decode_to, fit_to

    items = _items(model_input)
    if len(items) == 0:
        raise bad_request(f"The request holds no image. Send {FORMATS}.")
    if isinstance(items, np.ndarray) and items.shape[1:] == (height, width, 3):
        return _in_range(np.asarray(items, np.float32), "The request's images")
    images = []
    for i, item in enumerate(items):
        if isinstance(item, (str, bytes, bytearray)):
            try:
                image = decode_to(_file_bytes(i, item), height, width)
            except DataError as err:
                raise bad_request(
                    f"Image {i} of the request is {err}. Send the bytes of a whole file OpenCV "
                    "decodes (JPEG, PNG, BMP, TIFF, WebP, ...), base64-encoded in JSON.") from None
        else:
            image = fit_to(_pixels(i, item), height, width)
        images.append(np.asarray(image, np.float32))
    return np.stack(images)


def explain_param(params: dict[str, Any] | None) -> tuple[str, str]:
    """(method, layer) from the request's params."""
    params = params or {}
    method = str(params.get(EXPLAIN_PARAM) or EXPLAIN_CHOICES[0]).strip().lower()
    if method not in EXPLAIN_CHOICES:
        raise bad_request(f"params {{'{EXPLAIN_PARAM}': '{params.get(EXPLAIN_PARAM)}'}}: choose "
                          f"one of {', '.join(EXPLAIN_CHOICES)} (default {EXPLAIN_CHOICES[0]}).")
    return method, str(params.get(LAYER_PARAM) or "").strip()


class CrackxaiModel(PythonModel):
    """The served crack classifier (see the module docstring for input, params and output)."""

    def load_context(self, context: Any) -> None:
        from crackxai.models.io import load_model
        from crackxai.models.predictor import Predictor

        self.model = load_model(context.artifacts[KERAS_ARTIFACT])
        with open(context.artifacts[META_ARTIFACT], encoding="utf-8") as f:
            meta = json.load(f)
        self.classes: list[str] = list(meta["classes"])
        self.gradcam: dict[str, Any] = dict(meta.get("gradcam") or {})
        self.size = tuple(int(n) for n in self.model.input_shape[1:3])
        self.predictor = Predictor(self.model)
        self._explainers: dict[str, Any] = {}
        self._lock = threading.Lock()  # the server may call predict from several threads
        self.ood = self.features = None  # a model logged without a detector: no OOD column
        if context.artifacts.get(OOD_ARTIFACT):
            from crackxai.models.ood import FeatureExtractor, OodDetector

            self.ood = OodDetector.load(context.artifacts[OOD_ARTIFACT])
            self.features = FeatureExtractor(
                self.model, **({"layer": self.ood.layer} if self.ood.layer else {}))

    def explainer(self, layer: str) -> Any:
        """The Grad-CAM explainer for `layer` ("" = the recorded one), built once per layer."""
        from crackxai.xai import registry

        settings = dict(self.gradcam)
        layer = layer or settings.pop("layer", None) or ""
        settings.pop("layer", None)
        if layer not in self._explainers:
            try:
                self._explainers[layer] = registry.create(
                    "gradcam", model=self.model, predictor=self.predictor, layer=layer or None,
                    **settings)
            except CrackxaiError as err:  # a layer the model lacks: the request's, or recorded
                raise bad_request(f"Grad-CAM is not available (params {{'{LAYER_PARAM}': "
                                  f"'{layer}'}}): {err}") from None
        return self._explainers[layer]

    def predict(self, context: Any, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        # model_input: also an array or a list (see FORMATS); annotated with the served format,
        # as MLflow warns on an annotation it cannot turn into a schema.
        method, layer = explain_param(params)
        images = to_images(model_input, *self.size)
        if self.ood is not None:  # probabilities and features from one pass
            probs, features = self.features(images)
        else:
            probs = self.predictor(images)
        predicted = probs.argmax(axis=1)
        out = pd.DataFrame({name: probs[:, i].astype(np.float64)
                            for i, name in enumerate(self.classes)})
        out[PREDICTED_COLUMN] = [self.classes[i] for i in predicted]
        if self.ood is not None:
            out[OOD_COLUMN] = self.ood.flags(features).astype(bool)
        if method == "gradcam":
            with self._lock:
                maps = self.explainer(layer).explain(images, predicted)
            out[GRADCAM_COLUMN] = list(np.asarray(maps, np.float32))
        return out
