"""Where preprocess writes each decoded image: straight into the file of its split.

Before any decoding, a provisional split is computed from the manifest alone (its sha256 for the
de-duplication, every listed file assumed good, groups from names or a column), and each row's
pixels go to their place in that split's file as they are decoded; rows outside it (duplicates)
go to a side file. After decoding, the real split is computed as before (bad files out,
near-duplicate groups from the pixels). For a clean data set it is the provisional one, and the
files are already the outputs; otherwise they are gathered once into the real split's order.
The result equals decoding into one staging array and gathering from it, without writing every
image twice: at 40,000 images of 150 px that second copy, 2.7 GB, was a third of the stage.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from crackxai.core.io import NpyRows
from crackxai.data.curation import choose_split, deduplicate
from crackxai.data.groups import find_groups
from crackxai.data.processed import SPLITS, copy_rows

SIDE = "_staging_side"  # file stem of the rows outside the provisional split


def provisional_split(rows: pd.DataFrame, classes: list[str], group_by: str,
                      fractions: dict[str, float], seed: int, group_column: str | None,
                      group_regex: str | None) -> dict[str, np.ndarray]:
    """Row numbers per split as preprocess would choose them if every listed file decoded and
    matched its manifest hash. Near-duplicate groups need pixels: a plain split stands in."""
    sha = rows["sha256_manifest"].where(rows["sha256_manifest"] != "", rows["path"])
    keep, _, _ = deduplicate(rows.assign(good=True, sha256=sha))
    labels = rows["class"].map({c: i for i, c in enumerate(classes)}).to_numpy()[keep]
    by = "none" if group_by == "near_duplicates" else group_by
    kept = rows.iloc[keep]
    groups = find_groups(by, kept["path"].tolist(), None, keep,
                         kept[group_column].tolist() if by == "column" else None, group_regex)
    chosen, _ = choose_split(by, labels, groups, fractions, seed)
    return {s: keep[idx] for s, idx in chosen.items()}


class RowStore:
    """One logical (n, *tail) uint8 array of the manifest's rows, stored in the split files of a
    provisional split (`{split}_{kind}.npy` in `out`) plus a side file: written a row at a time
    while decoding (thread-safe), then read like an array, then `finish`ed into the real split."""

    def __init__(self, out: Path, kind: str, tail: tuple[int, ...],
                 provisional: dict[str, np.ndarray], n: int) -> None:
        self.out, self.kind, self.shape = Path(out), kind, (n, *tail)
        self.provisional = provisional
        self.file_of = np.full(n, len(SPLITS), dtype=np.int64)
        self.pos_of = np.zeros(n, dtype=np.int64)
        for f, s in enumerate(SPLITS):
            self.file_of[provisional[s]] = f
            self.pos_of[provisional[s]] = np.arange(len(provisional[s]))
        side = np.flatnonzero(self.file_of == len(SPLITS))
        self.pos_of[side] = np.arange(len(side))
        self.paths = [self.out / f"{s}_{kind}.npy" for s in SPLITS] + [self.out / f"{SIDE}_{kind}.npy"]
        counts = [len(provisional[s]) for s in SPLITS] + [len(side)]
        self._files: list[NpyRows | np.ndarray | None] = [
            NpyRows(p, (c, *tail), np.uint8) if c else None for p, c in zip(self.paths, counts, strict=True)]

    def __len__(self) -> int:
        return self.shape[0]

    def write(self, row: int, data: np.ndarray) -> None:
        self._files[self.file_of[row]].write(int(self.pos_of[row]), data[None])

    def close(self) -> None:
        """Done writing: from now on rows are read (memory-mapped) with store[rows]."""
        for f, handle in enumerate(self._files):
            if isinstance(handle, NpyRows):
                handle.close()
                self._files[f] = np.load(self.paths[f], mmap_mode="r")

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows)
        out = np.empty((len(rows), *self.shape[1:]), dtype=np.uint8)
        files = self.file_of[rows]
        for f in np.unique(files):
            sel = np.flatnonzero(files == f)
            pos = self.pos_of[rows[sel]]
            order = np.argsort(pos, kind="stable")  # read each file front to back
            out[sel[order]] = self._files[f][pos[order]]
        return out

    def finish(self, splits: dict[str, np.ndarray]) -> None:
        """Leave `{split}_{kind}.npy` holding exactly the rows `splits[s]`, in that order, and
        remove the side file."""
        moved = not all(np.array_equal(splits[s], self.provisional[s]) for s in SPLITS)
        final = {s: self.out / f"_final_{s}_{self.kind}.npy" for s in SPLITS}
        if moved:
            for s in SPLITS:
                with NpyRows(final[s], (len(splits[s]), *self.shape[1:]), np.uint8) as dst:
                    copy_rows(dst, self, splits[s])
        self._files = []  # drop the maps before their files are replaced or removed
        if moved:
            for s in SPLITS:
                os.replace(final[s], self.out / f"{s}_{self.kind}.npy")
        self.paths[-1].unlink(missing_ok=True)
