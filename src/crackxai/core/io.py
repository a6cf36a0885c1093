"""Atomic output writing: a reader (or a killed run) never sees a half-written file or folder."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from crackxai.core.errors import disk_full, is_disk_full


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or path.suffix)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        tmp_path.chmod(0o644)  # mkstemp makes it 0600; the result is an ordinary output file
        os.replace(tmp_path, path)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(path) from None
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


def temp_prefix(name: str) -> str:
    """The name prefix of a temporary folder beside output `name`; it holds our process id, so
    a later run can tell the leftovers of a killed process from a live writer's folder."""
    return f".{name}.tmp-{os.getpid()}-"


def remove_stale_temporaries(folder: str | Path, name: str) -> list[Path]:
    """Remove the temporary folders beside output `name` (`temp_prefix`, atomic_dir's
    `.name.old-<pid>`) of processes that are gone: SIGKILL skips every cleanup, and the
    leftovers would pile up (a whole data set each). Returns what was removed."""
    removed = []
    for kind in ("tmp", "old"):
        for item in Path(folder).glob(f".{name}.{kind}-*"):
            pid = item.name[len(f".{name}.{kind}-"):].split("-", 1)[0]
            if not pid.isdigit() or _alive(int(pid)):
                continue
            shutil.rmtree(item, ignore_errors=True) if item.is_dir() else item.unlink()
            removed.append(item)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; on success it replaces `path` whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, path.name)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=temp_prefix(path.name)))
    tmp.chmod(0o755)  # mkdtemp makes it 0700; the result is an ordinary output folder
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(path) from None
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def staged_outputs(dest: str | Path) -> Iterator[Path]:
    """Yield an empty folder beside `dest` to build the outputs in; on success move each into
    `dest`, a folder replacing the old folder whole (maps of methods no longer run disappear),
    metrics.json last. Files in `dest` that are not written (DVC's .gitignore) are left alone:
    unlike `atomic_dir`, which replaces the folder itself."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(dest.parent, dest.name)
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=temp_prefix(dest.name)))
    try:
        yield staging
        for item in sorted(staging.iterdir(), key=lambda p: (p.is_file(), p.name == "metrics.json")):
            target = dest / item.name
            if item.is_dir() and target.exists():
                os.replace(target, staging / f".old-{item.name}")  # removed with the staging folder
            os.replace(item, target)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(dest) from None
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def open_memmap(path: str | Path, shape: tuple[int, ...], dtype: Any) -> np.memmap:
    """A new .npy file mapped for writing (np.lib.format.open_memmap, mode w+) with its blocks
    reserved up front: stores into a sparse map on a full disk kill the process with SIGBUS,
    whereas reserving fails here with ENOSPC (which atomic_dir turns into one paragraph)."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    with open(path, "r+b") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size:
            os.posix_fallocate(handle.fileno(), 0, size)
    return array


class NpyRows:
    """A new .npy file of `shape` (blocks reserved as open_memmap reserves them) written row by
    row with os.pwrite. Why not stores into a memory map: on ext4 each first store into a page of
    a fresh map costs a page fault (~10 us per 4 KiB), most of preprocess's time at 40,000 images;
    pwrite copies into the page cache directly, releases the GIL, and is safe from threads."""

    def __init__(self, path: str | Path, shape: tuple[int, ...], dtype: Any) -> None:
        header = open_memmap(path, shape, dtype)
        self.path, self.shape, self.dtype = Path(path), tuple(shape), np.dtype(dtype)
        self._offset = header.offset
        del header  # unmaps; the file keeps its header and reserved blocks
        self._row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._fd = os.open(path, os.O_RDWR)

    def write(self, start: int, rows: np.ndarray) -> None:
        """Rows start, start+1, ... of the file from `rows` (shape (k, *shape[1:]))."""
        data = memoryview(np.ascontiguousarray(rows, dtype=self.dtype)).cast("B")
        if len(data) != len(rows) * self._row_bytes or start + len(rows) > self.shape[0]:
            raise ValueError(f"{self.path}: rows {start}..{start + len(rows)} of shape "
                             f"{np.shape(rows)} do not fit {self.shape}")
        offset = self._offset + start * self._row_bytes
        while data:  # pwrite may write less than asked
            written = os.pwrite(self._fd, data, offset)
            data, offset = data[written:], offset + written

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> NpyRows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")


def write_npy(path: str | Path, array: np.ndarray) -> None:
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, array)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
