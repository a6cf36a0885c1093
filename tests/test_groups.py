"""Group-aware splitting (crackxai.data.groups): property tests of the split and the clustering,
and the preprocess stage with each `preprocess.split.group_by` on tiny real image folders."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crackxai.core.errors import DataError
from crackxai.data.groups import (
    group_split,
    keys_to_groups,
    near_duplicate_groups,
    perceptual_hashes,
    regex_keys,
    straddles,
)
from tests.test_preprocess import RAW, run, texture, write_manifest

SPLITS = ("train", "val", "test")


@st.composite
def grouped_data(draw):
    n = draw(st.integers(1, 60))
    n_groups = draw(st.integers(1, n))
    groups = np.array(draw(st.lists(st.integers(0, n_groups - 1), min_size=n, max_size=n)))
    labels = np.array(draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)))
    w = draw(st.lists(st.floats(0.01, 1.0), min_size=3, max_size=3))
    fractions = dict(zip(SPLITS, (x / sum(w) for x in w), strict=True))
    return labels, groups, fractions, draw(st.integers(0, 2**32 - 1))


@settings(max_examples=100, deadline=None)
@given(grouped_data())
def test_group_split_never_puts_a_group_in_two_splits(data):
    labels, groups, fractions, seed = data
    splits = group_split(labels, groups, fractions, seed)
    everything = np.concatenate(list(splits.values()))
    assert sorted(everything.tolist()) == list(range(len(labels)))  # each item exactly once
    assert straddles(groups, splits) == 0
    owner = {}
    for name, idx in splits.items():
        for gid in set(groups[idx].tolist()):
            assert owner.setdefault(gid, name) == name
    if len(np.unique(groups)) >= 3:
        assert all(len(idx) for idx in splits.values())
    assert {k: v.tolist() for k, v in group_split(labels, groups, fractions, seed).items()} == \
        {k: v.tolist() for k, v in splits.items()}  # seeded


def test_group_split_of_single_images_is_stratified():
    labels = np.repeat([0, 1], [600, 400])
    splits = group_split(labels, np.arange(1000), {"train": 0.7, "val": 0.15, "test": 0.15}, 1)
    for name, frac in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
        counts = np.bincount(labels[splits[name]], minlength=2)
        assert abs(counts[0] - 600 * frac) <= 1 and abs(counts[1] - 400 * frac) <= 1


def _reference_groups(hashes: list[int], d: int) -> set[frozenset[int]]:
    """Plain Python union-find over every pair: what near_duplicate_groups must equal."""
    parent = list(range(len(hashes)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(len(hashes)):
        for j in range(i + 1, len(hashes)):
            if bin(hashes[i] ^ hashes[j]).count("1") <= d:
                parent[root(i)] = root(j)
    out: dict[int, set[int]] = {}
    for i in range(len(hashes)):
        out.setdefault(root(i), set()).add(i)
    return {frozenset(s) for s in out.values()}


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1), max_size=40), st.integers(0, 63),
       st.lists(st.tuples(st.integers(0, 39), st.integers(0, 63)), max_size=30))
def test_near_duplicate_groups_equal_pairwise_union_find(base, d, flips):
    hashes = list(base)
    for i, bit in flips:  # plant near copies of existing hashes
        if hashes:
            hashes.append(hashes[i % len(hashes)] ^ (1 << bit))
    labels = near_duplicate_groups(np.array(hashes, dtype=np.uint64), d)
    found: dict[int, set[int]] = {}
    for i, g in enumerate(labels.tolist()):
        found.setdefault(g, set()).add(i)
    assert {frozenset(s) for s in found.values()} == _reference_groups(hashes, d)


def test_perceptual_hash_sees_a_recompressed_copy_as_near():
    a, b = texture(1, 64, 64), texture(2, 64, 64)
    jpeg = cv2.imdecode(cv2.imencode(".jpg", a, [cv2.IMWRITE_JPEG_QUALITY, 60])[1], 1)
    h = perceptual_hashes(np.stack([a, jpeg, b]))
    assert np.bitwise_count(h[0] ^ h[1]) <= 4 < np.bitwise_count(h[0] ^ h[2])


def test_regex_keys_and_missing_keys():
    keys = regex_keys(["P/a_1.jpg", "P/a_2.jpg", "N/b_1.jpg", "N/zzz.jpg"], r"(\w+)_\d+\.jpg$")
    assert keys == ["a", "a", "b", None]
    assert regex_keys(["x12.jpg"], r"\d+") == ["12"]  # no capture group: the whole match
    groups = keys_to_groups(keys)
    assert groups[0] == groups[1] != groups[2] and len(set(groups.tolist())) == 3


# --- the preprocess stage ----------------------------------------------------------------------

def smooth_texture(seed: int, side: int = 52) -> np.ndarray:
    """A smooth random BGR image (like a photo's low frequencies, which phash looks at)."""
    rng = np.random.default_rng(seed)
    x = cv2.GaussianBlur(rng.integers(0, 256, (side, side, 3)).astype(np.float32), (0, 0), 3)
    return ((x - x.min()) / (x.max() - x.min()) * 255).astype(np.uint8)


def make_photos(n_photos: int = 12, crops: int = 3) -> None:
    """Negative/ and Positive/ with `crops` slightly noisy copies (as a re-encode would give) of
    each of n_photos distinct smooth images per class, named <photo>_<crop>.png."""
    for cls, offset in (("Negative", 0), ("Positive", 10_000)):
        (RAW / cls).mkdir(parents=True, exist_ok=True)
        for p in range(n_photos):
            base = smooth_texture(offset + p)
            for c in range(crops):
                noise = np.random.default_rng(c).integers(-3, 4, base.shape)
                crop = np.clip(base.astype(int) + noise, 0, 255).astype(np.uint8)
                cv2.imwrite(str(RAW / cls / f"{cls[0]}{p:02d}_{c}.png"), crop)


def split_paths() -> dict[str, list[str]]:
    return {s: pd.read_csv(f"data/processed/{s}.csv")["path"].tolist() for s in SPLITS}


def photo_of(path: str) -> str:
    return Path(path).name.split("_")[0]


def assert_no_photo_in_two_splits() -> None:
    owner: dict[str, str] = {}
    for s, paths in split_paths().items():
        for p in paths:
            assert owner.setdefault(photo_of(p), s) == s, f"{p} in {s} and {owner[photo_of(p)]}"


def test_near_duplicate_groups_keep_crops_of_a_photo_together(project: Path) -> None:
    make_photos()
    write_manifest()
    report = run("preprocess.split.group_by=near_duplicates")
    g = report["groups"]
    assert g["by"] == "near_duplicates" and g["straddles"] == 0
    assert g["count"] == 24 and g["largest"] == 3  # one group per photo
    assert g["straddles_random_split"] > 0  # the leak a random split has
    assert_no_photo_in_two_splits()
    saved = json.loads(Path("reports/data_quality.json").read_text())["groups"]
    assert saved == g


def test_filename_regex_groups(project: Path) -> None:
    make_photos()
    write_manifest()
    report = run("preprocess.split.group_by=filename_regex",
                 r"preprocess.split.group_regex=/(\w+)_\d+\.png$")
    assert report["groups"]["count"] == 24 and report["groups"]["straddles"] == 0
    assert_no_photo_in_two_splits()


def test_manifest_column_groups(project: Path) -> None:
    make_photos()
    write_manifest()
    manifest = pd.read_csv("data/manifest.csv", dtype=str, keep_default_na=False)
    manifest["photo"] = [photo_of(p) for p in manifest["path"]]
    manifest.to_csv("data/manifest.csv", index=False, quoting=csv.QUOTE_MINIMAL)
    report = run("preprocess.split.group_by=column", "preprocess.split.group_column=photo")
    assert report["groups"]["count"] == 24 and report["groups"]["straddles"] == 0
    assert_no_photo_in_two_splits()


@pytest.mark.parametrize(("overrides", "match"), [
    (("preprocess.split.group_by=filename_regex", "preprocess.split.group_regex=^nomatch_"),
     r"group_regex='\^nomatch_' matches none of the 72 paths in 'data/manifest\.csv'"),
    (("preprocess.split.group_by=column", "preprocess.split.group_column=photo"),
     r"group_column='photo' is not a column of 'data/manifest\.csv' \(it has path, class"),
])
def test_a_grouping_that_cannot_work_fails_before_any_decoding(project: Path, overrides,
                                                               match) -> None:
    make_photos()
    write_manifest()
    with pytest.raises(DataError, match=match) as err:
        run(*overrides)
    assert "\n" not in str(err.value)
    assert not Path("data/processed").exists() and not Path("reports/data_quality.json").exists()


def test_too_few_groups_is_a_clear_error(project: Path) -> None:
    make_photos(n_photos=1, crops=3)
    write_manifest()
    with pytest.raises(DataError, match=r"leaves the .* split\(s\) empty: .* form only 2 group"):
        run("preprocess.split.group_by=filename_regex", r"preprocess.split.group_regex=/(\w+)_")
