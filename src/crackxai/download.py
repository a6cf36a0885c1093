"""Download: put the raw images in `data/raw/` and list them in `data/manifest.csv`.

    python -m crackxai.download                                  # data=synthetic (default)
    python -m crackxai.download data=kaggle                      # needs Kaggle credentials
    python -m crackxai.download data=local data.path=/imgs       # a folder or a .zip
    python -m crackxai.download --params params.yaml             # how dvc.yaml runs it

`data.source` picks where the images come from:

- `synthetic`: procedural concrete surfaces (crackxai.synthetic), `data.synthetic.n_per_class`
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

import contextlib
import csv
import hashlib
import io
import json
import os
import stat
import tempfile
import time
import zipfile
import zlib
from collections import Counter
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from crackxai import synthetic
from crackxai.cli import log, run_stage
from crackxai.config import Config
from crackxai.errors import CrackxaiError, DataError
from crackxai.io import atomic_dir, atomic_path
from crackxai.paths import MANIFEST, RAW_DIR

STAGE = "download"
MANIFEST_COLUMNS = ("path", "class", "bytes", "sha256", "source", "mask")
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
MASK_DIR = synthetic.MASK_DIR
ALTERNATIVES = (
    "Or use data you already have with `data=local data.path=/path/to/folder_or.zip` (one "
    "sub-folder per class), or the embedded generator with `data=synthetic`."
)
KAGGLE_HELP = (
    "Put your API token in ~/.kaggle/kaggle.json (from kaggle.com > Settings > API > Create New "
    'Token; {"username": ..., "key": ...}, chmod 600), or set KAGGLE_USERNAME and KAGGLE_KEY, '
    "or KAGGLE_API_TOKEN (or save the token to ~/.kaggle/access_token). " + ALTERNATIVES
)

Row = dict[str, str | int]


# ---------------------------------------------------------------------------------------------
# Copying an image-folder dataset (local folder, extracted local zip, extracted Kaggle archive)
# ---------------------------------------------------------------------------------------------


def _ignored(p: Path) -> bool:
    return p.name.startswith((".", "_"))  # .DS_Store, __MACOSX, _masks, hidden files


def find_class_root(root: Path) -> Path:
    """The folder whose sub-folders are the classes: skips single-folder wrappers."""
    while True:
        entries = [e for e in root.iterdir() if not _ignored(e)]
        dirs = [e for e in entries if e.is_dir()]
        if len(dirs) == 1 and not any(e.is_file() and _is_image(e) for e in entries):
            root = dirs[0]
        else:
            return root


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTS


def _list_classes(root: Path, what: str, limit: int | None) -> dict[str, list[Path]]:
    """{class: [file, ...]} (paths relative to root/class, sorted, capped at `limit`)."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not _ignored(d))
    if len(classes) < 2:
        raise DataError(
            f"{what} must hold one sub-folder per class (at least two, e.g. Negative/ and "
            f"Positive/), but '{root}' has {len(classes)}: {classes}. Point data.path at the "
            f"folder that contains the class folders."
        )
    files: dict[str, list[Path]] = {}
    for c in classes:
        found = sorted(
            (f.relative_to(root / c) for f in (root / c).rglob("*")
             if f.is_file() and _is_image(f)
             and not any(part.startswith((".", "_")) for part in f.relative_to(root / c).parts)),
            key=lambda p: p.as_posix(),
        )
        if not found:
            raise DataError(
                f"Class folder '{root / c}' of {what} holds no image files "
                f"({' '.join(sorted(IMAGE_EXTS))}). Add images or remove the folder."
            )
        files[c] = found[:limit] if limit else found
    return files


def _copy(src: Path, dst: Path) -> tuple[int, str]:
    data = src.read_bytes()
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data)
    return len(data), hashlib.sha256(data).hexdigest()


def import_folder(root: Path, out: Path, source: str, what: str, limit: int | None) -> list[Row]:
    """Copy the class folders under `root` (and masks in root/_masks) into `out`."""
    root = find_class_root(root)
    files = _list_classes(root, what, limit)
    rows: list[Row] = []
    total = sum(len(v) for v in files.values())
    with tqdm(total=total, desc="copy", unit="file") as bar:
        for c, rels in files.items():
            for rel in rels:
                path = PurePosixPath(c, rel.as_posix())
                size, sha = _copy(root / c / rel, out / path)
                mask = ""
                mask_src = root / MASK_DIR / c / rel.with_suffix(".png")
                if mask_src.is_file():
                    mask = PurePosixPath(MASK_DIR, c, rel.with_suffix(".png").as_posix()).as_posix()
                    _copy(mask_src, out / mask)
                rows.append({"path": path.as_posix(), "class": c, "bytes": size, "sha256": sha,
                             "source": source, "mask": mask})
                bar.update()
    return rows


# ---------------------------------------------------------------------------------------------
# Archives
# ---------------------------------------------------------------------------------------------


def safe_extract(archive: Path, dest: Path, what: str) -> None:
    """Check `archive` (a zip with intact CRCs, no unsafe entries), then extract it into dest."""
    corrupt = (
        f"{what} '{archive.name}' is not a valid zip archive or is corrupt"
    )
    if not zipfile.is_zipfile(archive):
        raise DataError(f"{corrupt}. Download it again (or pick another file).")
    try:
        with zipfile.ZipFile(archive) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise DataError(f"{corrupt}: entry {bad!r} fails its CRC check. Download it again.")
            for info in zf.infolist():
                name = info.filename.replace("\\", "/")
                parts = PurePosixPath(name).parts
                if name.startswith("/") or ".." in parts or (len(name) > 1 and name[1] == ":"):
                    raise DataError(
                        f"{what} '{archive.name}' contains an unsafe entry {info.filename!r} (an "
                        f"absolute path or '..' escaping the extraction folder); refusing to "
                        f"extract it. Use a trusted archive."
                    )
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise DataError(f"{what} '{archive.name}' contains a symbolic link "
                                    f"{info.filename!r}; refusing to extract it.")
            zf.extractall(dest)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise DataError(f"{corrupt} ({exc}). Download it again.") from None


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------


def from_synthetic(cfg: Config, out: Path) -> list[Row]:
    sc = cfg.data.synthetic
    n = min(sc.n_per_class, cfg.data.limit_per_class or sc.n_per_class)
    log(STAGE, f"generating {n} images per class, {sc.image_size}x{sc.image_size}, "
               f"difficulty={sc.difficulty}, seed={cfg.seed}")
    samples = synthetic.write_dataset(out, n, sc.image_size, sc.difficulty, cfg.seed)
    return [{"path": s.path, "class": s.label, "bytes": s.size, "sha256": s.sha256,
             "source": "synthetic", "mask": s.mask} for s in samples]


def from_local(cfg: Config, out: Path, scratch: Path) -> list[Row]:
    src = Path(os.path.expanduser(str(cfg.data.path)))
    if not src.is_absolute():
        # relative to the user's project, also when DVC runs a queued copy under .dvc/tmp/exps
        from crackxai.tracking import project_root

        src = project_root() / src
    if not src.exists():
        raise DataError(
            f"data.path '{src}' does not exist. Set data.path to a folder or .zip with one "
            f"sub-folder per class (e.g. `data=local data.path=/data/cracks`), or use "
            f"`data=synthetic`."
        )
    what = f"data.path '{src}'"
    if src.is_file():
        if src.suffix.lower() != ".zip":
            raise DataError(f"{what} is a file but not a .zip; give a folder or a .zip archive "
                            f"with one sub-folder per class.")
        log(STAGE, f"extracting {src}")
        safe_extract(src, scratch, what)
        src = scratch
    log(STAGE, f"copying class folders from {cfg.data.path}")
    return import_folder(src, out, "local", what, cfg.data.limit_per_class)


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


def from_kaggle(cfg: Config, out: Path, scratch: Path, api: object | None = None) -> list[Row]:
    dataset = cfg.data.kaggle_dataset
    api = api or kaggle_api()
    log(STAGE, f"downloading Kaggle dataset {dataset}")
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
    log(STAGE, f"verifying and extracting {archives[0].name}")
    safe_extract(archives[0], extracted, f"Kaggle archive of '{dataset}'")
    archives[0].unlink()  # free the space before copying
    return import_folder(extracted, out, "kaggle", f"the Kaggle dataset '{dataset}'",
                         cfg.data.limit_per_class)


# ---------------------------------------------------------------------------------------------
# Stage
# ---------------------------------------------------------------------------------------------


def write_manifest(rows: list[Row], path: Path = MANIFEST) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def main(cfg: Config, api: object | None = None) -> list[Row]:
    """Fetch `cfg.data.source` into data/raw and data/manifest.csv; returns the manifest rows.

    `api`: a Kaggle client to use instead of a fresh authenticated one (data=kaggle only).
    """
    source = cfg.data.source
    start = time.perf_counter()
    log(STAGE, f"data.source={source} -> {RAW_DIR}/ and {MANIFEST}")
    RAW_DIR.parent.mkdir(parents=True, exist_ok=True)
    # Scratch space beside data/raw (same file system), removed whatever happens.
    with tempfile.TemporaryDirectory(dir=RAW_DIR.parent, prefix=".download-") as scratch, \
            atomic_dir(RAW_DIR) as out:
        if source == "synthetic":
            rows = from_synthetic(cfg, out)
        elif source == "kaggle":
            rows = from_kaggle(cfg, out, Path(scratch), api)
        else:
            rows = from_local(cfg, out, Path(scratch))
        write_manifest(rows)
    counts = Counter(str(r["class"]) for r in rows)
    n_masks = sum(1 for r in rows if r["mask"])
    log(STAGE, f"wrote {len(rows)} images ({', '.join(f'{c}: {n}' for c, n in sorted(counts.items()))}"
               f"; {n_masks} masks) to {RAW_DIR}/ and {MANIFEST} in {time.perf_counter() - start:.1f} s")
    return rows


if __name__ == "__main__":
    run_stage(STAGE, main)
