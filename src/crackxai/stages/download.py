"""Download: put the raw images in `data/raw/` and list them in `data/manifest.csv`.

    python -m crackxai.download                                  # data=synthetic (default)
    python -m crackxai.download data=kaggle                      # needs Kaggle credentials
    python -m crackxai.download data=local data.path=/imgs       # a folder or a .zip
    python -m crackxai.download --params params.yaml             # how dvc.yaml runs it

`data.source` picks where the images come from:

- `synthetic`: procedural concrete surfaces (crackxai.data.synthetic), `data.synthetic.n_per_class`
  images per class, deterministic for `seed`, with a pixel-exact crack mask per Positive image.
- `kaggle`: the `data.kaggle_dataset` archive (default arunrk7/surface-crack-detection) through the
  `kaggle` package, with credentials from ~/.kaggle/kaggle.json, KAGGLE_USERNAME + KAGGLE_KEY,
  KAGGLE_API_TOKEN or ~/.kaggle/access_token. The archive is checked (a zip, CRCs intact) and
  extracted safely (absolute paths, `..` and symlinks are refused).
- `local`: a folder or a .zip (`data.path`) with one sub-folder per class; any number of
  classes, names taken from the folders (sorted). Files are copied, never modified.

For kaggle and local, wrapper folders with a single sub-folder (an archive's top folder) are
skipped, files in a class folder are taken recursively (sub-paths kept), only image files
(.jpg .jpeg .png .bmp .tif .tiff .webp) count, and names starting with `.` or `_` are ignored.
`data.limit_per_class` keeps the first N files of each class in sorted path order (also caps
the synthetic count).

Output (all sources), written atomically (built in a temp folder, then swapped in):

    data/raw/<class>/<file>                 the images, e.g. data/raw/Positive/00001.jpg
    data/raw/_masks/<class>/<stem>.png      crack masks (synthetic; a local source that has
                                            _masks/<class>/<stem>.png beside its classes)
    data/manifest.csv                       path,class,bytes,sha256,source,mask

Manifest paths are POSIX and relative to data/raw (`Positive/00001.jpg`,
`_masks/Positive/00001.png`); `mask` is empty when an image has none; `source` is
synthetic | kaggle | local. Masks are 8-bit, 255 = crack, the same size as their image.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from pathlib import Path

from crackxai.config import Config
from crackxai.config.entry import run_stage
from crackxai.core.entry import log
from crackxai.core.io import atomic_dir, remove_stale_temporaries, temp_prefix
from crackxai.core.paths import MANIFEST, RAW_DIR, project_root
from crackxai.data.manifest import Row, write_manifest
from crackxai.data.sources import SourceOptions, fetch

STAGE = "download"


def local_path(path: str) -> str:
    """data.path as given when absolute (or ~), else relative to the user's project, also when DVC
    runs a queued copy under .dvc/tmp/exps."""
    if Path(path).expanduser().is_absolute():
        return path
    return str(project_root() / path)


def main(cfg: Config, api: object | None = None) -> list[Row]:
    """Fetch `cfg.data.source` into data/raw and data/manifest.csv; returns the manifest rows.

    `api`: a Kaggle client to use instead of a fresh authenticated one (data=kaggle only).
    """
    source = cfg.data.source
    start = time.perf_counter()
    log(STAGE, f"data.source={source} -> {RAW_DIR}/ and {MANIFEST}")
    RAW_DIR.parent.mkdir(parents=True, exist_ok=True)
    # Scratch space beside data/raw (same file system), removed whatever happens (a killed
    # run's, at the next run).
    remove_stale_temporaries(RAW_DIR.parent, "download")
    with tempfile.TemporaryDirectory(dir=RAW_DIR.parent, prefix=temp_prefix("download")) as scratch, \
            atomic_dir(RAW_DIR) as out:
        d = cfg.data
        opts = SourceOptions(seed=cfg.seed, limit_per_class=d.limit_per_class,
                             path=local_path(d.path) if d.path else None,
                             kaggle_dataset=d.kaggle_dataset, n_per_class=d.synthetic.n_per_class,
                             image_size=d.synthetic.image_size,
                             difficulty=d.synthetic.difficulty, api=api)
        rows = fetch(source, out, Path(scratch), opts)
        write_manifest(rows, MANIFEST)
    counts = Counter(str(r["class"]) for r in rows)
    n_masks = sum(1 for r in rows if r["mask"])
    log(STAGE, f"wrote {len(rows)} images ({', '.join(f'{c}: {n}' for c, n in sorted(counts.items()))}"
               f"; {n_masks} masks) to {RAW_DIR}/ and {MANIFEST} in {time.perf_counter() - start:.1f} s")
    return rows


if __name__ == "__main__":
    run_stage(STAGE, main)
