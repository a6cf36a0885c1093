"""preprocess: bad files, duplicates, split, masks, failure path, determinism, dataset round trip.

Every test builds a tiny raw dataset with cv2.imwrite in a temp project and writes the manifest
itself (as the download stage would), hashing the files.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from crackxai.config import load_config
from crackxai.core.errors import DataError
from crackxai.data import processed as dataset
from crackxai.stages.preprocess import main

REPO = Path(__file__).resolve().parents[1]
RAW = Path("data/raw")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_manifest(masks: dict[str, str] | None = None) -> None:
    """data/manifest.csv for every file under data/raw/<class>/ (as `download` writes it)."""
    masks = masks or {}
    files = sorted(f for c in RAW.iterdir() if c.is_dir() and not c.name.startswith(("_", "."))
                   for f in c.rglob("*") if f.is_file())
    with open("data/manifest.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "class", "bytes", "sha256", "source", "mask"])
        for f in files:
            rel = f.relative_to(RAW).as_posix()
            w.writerow([rel, f.parent.name, f.stat().st_size, sha256(f), "test", masks.get(rel, "")])


def texture(seed: int, h: int = 48, w: int = 48) -> np.ndarray:
    """A unique BGR texture (distinct content -> distinct sha256)."""
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (3, 3), 0)


def make_raw(n_neg: int = 12, n_pos: int = 12) -> None:
    for cls, n, offset in (("Negative", n_neg, 0), ("Positive", n_pos, 10_000)):
        (RAW / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            cv2.imwrite(str(RAW / cls / f"{i:04d}.jpg"), texture(offset + i))


def run(*overrides: str) -> dict:
    cfg = load_config(["--params", "params.yaml", "preprocess.image_size=32",
                       "preprocess.workers=0", *overrides])
    return main(cfg)


def raw_hashes() -> dict[str, str]:
    return {f.as_posix(): sha256(f) for f in sorted(RAW.rglob("*")) if f.is_file()}


def test_bad_files_are_rejected_with_reasons_and_converted(project: Path) -> None:
    make_raw()
    neg = RAW / "Negative"
    (neg / "empty.jpg").write_bytes(b"")
    jpeg = cv2.imencode(".jpg", texture(1))[1].tobytes()
    (neg / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (neg / "text.jpg").write_text("this is not an image\n")
    cv2.imwrite(str(neg / "small.jpg"), texture(2, 20, 50))
    cv2.imwrite(str(neg / "gray.png"), texture(3)[..., 0])
    cv2.imwrite(str(neg / "rgba.png"), np.dstack([texture(4), np.full((48, 48), 7, np.uint8)]))
    sixteen = (texture(5).astype(np.uint16) * 257)
    cv2.imwrite(str(neg / "deep.png"), sixteen)
    write_manifest()
    before = raw_hashes()

    report = run("preprocess.min_good_fraction=0.5")

    assert raw_hashes() == before  # raw files are never modified
    assert report["total"] == 31 and report["good"] == 27
    assert report["rejected_by_reason"] == {"empty": 1, "not_an_image": 1, "too_small": 1,
                                            "truncated": 1}
    assert report["converted"] == {"16-bit": 1, "grayscale": 1}
    rejected = {r["path"]: r["reason"] for r in report["rejected_files"]}
    assert rejected["Negative/truncated.jpg"] == "truncated"
    assert rejected["Negative/small.jpg"] == "too_small"
    assert report["per_class"]["Negative"] == {"total": 19, "good": 15, "rejected": 4,
                                               "duplicates": 0, "cross_class_conflicts": 0,
                                               "kept": 15}
    on_disk = json.loads(Path("reports/data_quality.json").read_text())
    assert on_disk["rejected"] == 4

    # Converted images are 8-bit RGB with the right content.
    records = {s: dataset.load_split(s, "data/processed") for s in dataset.SPLITS}
    for split in records.values():
        assert split.images.dtype == np.uint8 and split.images.shape[1:] == (32, 32, 3)
    def row_of(path: str) -> np.ndarray:
        for split in records.values():
            hit = split.records.index[split.records["path"] == path]
            if len(hit):
                return np.asarray(split.images[hit[0]])
        raise AssertionError(path)
    expected = cv2.cvtColor(cv2.resize(texture(5), (32, 32), interpolation=cv2.INTER_AREA),
                            cv2.COLOR_BGR2RGB)
    assert np.abs(row_of("Negative/deep.png").astype(int) - expected).max() <= 1
    gray = row_of("Negative/gray.png")
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    rgba = row_of("Negative/rgba.png")  # alpha dropped, colours kept (RGB order)
    expected = cv2.cvtColor(cv2.resize(texture(4), (32, 32), interpolation=cv2.INTER_AREA),
                            cv2.COLOR_BGR2RGB)
    assert np.array_equal(rgba, expected)


def test_duplicates_kept_once_and_cross_class_content_dropped(project: Path) -> None:
    make_raw()
    # A copy inside Negative (sorts after the original), and Positive/0003 copied into Negative.
    shutil.copy(RAW / "Negative/0001.jpg", RAW / "Negative/0001_copy.jpg")
    shutil.copy(RAW / "Negative/0001.jpg", RAW / "Negative/zz.jpg")
    shutil.copy(RAW / "Positive/0003.jpg", RAW / "Negative/from_pos.jpg")
    write_manifest()

    report = run()

    assert report["duplicates"] == 2
    assert {d["path"]: d["duplicate_of"] for d in report["duplicate_files"]} == {
        "Negative/0001_copy.jpg": "Negative/0001.jpg", "Negative/zz.jpg": "Negative/0001.jpg"}
    assert report["cross_class_conflicts"] == 2 and report["cross_class_groups"] == 1
    assert sorted(report["cross_class_files"][0]["paths"]) == ["Negative/from_pos.jpg",
                                                               "Positive/0003.jpg"]
    kept = [p for s in dataset.SPLITS for p in dataset.load_split(s, "data/processed").records["path"]]
    assert len(kept) == len(set(kept)) == report["kept"] == 12 + 11
    assert "Negative/0001.jpg" in kept and "Negative/0001_copy.jpg" not in kept
    assert "Positive/0003.jpg" not in kept and "Negative/from_pos.jpg" not in kept


def test_split_is_stratified_without_leakage(project: Path) -> None:
    make_raw(n_neg=120, n_pos=40)
    shutil.copy(RAW / "Positive/0000.jpg", RAW / "Positive/dup.jpg")  # would leak without dedupe
    write_manifest()

    report = run()

    splits = {s: dataset.load_split(s, "data/processed") for s in dataset.SPLITS}
    assert {s: len(v) for s, v in splits.items()} == {"train": 112, "val": 24, "test": 24}
    for s, split in splits.items():
        positive = split.labels.mean()
        assert abs(positive - 40 / 160) < 0.03, (s, positive)
        assert report["per_split"][s]["total"] == len(split)
        assert np.array_equal(split.labels, split.records["label"].to_numpy())
    hashes = [set(splits[s].records["sha256"]) for s in dataset.SPLITS]
    assert not (hashes[0] & hashes[1] or hashes[0] & hashes[2] or hashes[1] & hashes[2])
    # Rows are shuffled: the first rows of a split mix the classes.
    assert 0 < splits["train"].labels[:20].sum() < 20


def test_masks_are_aligned_with_resized_images(project: Path) -> None:
    make_raw(n_pos=0)
    masks = {}
    (RAW / "_masks/Positive").mkdir(parents=True)
    for i in range(12):
        # A dark, 1-pixel-wide diagonal crack at a different place in each image.
        img = np.full((64, 64, 3), 200, np.uint8) + (i * 3)
        mask = np.zeros((64, 64), np.uint8)
        cv2.line(img, (i, 0), (63, 63 - i), (0, 0, 0), 1)
        cv2.line(mask, (i, 0), (63, 63 - i), 255, 1)
        cv2.imwrite(str(RAW / f"Positive/{i:04d}.png"), img)
        cv2.imwrite(str(RAW / f"_masks/Positive/{i:04d}.png"), mask)
        masks[f"Positive/{i:04d}.png"] = f"_masks/Positive/{i:04d}.png"
    # A mask that does not match its image's size cannot be aligned: kept out, reported.
    cv2.imwrite(str(RAW / "Positive/odd.png"), texture(77, 64, 64))
    cv2.imwrite(str(RAW / "_masks/Positive/odd.png"), np.zeros((32, 32), np.uint8))
    masks["Positive/odd.png"] = "_masks/Positive/odd.png"
    write_manifest(masks)

    report = run()

    assert report["masks_listed"] == 13 and report["mask_problems"] == 1
    assert "32x32" in report["mask_problem_files"][0]["problem"]
    seen = 0
    for s in dataset.SPLITS:
        split = dataset.load_split(s, "data/processed")
        assert split.masks is not None and split.masks.shape == (len(split), 32, 32)
        assert set(np.unique(split.masks)) <= {0, 1}
        np.testing.assert_array_equal(split.has_mask, (split.labels == 1)
                                      & (split.records["path"] != "Positive/odd.png"))
        for k in range(len(split)):
            if not split.has_mask[k]:
                assert split.masks[k].sum() == 0
                continue
            seen += 1
            m = split.masks[k].astype(bool)
            darkness = 255 - np.asarray(split.images[k]).min(axis=2)
            # The thin crack survives the 2x downscale and lies where the image is dark.
            assert m.sum() >= 26  # each line is >= 53 px long at 64x64
            assert darkness[m].mean() > darkness[~m].mean() + 40
            assert darkness[~m].max() < 60
    assert seen == 12


def test_min_good_fraction_failure_via_the_entry_point(project: Path) -> None:
    make_raw(n_neg=4, n_pos=4)
    for i in range(5):
        (RAW / f"Positive/bad{i}.jpg").write_text("not an image")
    write_manifest()
    before = raw_hashes()

    proc = subprocess.run(
        [sys.executable, "-m", "crackxai.preprocess", "--params", "params.yaml",
         "preprocess.workers=0"],
        capture_output=True, text=True, env={**__import__("os").environ,
                                             "PYTHONPATH": str(REPO / "src")},
    )

    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "preprocess.min_good_fraction=0.9" in proc.stderr
    assert "61.5%" in proc.stderr and "reports/data_quality.json" in proc.stderr
    report = json.loads(Path("reports/data_quality.json").read_text())
    assert report["rejected_by_reason"] == {"not_an_image": 5}
    assert len(report["rejected_files"]) == 5
    assert not Path("data/processed").exists()
    assert raw_hashes() == before


def test_stale_manifest_changed_and_missing_files(project: Path) -> None:
    make_raw()
    write_manifest()
    cv2.imwrite(str(RAW / "Negative/0002.jpg"), texture(999))  # changed after the manifest
    (RAW / "Positive/0005.jpg").unlink()  # listed, gone
    (RAW / "Positive/.DS_Store").write_bytes(b"\0")  # hidden files are not images: ignored
    report = run()
    assert report["rejected_by_reason"] == {"missing": 1}
    assert report["sha256_mismatches"] == 1
    assert report["sha256_mismatch_files"][0]["path"] == "Negative/0002.jpg"
    assert report["sha256_mismatch_files"][0]["actual"] == sha256(RAW / "Negative/0002.jpg")

    cv2.imwrite(str(RAW / "Positive/new.jpg"), texture(1234))
    with pytest.raises(DataError, match=r"not in 'data/manifest.csv'.*Positive/new.jpg.*download"):
        run()


def test_same_seed_gives_identical_outputs_with_or_without_workers(project: Path) -> None:
    make_raw(n_neg=30, n_pos=30)
    write_manifest()

    def snapshot() -> dict[str, bytes]:
        return {f.name: f.read_bytes() for f in sorted(Path("data/processed").iterdir())}

    run()
    first = snapshot()
    run("preprocess.workers=2")
    assert snapshot() == first
    run("seed=7")
    assert snapshot()["train.csv"] != first["train.csv"]


def test_load_split_round_trip_is_memory_mapped(project: Path) -> None:
    make_raw()
    write_manifest()
    run()

    assert dataset.read_classes("data/processed") == ["Negative", "Positive"]
    assert json.loads(Path("data/processed/classes.json").read_text())["image_size"] == 32
    total = 0
    for s in dataset.SPLITS:
        split = dataset.load_split(s, "data/processed")
        total += len(split)
        assert isinstance(split.images, np.memmap) and split.images.shape == (len(split), 32, 32, 3)
        assert split.labels.dtype == np.int64 and split.masks is None
        assert list(split.records.columns) == ["index", "path", "label", "class", "sha256",
                                               "has_mask"]
        assert (split.records["index"] == np.arange(len(split))).all()
        assert not split.has_mask.any()
        # Each row is the resized source image named in the CSV.
        row = split.records.iloc[0]
        src = cv2.imread(str(RAW / row["path"]))
        expected = cv2.cvtColor(cv2.resize(src, (32, 32), interpolation=cv2.INTER_AREA),
                                cv2.COLOR_BGR2RGB)
        assert np.array_equal(split.images[0], expected)
        assert split.classes[split.labels[0]] == row["class"]
    assert total == 24


@pytest.mark.parametrize("case", ["clean", "bad_files", "changed_after_manifest",
                                  "near_duplicates", "with_masks"])
def test_every_split_row_holds_its_own_image(project: Path, case: str) -> None:
    """Pixels go straight to a provisional split's files (crackxai.data.placement); whether
    or not the real split differs (bad files, bytes that changed after the manifest,
    near-duplicate groups), row k of each split file is the image its csv names."""
    make_raw(20, 20)
    overrides = []
    masks = {}
    if case == "with_masks":
        (RAW / "_masks" / "Positive").mkdir(parents=True)
        for i in range(0, 20, 3):
            mask = np.zeros((48, 48), np.uint8)
            mask[i:i + 5, :] = 255
            cv2.imwrite(str(RAW / "_masks" / "Positive" / f"{i:04d}.png"), mask)
            masks[f"Positive/{i:04d}.jpg"] = f"_masks/Positive/{i:04d}.png"
    if case == "bad_files":
        (RAW / "Negative" / "0003.jpg").write_bytes(b"not an image")
        (RAW / "Positive" / "0000.jpg").write_bytes(b"")
        overrides.append("preprocess.min_good_fraction=0.5")
    if case == "near_duplicates":
        for i in range(0, 20, 4):  # a near-identical twin of every fourth image
            twin = texture(i).astype(np.int16) + 2
            cv2.imwrite(str(RAW / "Negative" / f"{i:04d}_twin.jpg"),
                        twin.clip(0, 255).astype(np.uint8))
        overrides.append("preprocess.split.group_by=near_duplicates")
    write_manifest(masks)
    if case == "changed_after_manifest":  # after the manifest: its hash no longer matches
        shutil.copy(RAW / "Negative" / "0001.jpg", RAW / "Negative" / "0002.jpg")

    report = run(*overrides)

    seen = set()
    for split in dataset.SPLITS:
        table = dataset.load_split(split, "data/processed")
        assert len(table) > 0
        for k, rel in enumerate(table.records["path"]):
            bgr = cv2.imread(str(RAW / rel))
            expected = cv2.cvtColor(cv2.resize(bgr, (32, 32), interpolation=cv2.INTER_AREA),
                                    cv2.COLOR_BGR2RGB)
            np.testing.assert_array_equal(table.images[k], expected, err_msg=f"{split} {rel}")
            if case == "with_masks":
                assert table.masks[k].max() == (rel in masks)
            seen.add(rel)
    assert len(seen) == sum(v["total"] for v in report["per_split"].values())
    assert not list(Path("data/processed").glob("_*"))  # no staging or side file left
    if case == "changed_after_manifest":
        assert report["duplicates"] == 1
