"""Loading, saving and checking a saved classifier."""

from __future__ import annotations

import logging
import zipfile
import zlib
from pathlib import Path
from typing import Any

import keras

from crackxai.core.errors import CrackxaiError, first_line
from crackxai.core.io import atomic_path
from crackxai.models import legacy  # registers the custom layers older saved models use

logger = logging.getLogger(__name__)


def check_model(model: Any, num_classes: int, image_size: int, model_path: Path | str,
                data: str) -> None:
    """The model must take `image_size` RGB images and output one probability per class."""
    _, height, width, channels = model.input_shape
    outputs = model.output_shape[-1]
    if (height, width, channels) != (image_size, image_size, 3):
        raise CrackxaiError(
            f"Model '{model_path}' takes {height}x{width}x{channels} inputs but {data} holds "
            f"{image_size}x{image_size}x3 images. The model and the data come from different "
            "runs: retrain (`dvc repro train`) or point to the matching model."
        )
    if outputs != num_classes:
        raise CrackxaiError(
            f"Model '{model_path}' has {outputs} outputs but {data} has {num_classes} classes. "
            "The model and the data come from different runs: retrain (`dvc repro train`) or "
            "point to the matching model."
        )


def load_model(path: str | Path) -> keras.Model:
    """Load a saved classifier, with a clear error for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise CrackxaiError(
            f"Model file '{path}' not found. Train one with `dvc repro train` "
            "(or `python -m crackxai.train`), or pass the path of a saved .keras model."
        )
    if path.suffix == ".keras" and not _is_whole_zip(path):
        # Keras reports a truncated archive as "File not found", which sends users looking for
        # a file that is there.
        raise CrackxaiError(
            f"Model file '{path}' is corrupt or truncated ({path.stat().st_size} bytes; not a "
            "complete .keras zip archive). Restore the last trained model with `dvc checkout "
            f"{path}` or retrain with `dvc repro train`."
        )
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:  # Keras raises several types for bad files
        raise CrackxaiError(
            f"Cannot load model '{path}': {first_line(exc)}. "
            "Expected a Keras 3 .keras file saved by crackxai.stages.train or keras.Model.save(); "
            f"if it is one, it is corrupt: `dvc checkout {path}` or `dvc repro train`."
        ) from None
    if any(type(layer).__module__ == legacy.__name__ for layer in model.layers):
        logger.warning(f"'{path}' was saved by an earlier crackxai: it predicts as before but "
                       "loads only where crackxai is importable. Retrain (`dvc repro train`) "
                       "for a model that plain keras.saving.load_model reads.")
    return model


def inference_model(model: keras.Model) -> keras.Model:
    """An uncompiled model sharing the trained layers: saved, it holds the weights only once,
    without the optimizer state (a third of the size with Adam's)."""
    return keras.Model(model.input, model.output, name=model.name)


def _is_whole_zip(path: Path) -> bool:
    """Whether `path` is a zip archive whose members all read back (CRCs checked)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, RuntimeError):
        # RuntimeError: a flipped flag or method field reads as "File is encrypted" or
        # NotImplementedError("strong encryption (flag bit 6)"), which zipfile raises as such.
        return False


def save_model(model: keras.Model, path: str | Path) -> None:
    """Atomically, without the optimizer (`inference_model`)."""
    with atomic_path(path, suffix=".keras") as tmp:
        inference_model(model).save(tmp)
