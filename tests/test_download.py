"""download: synthetic, local folder/zip and Kaggle sources, the manifest, and clean failures.

The Kaggle tests run the real client code (import, authentication from env) with only its network
call, `KaggleApi.dataset_download_files`, replaced by one that writes a small zip.
"""

from __future__ import annotations

import csv
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from crackxai.config import load_config
from crackxai.core.errors import CrackxaiError, DataError
from crackxai.data.manifest import MANIFEST_COLUMNS
from crackxai.stages import download

FAKE_KEY = "f4k3-k4ggl3-k3y-0123456789abcdef"


def read_manifest(path: str = "data/manifest.csv") -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def jpeg(seed: int, size: int = 40) -> bytes:
    img = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", img)[1].tobytes()


def make_folder(root: Path, counts: dict[str, int]) -> Path:
    for c, n in counts.items():
        (root / c).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(root / c / f"{i:03d}.jpg"), cv2.imdecode(
                np.frombuffer(jpeg(hash((c, i)) % 1000), np.uint8), cv2.IMREAD_COLOR))
    return root


def make_zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def check_outputs(rows: list[dict], source: str) -> None:
    """Manifest == files on disk, hashes and sizes right, masks only where listed."""
    manifest = read_manifest()
    assert [list(r) for r in manifest[:1]] == [list(MANIFEST_COLUMNS)]
    assert len(manifest) == len(rows)
    on_disk = sorted(p.relative_to("data/raw").as_posix() for p in Path("data/raw").rglob("*")
                     if p.is_file() and not p.relative_to("data/raw").parts[0].startswith("_"))
    assert sorted(r["path"] for r in manifest) == on_disk
    for r in manifest:
        data = (Path("data/raw") / r["path"]).read_bytes()
        assert r["sha256"] == hashlib.sha256(data).hexdigest() and int(r["bytes"]) == len(data)
        assert r["source"] == source and r["class"] == r["path"].split("/")[0]
        if r["mask"]:
            assert (Path("data/raw") / r["mask"]).is_file()
    assert not list(Path("data").glob(".*")), "temporary folders left behind"


def cfg_for(*overrides: str):
    return load_config(list(overrides))


# --------------------------------------------------------------------------------------------
# synthetic
# --------------------------------------------------------------------------------------------


def test_synthetic_source(project: Path) -> None:
    rows = download.main(cfg_for("data.synthetic.n_per_class=3", "data.synthetic.image_size=48"))
    check_outputs(rows, "synthetic")
    assert sorted(p.name for p in Path("data/raw").iterdir()) == ["Negative", "Positive", "_masks"]
    for r in read_manifest():
        if r["class"] == "Positive":
            assert r["mask"] == f"_masks/Positive/{Path(r['path']).stem}.png"
        else:
            assert r["mask"] == ""
    # limit_per_class caps the synthetic count too
    rows = download.main(cfg_for("data.synthetic.n_per_class=3", "data.synthetic.image_size=48",
                                 "data.limit_per_class=2"))
    assert len(rows) == 4 and len(read_manifest()) == 4


def run_cli(project: Path, *args: str, env: dict[str, str] | None = None):
    return subprocess.run([sys.executable, "-m", "crackxai.download", *args], cwd=project,
                          capture_output=True, text=True, timeout=300, env=env)


def test_entry_point_smoke_and_bad_setting(project: Path) -> None:
    done = run_cli(project, "experiment=smoke")
    assert done.returncode == 0, done.stderr
    assert "wrote 80 images" in done.stdout
    assert len(read_manifest()) == 80
    assert len(list(Path("data/raw/_masks/Positive").glob("*.png"))) == 40

    bad = run_cli(project, "data.synthetic.difficulty=2")
    assert bad.returncode == 2
    assert "data.synthetic.difficulty" in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.splitlines()) <= 3
    assert len(read_manifest()) == 80, "a failed run must leave the previous outputs alone"


# --------------------------------------------------------------------------------------------
# local
# --------------------------------------------------------------------------------------------


def test_local_folder_three_classes(project: Path, tmp_path: Path) -> None:
    src = make_folder(tmp_path / "imgs", {"cat": 3, "Dog": 4, "bird": 2})
    (src / "Dog" / "sub").mkdir()
    cv2.imwrite(str(src / "Dog" / "sub" / "deep.png"), np.zeros((40, 40, 3), np.uint8))
    (src / "Dog" / "notes.txt").write_text("not an image")
    (src / "Dog" / ".hidden.jpg").write_bytes(jpeg(1))
    (src / "__MACOSX").mkdir()
    before = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}

    rows = download.main(cfg_for("data=local", f"data.path={src}"))
    check_outputs(rows, "local")
    assert sorted({r["class"] for r in rows}) == ["Dog", "bird", "cat"]
    assert sorted(p.name for p in Path("data/raw").iterdir()) == ["Dog", "bird", "cat"]
    assert "Dog/sub/deep.png" in {r["path"] for r in rows}
    assert len(rows) == 3 + 5 + 2
    assert {p: p.read_bytes() for p in src.rglob("*") if p.is_file()} == before

    rows = download.main(cfg_for("data=local", f"data.path={src}", "data.limit_per_class=2"))
    assert [r["path"] for r in rows] == ["Dog/000.jpg", "Dog/001.jpg", "bird/000.jpg",
                                         "bird/001.jpg", "cat/000.jpg", "cat/001.jpg"]


def test_local_zip_with_top_folder_and_masks(project: Path, tmp_path: Path) -> None:
    mask = cv2.imencode(".png", np.full((40, 40), 255, np.uint8))[1].tobytes()
    archive = make_zip(tmp_path / "cracks.zip", {
        "dataset/Positive/a.jpg": jpeg(1), "dataset/Positive/b.jpg": jpeg(2),
        "dataset/Negative/a.jpg": jpeg(3), "dataset/_masks/Positive/a.png": mask,
        "__MACOSX/dataset/._a.jpg": b"junk",
    })
    rows = download.main(cfg_for("data=local", f"data.path={archive}"))
    check_outputs(rows, "local")
    masks = {r["path"]: r["mask"] for r in rows}
    assert masks == {"Negative/a.jpg": "", "Positive/a.jpg": "_masks/Positive/a.png",
                     "Positive/b.jpg": ""}


def test_local_missing_path_and_bad_inputs(project: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data.path .* does not exist.*data=synthetic"):
        download.main(cfg_for("data=local", f"data.path={tmp_path / 'nope'}"))
    one_class = make_folder(tmp_path / "one", {"only": 2})
    with pytest.raises(DataError, match="at least two"):
        download.main(cfg_for("data=local", f"data.path={one_class}"))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match="not a .zip"):
        download.main(cfg_for("data=local", f"data.path={tmp_path / 'file.txt'}"))
    slip = make_zip(tmp_path / "slip.zip", {"A/a.jpg": jpeg(1), "../../evil.jpg": jpeg(2)})
    with pytest.raises(DataError, match="unsafe entry"):
        download.main(cfg_for("data=local", f"data.path={slip}"))
    assert not Path("data/raw").exists() and not list(tmp_path.rglob("evil.jpg"))


def test_local_missing_path_cli(project: Path, tmp_path: Path) -> None:
    done = run_cli(project, "data=local", f"data.path={tmp_path / 'missing'}")
    assert done.returncode == 2
    assert "data.path" in done.stderr and "Traceback" not in done.stderr


# --------------------------------------------------------------------------------------------
# kaggle
# --------------------------------------------------------------------------------------------


@pytest.fixture
def kaggle_env(project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Fake legacy credentials in env, an empty HOME; returns the real KaggleApi class."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", FAKE_KEY)
    from kaggle.api.kaggle_api_extended import KaggleApi

    return KaggleApi


def fake_download(entries: dict[str, bytes] | None = None, raw: bytes | None = None,
                  calls: list | None = None):
    """Stands in for KaggleApi.dataset_download_files: writes <slug>.zip into `path`."""

    def dataset_download_files(self, dataset, path=None, force=False, quiet=True, unzip=False,
                               licenses=None):
        if calls is not None:
            calls.append((dataset, unzip))
        target = Path(path) / (dataset.split("/")[1] + ".zip")
        if raw is not None:
            target.write_bytes(raw)
        else:
            make_zip(target, entries or {})

    return dataset_download_files


REAL_LAYOUT = {**{f"Positive/{i:05d}.jpg": jpeg(i) for i in range(1, 4)},
               **{f"Negative/{i:05d}.jpg": jpeg(10 + i) for i in range(1, 4)}}


def test_kaggle_success_never_prints_the_key(kaggle_env, monkeypatch: pytest.MonkeyPatch,
                                             capfd: pytest.CaptureFixture) -> None:
    calls: list = []
    monkeypatch.setattr(kaggle_env, "dataset_download_files", fake_download(REAL_LAYOUT, calls=calls))
    rows = download.main(cfg_for("data=kaggle"))
    check_outputs(rows, "kaggle")
    assert calls == [("arunrk7/surface-crack-detection", False)]
    assert sorted(r["path"] for r in rows) == sorted(REAL_LAYOUT)
    out = capfd.readouterr()
    assert FAKE_KEY not in out.out + out.err


def test_kaggle_nested_archive_and_limit(kaggle_env, monkeypatch: pytest.MonkeyPatch) -> None:
    nested = {f"Concrete Crack Images/{k}": v for k, v in REAL_LAYOUT.items()}
    monkeypatch.setattr(kaggle_env, "dataset_download_files", fake_download(nested))
    rows = download.main(cfg_for("data=kaggle", "data.limit_per_class=2"))
    assert [r["path"] for r in rows] == ["Negative/00001.jpg", "Negative/00002.jpg",
                                         "Positive/00001.jpg", "Positive/00002.jpg"]


@pytest.mark.parametrize("entries, raw, match", [
    ({**REAL_LAYOUT, "../../escape.jpg": jpeg(0)}, None, "unsafe entry"),
    ({**REAL_LAYOUT, "/abs/escape.jpg": jpeg(0)}, None, "unsafe entry"),
    (None, b"PK\x03\x04 this is not really a zip", "corrupt"),
])
def test_kaggle_bad_archive_leaves_previous_data(kaggle_env, monkeypatch, tmp_path, entries,
                                                 raw, match) -> None:
    Path("data/raw/Negative").mkdir(parents=True)
    Path("data/raw/Negative/old.jpg").write_bytes(b"previous run")
    monkeypatch.setattr(kaggle_env, "dataset_download_files", fake_download(entries, raw))
    with pytest.raises(DataError, match=match):
        download.main(cfg_for("data=kaggle"))
    assert [p.as_posix() for p in Path("data/raw").rglob("*")] == [
        "data/raw/Negative", "data/raw/Negative/old.jpg"]
    assert not list(Path("data").glob(".*")) and not list(tmp_path.rglob("escape.jpg"))


def test_kaggle_truncated_archive(kaggle_env, monkeypatch) -> None:
    good = Path("full.zip")
    make_zip(good, REAL_LAYOUT)
    monkeypatch.setattr(kaggle_env, "dataset_download_files",
                        fake_download(raw=good.read_bytes()[:-200]))
    with pytest.raises(DataError, match="corrupt"):
        download.main(cfg_for("data=kaggle"))
    assert not Path("data/raw").exists()


def test_kaggle_network_error_is_redacted(kaggle_env, monkeypatch) -> None:
    def offline(self, dataset, path=None, **kwargs):
        raise ConnectionError(f"Max retries exceeded with url: /api?key={FAKE_KEY}")

    monkeypatch.setattr(kaggle_env, "dataset_download_files", offline)
    with pytest.raises(CrackxaiError) as err:
        download.main(cfg_for("data=kaggle"))
    message = str(err.value)
    assert FAKE_KEY not in message and "***" in message
    assert "ConnectionError" in message and "data=local" in message and "data=synthetic" in message
    assert not Path("data/raw").exists()


def test_kaggle_missing_credentials_cli(project: Path, tmp_path: Path) -> None:
    """A fresh interpreter with no credentials anywhere: exit 2, one clear paragraph."""
    home = tmp_path / "empty-home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("KAGGLE_") and k != "XDG_CONFIG_HOME"}
    env["HOME"] = str(home)
    done = run_cli(project, "data=kaggle", env=env)
    assert done.returncode == 2, done.stdout + done.stderr
    err = done.stderr
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    for needle in ("kaggle.json", "KAGGLE_USERNAME", "KAGGLE_KEY", "data=local", "data=synthetic"):
        assert needle in err
    assert not Path("data/raw").exists() and not list(Path("data").glob(".*"))
