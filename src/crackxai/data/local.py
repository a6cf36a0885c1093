"""A local image-folder dataset (a folder or a .zip, one sub-folder per class), copied into data/raw."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from crackxai.core.errors import DataError
from crackxai.data.manifest import Row
from crackxai.data.sources import SourceOptions
from crackxai.data.synthetic import MASK_DIR

logger = logging.getLogger(__name__)

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


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


def from_local(path: str, out: Path, scratch: Path, limit: int | None) -> list[Row]:
    """Copy the folder or .zip at `path` into `out` (the caller resolves a relative path: the
    download stage against the user's project)."""
    src = Path(os.path.expanduser(path))
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
        logger.info(f"extracting {src}")
        safe_extract(src, scratch, what)
        src = scratch
    logger.info(f"copying class folders from {path}")
    return import_folder(src, out, "local", what, limit)


def fetch(out: Path, scratch: Path, opts: SourceOptions) -> list[Row]:
    """The `local` source."""
    return from_local(str(opts.path), out, scratch, opts.limit_per_class)


PAIRED_IMAGES, PAIRED_MASKS = "images", "masks"


def masked_folder(root: Path, crack_class: str) -> list[tuple[Path, Path | None, str]]:
    """(image, mask or None, class) for every image of a folder that carries pixel masks, in
    either layout:

    - a local data set: class folders, masks in `_masks/<class>/<same relative path>.png`;
    - a paired folder: `images/` and `masks/`, one mask per image with the same stem (`.png`),
      every image of class `crack_class` (e.g. CRACK500-style crops, all cracked).

    Sorted by path; an image without a mask has None (scored null, never 0)."""
    root = Path(root)
    if (root / PAIRED_IMAGES).is_dir() and (root / PAIRED_MASKS).is_dir():
        images = sorted(f for f in (root / PAIRED_IMAGES).iterdir() if f.is_file() and _is_image(f))
        out = []
        for f in images:
            mask = root / PAIRED_MASKS / f"{f.stem}.png"
            out.append((f, mask if mask.is_file() else None, crack_class))
    else:
        root = find_class_root(root)
        files = _list_classes(root, f"'{root}'", None)
        out = []
        for c, rels in files.items():
            for rel in rels:
                mask = root / MASK_DIR / c / rel.with_suffix(".png")
                out.append((root / c / rel, mask if mask.is_file() else None, c))
    if not out:
        raise DataError(f"'{root}' holds no images: give a folder with {PAIRED_IMAGES}/ and "
                        f"{PAIRED_MASKS}/, or class folders with masks in {MASK_DIR}/<class>/.")
    return out
