"""Property: truncated and bit-flipped inputs (JPEG/PNG files, the processed arrays, the model file)
give a report entry or a one-line error, never a crash and never a silently wrong result.

What "never silently wrong" can and cannot mean here:
- Images: a truncated file is rejected (a JPEG without its FFD9 marker is never returned as a
  half-grey image); a decoded truncated PNG must be pixel-identical to the whole file's decode.
  A bit flip that still decodes is accepted: a flipped JPEG or PNG can be a valid image, and no
  decoder can tell it from the original without a checksum the format does not carry.
- Processed arrays: whatever loads has the dtype and shape classes.json and the split table
  imply, labels in [0, n_classes) agreeing with the table's label and class columns. A flip in
  pixel bytes, a path or a sha256 string stays undetectable (DVC's md5 guards those).
- Model file: a .keras file is a zip with CRCs over every member, so a flip in the data is
  caught; one in an unchecked header field (a timestamp) loads, and must predict as before.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crackxai.core.errors import CrackxaiError, DataError
from crackxai.data.decode import PNG_END, decode_image, decode_mask, load_file
from crackxai.data.processed import load_split, write_classes, write_split
from crackxai.data.synthetic import render
from tests.fault_record import counted

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "crack-sample"
SIZE, MIN_SOURCE = 32, 16
REASONS = {"empty", "truncated", "not_an_image", "too_small", "unsupported_format"}
# Modest by default (the whole file runs in ~10 s); CRACKXAI_FUZZ_EXAMPLES=2000 for a deep run.
EXAMPLES = int(os.environ.get("CRACKXAI_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def _encode(ext: str, img: np.ndarray, *params: int) -> bytes:
    ok, buf = cv2.imencode(ext, img, list(params))
    assert ok
    return buf.tobytes()


def _sources() -> dict[str, bytes]:
    """Small real encodings: synthetic JPEG, RGB/gray/16-bit PNG, plus 2 real photos if present."""
    rgb, mask = render(np.random.default_rng(0), True, 48)
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    out = {
        "jpeg": _encode(".jpg", bgr, cv2.IMWRITE_JPEG_QUALITY, 90),
        "jpeg_progressive": _encode(".jpg", bgr, cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
        "png": _encode(".png", bgr, cv2.IMWRITE_PNG_COMPRESSION, 1),
        "png_gray": _encode(".png", cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)),
        "png_16bit": _encode(".png", bgr.astype(np.uint16) * 257),
        "png_mask": _encode(".png", mask if mask is not None else np.zeros((48, 48), np.uint8)),
    }
    for kind in ("Positive", "Negative"):  # real camera JPEGs (skipped cleanly when absent)
        files = sorted((SAMPLE / kind).glob("*.jpg"))[:1] if (SAMPLE / kind).is_dir() else []
        out.update({f"real_{kind}": f.read_bytes() for f in files})
    return out


SOURCES = _sources()
NAMES = sorted(SOURCES)
WHOLE = {k: decode_image(v, SIZE, MIN_SOURCE)[0] for k, v in SOURCES.items()}


def _flip(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    buf = bytearray(data)
    for pos, bit in flips:
        buf[pos % len(buf)] ^= 1 << bit
    return bytes(buf)


# Rows of the README "Reliability" table (tests/fault_record.counted): fault, what happens.
IMAGES = counted("hypothesis: truncated or bit-flipped JPEG/PNG files",
                 "a decoded image or a reason in preprocess's report (a truncated JPEG never "
                 "half grey), never a crash")
ARRAYS = counted("hypothesis: truncated or bit-flipped processed arrays and tables",
                 "loads with the dtype, shape and labels the split implies, or one-line "
                 "DataError naming the file")
MODEL = counted("hypothesis: truncated or bit-flipped .keras model file",
                "loads and predicts as before, or one-line error naming the file")

FLIPS = st.lists(st.tuples(st.integers(0, 10**7), st.integers(0, 7)), min_size=1, max_size=6)


def _check_decoded(out: tuple[np.ndarray | None, str, str, tuple[int, int]]) -> None:
    image, reason, detail, _ = out
    if image is None:
        assert reason in REASONS and detail, out
    else:
        assert reason == "" and image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8


def test_every_source_decodes_whole() -> None:
    assert all(img is not None for img in WHOLE.values())


@FUZZ
@given(name=st.sampled_from(NAMES), frac=st.floats(0.0, 1.0, exclude_max=True))
@IMAGES
def test_truncated_image_is_rejected_never_half_grey(name: str, frac: float) -> None:
    data = SOURCES[name]
    cut = data[:int(frac * len(data))]
    out = decode_image(cut, SIZE, MIN_SOURCE)
    _check_decoded(out)
    if out[0] is not None:  # only a PNG cut inside its trailing IEND chunk: all pixels are there
        assert cut[:8] == b"\x89PNG\r\n\x1a\n", f"truncated {name} decoded"
        np.testing.assert_array_equal(out[0], WHOLE[name])
    elif cut[:2] == b"\xff\xd8" or cut[:8] == b"\x89PNG\r\n\x1a\n":
        assert out[1] == "truncated"


@FUZZ
@given(name=st.sampled_from(NAMES), flips=FLIPS, cut=st.booleans(), frac=st.floats(0.0, 1.0))
@IMAGES
def test_bit_flipped_image_is_a_report_entry_never_a_crash(name: str, flips: list[tuple[int, int]],
                                                          cut: bool, frac: float) -> None:
    """Through load_file, as preprocess reads it: a decoded image or a reason, never a raise.
    A flip that still decodes is accepted (it can be a valid image); a cut one is not."""
    data = _flip(SOURCES[name], flips)
    if cut:
        data = data[:int(frac * len(data))]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "x.img")
        path.write_bytes(data)
        out = load_file((str(path), "", SIZE, MIN_SOURCE))
    assert set(out) >= {"image", "reason", "detail", "sha256"}
    if out["image"] is None:
        assert out["reason"] in REASONS and out["detail"], out
        if out["reason"] == "truncated":  # never said of a whole file damaged inside
            assert cut or not data.rstrip(b"\x00\r\n ").endswith((b"\xff\xd9", PNG_END))
    else:
        assert out["reason"] == "" and out["image"].shape == (SIZE, SIZE, 3)
        assert out["image"].dtype == np.uint8
        if data[:2] == b"\xff\xd8":  # a JPEG that decodes kept its end-of-image marker
            assert data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9")


@FUZZ
@given(flips=FLIPS, frac=st.floats(0.0, 1.0))
@IMAGES
def test_damaged_mask_is_a_problem_string_never_a_crash(flips: list[tuple[int, int]],
                                                        frac: float) -> None:
    data = _flip(SOURCES["png_mask"], flips)
    data = data[:int(frac * len(data))] if frac < 1 else data
    mask, problem = decode_mask(data, (48, 48), SIZE)
    if mask is None:
        assert problem
    else:
        assert problem == "" and mask.shape == (SIZE, SIZE) and set(np.unique(mask)) <= {0, 1}


# ---------------------------------------------------------------------------------------------
# Processed arrays
# ---------------------------------------------------------------------------------------------

CLASSES, S, N = ["Negative", "Positive"], 8, 6
SPLIT_FILES = ["test_images.npy", "test_labels.npy", "test.csv", "test_masks.npy",
               "classes.json"]


@pytest.fixture(scope="module")
def processed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("processed")
    rng = np.random.default_rng(0)
    labels = (np.arange(N) % 2).astype(np.int64)
    records = pd.DataFrame({"path": [f"{CLASSES[k]}/{i:05d}.jpg" for i, k in enumerate(labels)],
                            "label": labels, "class": [CLASSES[k] for k in labels],
                            "sha256": [f"{i:064x}" for i in range(N)], "has_mask": labels == 1})
    write_classes(d, CLASSES, S)
    write_split(d, "test", rng.integers(0, 256, (N, S, S, 3), dtype=np.uint8), labels, records,
                masks=(rng.random((N, S, S)) > 0.5).astype(np.uint8))
    return d


def _check_split(d: Path, damaged: str, mmap: bool) -> None:
    try:
        split = load_split("test", d, mmap=mmap)
    except DataError as err:
        message = str(err)
        assert "\n" not in message and damaged in message, message
        return
    n = len(split.labels)
    assert split.images.dtype == np.uint8 and split.images.shape == (n, S, S, 3)
    assert split.labels.dtype == np.int64 and split.labels.shape == (n,)
    assert ((split.labels >= 0) & (split.labels < len(split.classes))).all()
    assert split.classes == CLASSES and len(split.records) == n
    np.testing.assert_array_equal(split.records["label"].to_numpy(), split.labels)
    assert list(split.records["class"]) == [CLASSES[k] for k in split.labels]
    assert split.has_mask.dtype == bool and split.has_mask.shape == (n,)
    if split.masks is not None:
        assert split.masks.dtype == np.uint8 and split.masks.shape == (n, S, S)


@FUZZ
@given(file=st.sampled_from(SPLIT_FILES), flips=FLIPS, header=st.booleans(),
       mmap=st.booleans())
@ARRAYS
def test_bit_flipped_processed_file_loads_right_or_names_the_file(
        processed: Path, file: str, flips: list[tuple[int, int]], header: bool,
        mmap: bool) -> None:
    """`header`: flips aimed at the first 128 bytes (the .npy header: magic, dtype, shape)."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(shutil.copytree(processed, Path(tmp, "p")))
        data = (d / file).read_bytes()
        if header:
            flips = [(pos % min(128, len(data)), bit) for pos, bit in flips]
        (d / file).write_bytes(_flip(data, flips))
        _check_split(d, file, mmap)


@FUZZ
@given(file=st.sampled_from(SPLIT_FILES), frac=st.floats(0.0, 1.0, exclude_max=True),
       mmap=st.booleans())
@ARRAYS
def test_truncated_processed_file_names_the_file(processed: Path, file: str, frac: float,
                                                 mmap: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(shutil.copytree(processed, Path(tmp, "p")))
        data = (d / file).read_bytes()
        (d / file).write_bytes(data[:int(frac * len(data))])
        _check_split(d, file, mmap)


# ---------------------------------------------------------------------------------------------
# Model file
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A few-layer 32x32 classifier saved as .keras (never ResNet50: this runs per example)."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))
    path = tmp_path_factory.mktemp("model") / "model.keras"
    model.save(path)
    probe = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    return _Quiet(bytes=path.read_bytes(), probe=probe, expected=model.predict(probe, verbose=0))


class _Quiet(dict):
    """Hypothesis prints the fixtures of a failing case: a name, not 20 kB of bytes."""

    def __repr__(self) -> str:
        return f"<tiny .keras model, {len(self['bytes'])} bytes>"


def _check_model_bytes(tiny: dict[str, Any], data: bytes) -> None:
    from crackxai.models.io import load_model

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "model.keras")
        path.write_bytes(data)
        try:
            model = load_model(path)
        except CrackxaiError as err:
            assert "\n" not in str(err) and str(path) in str(err)
            return
    # It loaded: then the archive's CRCs all pass and the model predicts as the original did.
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None
    np.testing.assert_allclose(model.predict(tiny["probe"], verbose=0), tiny["expected"],
                               rtol=1e-6)


@settings(FUZZ, max_examples=max(1, EXAMPLES * 5 // 8))
@given(flips=FLIPS)
@MODEL
def test_bit_flipped_model_loads_right_or_is_one_line_error(tiny_model: dict[str, Any],
                                                            flips: list[tuple[int, int]]) -> None:
    _check_model_bytes(tiny_model, _flip(tiny_model["bytes"], flips))


@settings(FUZZ, max_examples=max(1, EXAMPLES * 3 // 8))
@given(frac=st.floats(0.0, 1.0, exclude_max=True))
@MODEL
def test_truncated_model_is_one_line_error(tiny_model: dict[str, Any], frac: float) -> None:
    data = tiny_model["bytes"]
    _check_model_bytes(tiny_model, data[:int(frac * len(data))])


@pytest.mark.parametrize("exc", [KeyError(), ValueError("\n"), OSError("line one\nline two")])
def test_keras_error_without_a_message_is_still_one_line(
        tiny_model: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        exc: Exception) -> None:
    """Keras may raise with an empty message; the CrackxaiError must not turn into IndexError."""
    import keras

    from crackxai.models.io import load_model

    def fail(*args: Any, **kwargs: Any) -> None:
        raise exc

    path = tmp_path / "model.keras"
    path.write_bytes(tiny_model["bytes"])
    monkeypatch.setattr(keras.models, "load_model", fail)
    with pytest.raises(CrackxaiError) as err:
        load_model(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize(("field", "value"), [(8, 0x40), (8, 0x01), (10, 99)])
def test_flipped_zip_flag_or_method_is_one_line_error(tiny_model: dict[str, Any], tmp_path: Path,
                                                      field: int, value: int) -> None:
    """Found by the fuzz: central-directory flag bit 6 made zipfile raise NotImplementedError
    ("strong encryption"), bit 0 RuntimeError ("encrypted"), an unknown method another one."""
    data = bytearray(tiny_model["bytes"])
    at = data.index(b"PK\x01\x02") + field  # first central-directory entry: flags, method
    data[at] |= value
    path = tmp_path / "model.keras"
    path.write_bytes(bytes(data))
    from crackxai.models.io import load_model

    with pytest.raises(CrackxaiError, match="corrupt or truncated") as err:
        load_model(path)
    assert "\n" not in str(err.value)
