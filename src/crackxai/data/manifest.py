"""data/manifest.csv (one row per raw file: path, class, bytes, sha256, source, mask) and the
class folders of data/raw it lists."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from crackxai.core.errors import DataError, first_line
from crackxai.core.io import atomic_path

MANIFEST_COLUMNS = ("path", "class", "bytes", "sha256", "source", "mask")
# bytes and source are informational: a hand-made manifest may leave them out.
REQUIRED_COLUMNS = tuple(c for c in MANIFEST_COLUMNS if c not in ("bytes", "source"))
Row = dict[str, str | int]
RERUN_DOWNLOAD = "Rerun the download stage (`dvc repro download` or `python -m crackxai.download`)"


def find_classes(raw_dir: Path) -> list[str]:
    """Class names = sub-folders of data/raw (not `_*` or `.*`), sorted: position = class index."""
    if not raw_dir.is_dir():
        raise DataError(f"'{raw_dir}' not found: there are no raw images yet. {RERUN_DOWNLOAD}.")
    classes = sorted(d.name for d in raw_dir.iterdir()
                     if d.is_dir() and not d.name.startswith(("_", ".")))
    if len(classes) < 2:
        raise DataError(
            f"'{raw_dir}' has {len(classes)} class folder(s) {classes}; a classifier needs at least "
            f"two (one sub-folder per class, e.g. Negative/ and Positive/). Check data.source and "
            f"data.path. {RERUN_DOWNLOAD}."
        )
    return classes


def read_manifest(manifest: Path, raw_dir: Path, classes: list[str]) -> pd.DataFrame:
    """The manifest, sorted by path, after checking it against what is really in data/raw."""
    if not manifest.is_file():
        raise DataError(f"'{manifest}' not found. {RERUN_DOWNLOAD}.")
    try:
        df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"Cannot parse '{manifest}': {first_line(exc)}. "
                        f"{RERUN_DOWNLOAD}.") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"'{manifest}' lacks column(s) {missing} (has {list(df.columns)}); it was "
                        f"written by an older or different tool. {RERUN_DOWNLOAD}.")
    folder = df["path"].str.split("/", n=1).str[0]
    bad = df[~folder.isin(classes) | df["path"].str.contains(r"(?:^|/)\.\.(?:/|$)", regex=True)
             | (folder != df["class"])]
    if len(bad):
        row = bad.iloc[0]
        raise DataError(
            f"'{manifest}' has {len(bad)} row(s) whose path is not inside a class folder of "
            f"'{raw_dir}' {classes} or whose class differs from that folder, e.g. "
            f"path={row['path']!r} class={row['class']!r}. {RERUN_DOWNLOAD}."
        )
    repeated = df["path"][df["path"].duplicated()]
    if len(repeated):
        raise DataError(f"'{manifest}' lists {repeated.iloc[0]!r} more than once. {RERUN_DOWNLOAD}.")
    # Hidden and `_` entries are skipped, as download skips them (.DS_Store, __MACOSX, ...).
    on_disk = {f.relative_to(raw_dir).as_posix() for c in classes for f in (raw_dir / c).rglob("*")
               if f.is_file() and not any(part.startswith((".", "_"))
                                          for part in f.relative_to(raw_dir).parts)}
    unlisted = sorted(on_disk - set(df["path"]))
    if unlisted:
        raise DataError(
            f"{len(unlisted)} file(s) in '{raw_dir}' are not in '{manifest}' (e.g. "
            f"{', '.join(unlisted[:3])}): the manifest is stale or files were added by hand. "
            f"{RERUN_DOWNLOAD} to rebuild the manifest, or remove those files."
        )
    df = df.rename(columns={"sha256": "sha256_manifest"})  # the real hash comes from the bytes
    return df.sort_values("path", kind="stable").reset_index(drop=True)



def write_manifest(rows: list[Row], path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)

