"""The Kaggle data set through the `kaggle` package (imported lazily: it authenticates at import)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
from pathlib import Path

import pandas as pd

from crackxai.core.errors import CrackxaiError, DataError
from crackxai.data.local import import_folder, safe_extract
from crackxai.data.manifest import Row
from crackxai.data.sources import SourceOptions

logger = logging.getLogger(__name__)

# Shown wherever results on this data set are reported.
LEAK_CAVEAT = (
    "Caveat (Kaggle surface-crack data): its 40,000 patches are crops of only 458 photos and a "
    "random split puts crops of one photo in both train and test, so test figures (here, and the "
    "99-100% accuracies published for this dataset) partly reflect that leak and overstate "
    "accuracy on new photos."
)
LEAK_CAVEAT_SHORT = ("Kaggle crack data: 40,000 patches cropped from 458 photos; a random split "
                     "leaks crops of one photo into train and test, so these figures are optimistic.")
# A local copy of the Kaggle set is recognised by its layout: exactly these class folders, with
# (nearly) every file named as Kaggle names them (Positive/00001.jpg, Positive/19378_1.jpg).
KAGGLE_CLASSES = ("Negative", "Positive")
KAGGLE_FILE = re.compile(r"^\d{5}(?:_1)?\.jpg$")
KAGGLE_NAMED_FRACTION = 0.9


def is_kaggle_data(manifest: pd.DataFrame) -> bool:
    """Whether LEAK_CAVEAT applies to the images a manifest lists (columns path, class and
    optionally source): any row downloaded from Kaggle (source 'kaggle'), or a local copy of the
    set by the layout above. Synthetic and other data sets: False (the generator names its files
    like the set's, so its rows are told apart by their source)."""
    if "source" in manifest:
        source = manifest["source"].astype(str)
        if (source == "kaggle").any():
            return True
        manifest = manifest[source != "synthetic"]
    if manifest.empty:
        return False
    names = manifest["path"].astype(str).str.rsplit("/", n=1).str[-1]
    return (sorted(set(manifest["class"].astype(str))) == list(KAGGLE_CLASSES)
            and names.str.match(KAGGLE_FILE).mean() >= KAGGLE_NAMED_FRACTION)


def manifest_is_kaggle(path: Path) -> bool:
    """is_kaggle_data of the manifest file at `path`; False when there is none or it cannot be
    read (provenance unknown: no caveat claimed)."""
    try:
        return is_kaggle_data(pd.read_csv(path, dtype=str, keep_default_na=False))
    except (OSError, ValueError, KeyError):
        return False


ALTERNATIVES = (
    "Or use data you already have with `data=local data.path=/path/to/folder_or.zip` (one "
    "sub-folder per class), or the embedded generator with `data=synthetic`."
)


KAGGLE_HELP = (
    "Put your API token in ~/.kaggle/kaggle.json (from kaggle.com > Settings > API > Create New "
    'Token; {"username": ..., "key": ...}, chmod 600), or set KAGGLE_USERNAME and KAGGLE_KEY, '
    "or KAGGLE_API_TOKEN (or save the token to ~/.kaggle/access_token). " + ALTERNATIVES
)


def _secrets(api: object | None = None) -> list[str]:
    """Credential values that must never be echoed (from env, kaggle.json and the client)."""
    values = [os.environ.get("KAGGLE_KEY"), os.environ.get("KAGGLE_API_TOKEN")]
    for d in (os.environ.get("KAGGLE_CONFIG_DIR"), "~/.kaggle", "~/.config/kaggle"):
        with contextlib.suppress(Exception):
            values.append(json.loads(Path(os.path.expanduser(d), "kaggle.json").read_text())["key"])
    with contextlib.suppress(Exception):
        values.append(Path("~/.kaggle/access_token").expanduser().read_text().strip())
    config = getattr(api, "config_values", None) or {}
    values += [str(v) for k, v in config.items() if k in ("key", "token")]
    return [v for v in values if v and len(v) >= 4]


def redact(text: str, api: object | None = None) -> str:
    for secret in _secrets(api):
        text = text.replace(secret, "***")
    return text


def _reason(exc: BaseException, api: object | None = None) -> str:
    if isinstance(exc, SystemExit):
        return f"the Kaggle client gave up with exit code {exc.code}"
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return redact(f"{type(exc).__name__}: {first}" if first else type(exc).__name__, api)


def kaggle_api() -> object:
    """An authenticated KaggleApi. Imported here: `import kaggle` authenticates at import time."""
    quiet = io.StringIO()
    try:  # the client prints help and calls exit(1) when it finds no credentials
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
    except ImportError as exc:
        raise CrackxaiError(
            f"data=kaggle needs the `kaggle` package ({exc}); install the locked environment with "
            f"`make setup`. {ALTERNATIVES}"
        ) from None
    except SystemExit:
        raise CrackxaiError(f"No Kaggle credentials found. {KAGGLE_HELP}") from None
    except Exception as exc:  # e.g. an access token that cannot be checked without network
        raise CrackxaiError(
            f"Cannot authenticate with Kaggle ({_reason(exc)}). Check the network connection "
            f"and your credentials. {KAGGLE_HELP}"
        ) from None
    return api


def from_kaggle(dataset: str, out: Path, scratch: Path, limit: int | None,
                api: object | None = None) -> list[Row]:
    """Download the Kaggle data set `dataset`, check and extract it, copy it into `out`."""
    api = api or kaggle_api()
    logger.info(f"downloading Kaggle dataset {dataset}")
    archive_dir = scratch / "archive"
    archive_dir.mkdir()
    try:
        api.dataset_download_files(dataset, path=str(archive_dir), unzip=False, quiet=False)  # type: ignore[attr-defined]
    except (SystemExit, Exception) as exc:
        raise CrackxaiError(
            f"Downloading Kaggle dataset '{dataset}' (data.kaggle_dataset) failed: "
            f"{_reason(exc, api)}. Check the network connection, the dataset name and that "
            f"your credentials are valid. {KAGGLE_HELP}"
        ) from None
    archives = sorted(archive_dir.glob("*.zip"))
    if len(archives) != 1:
        raise DataError(f"The Kaggle download of '{dataset}' produced {len(archives)} zip "
                        f"archives ({[a.name for a in archives]}), expected one. {ALTERNATIVES}")
    extracted = scratch / "extracted"
    logger.info(f"verifying and extracting {archives[0].name}")
    safe_extract(archives[0], extracted, f"Kaggle archive of '{dataset}'")
    archives[0].unlink()  # free the space before copying
    return import_folder(extracted, out, "kaggle", f"the Kaggle dataset '{dataset}'",
                         limit)


def fetch(out: Path, scratch: Path, opts: SourceOptions) -> list[Row]:
    """The `kaggle` source."""
    return from_kaggle(opts.kaggle_dataset, out, scratch, opts.limit_per_class, opts.api)
