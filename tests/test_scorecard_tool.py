"""Masks for any data set, on real photos (../shared/real-masks, skipped when absent): a local
data set with `_masks/<class>/<stem>.png` keeps its masks through download and preprocess; the
scorecard tool explains a small real masked set and writes every metric per method with
intervals, and replaces a README block."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crackxai.data.local import masked_folder

N_POS = 6


def local_masked_set(root: Path, real_masks: Path, crack_sample: Path | None) -> Path:
    """Positive/ = real photos (symlinks), _masks/Positive/ = their masks, Negative/ = Kaggle
    negatives (without the sample: other real photos, left without a mask)."""
    photos = sorted((real_masks / "images").iterdir())
    images = photos[:N_POS]
    (root / "Positive").mkdir(parents=True)
    (root / "_masks" / "Positive").mkdir(parents=True)
    (root / "Negative").mkdir()
    for f in images:
        (root / "Positive" / f.name).symlink_to(f)
        (root / "_masks" / "Positive" / f"{f.stem}.png").symlink_to(
            real_masks / "masks" / f"{f.stem}.png")
    negatives = (sorted((crack_sample / "Negative").iterdir())[:N_POS] if crack_sample
                 else photos[N_POS:2 * N_POS])
    for f in negatives:
        (root / "Negative" / f"neg_{f.name}").symlink_to(f)
    return root


def test_masked_folder_both_layouts(real_masks: Path, tmp_path: Path):
    paired = masked_folder(real_masks, "Positive")
    assert len(paired) == 244 and all(m is not None and c == "Positive" for _, m, c in paired)
    local = masked_folder(local_masked_set(tmp_path / "set", real_masks, None), "Positive")
    assert [c for _, _, c in local] == ["Negative"] * N_POS + ["Positive"] * N_POS
    assert all(m is None for _, m, c in local if c == "Negative")  # no mask: scored null
    assert all(m is not None and m.name == f"{i.stem}.png" for i, m, c in local
               if c == "Positive")


@pytest.mark.slow  # download + preprocess in-process: ~1 min on 2 busy cores
def test_local_masks_survive_download_and_preprocess(project: Path, real_masks: Path,
                                                     crack_sample: Path):
    from crackxai.config.entry import run_stage
    from crackxai.data.processed import load_split
    from crackxai.stages import download, preprocess

    data = local_masked_set(project / "masked", real_masks, crack_sample)
    overrides = ["experiment=smoke", "data=local", f"data.path={data}",
                 "preprocess.split.train=0.34", "preprocess.split.val=0.33",
                 "preprocess.split.test=0.33"]
    run_stage("download", download.main, overrides)
    run_stage("preprocess", preprocess.main, overrides)
    manifest = pd.read_csv(project / "data" / "manifest.csv", keep_default_na=False)
    assert (manifest["mask"] != "").sum() == N_POS
    quality = json.loads((project / "reports" / "data_quality.json").read_text())
    assert not any("458 photos" in n for n in quality["notes"])  # not a Kaggle copy by name
    masked = 0
    for name in ("train", "val", "test"):
        split = load_split(name, project / "data" / "processed")
        assert split.masks is not None
        positive = split.labels == split.classes.index("Positive")
        assert (split.has_mask == positive).all()  # every photo kept its mask, no negative has one
        for i in np.flatnonzero(split.has_mask):
            fraction = split.masks[i].mean()
            assert 0.003 <= fraction < 0.6, fraction  # a thin crack, thresholded > 0 after resize
        masked += int(split.has_mask.sum())
    assert masked == N_POS


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import keras

    from crackxai.models.resnet import build_model

    keras.utils.set_random_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.keras"
    build_model(2, 32, weights=None).save(path)
    return path


@pytest.mark.slow  # every metric incl. the cascade on 4 real photos: minutes on 2 cores
def test_scorecard_tool_on_real_masks(project: Path, real_masks: Path, tiny_model: Path):
    from crackxai.tools import scorecard as tool

    readme = project / "README.md"
    readme.write_text("before\n<!-- scorecard:real -->\nold table\n<!-- /scorecard:real -->\n"
                      "after\n")
    out = project / "reports" / "scorecard" / "real"
    tool.main(["--model", str(tiny_model), "--data", str(real_masks), "--n", "4",
               "--out", str(out), "--readme", str(readme), "--block", "real",
               "experiment=smoke", "explain.methods=[gradcam,lime]",
               "explain.metrics.reruns.images=2"])
    card = json.loads((out / "scorecard.json").read_text())
    assert card["images"]["n"] == 4 and card["images"]["with_mask"] == 4
    for row in card["methods"]:
        m = row["metrics"]
        for key in ("roc_auc", "relevance_rank_accuracy", "relevance_mass_accuracy",
                    "pointing_game", "energy_pointing_game", "topk_iou", "deletion_auc",
                    "insertion_auc", "sanity_abs_spearman", "sparseness", "complexity"):
            assert m[key]["n"] == 4 and m[key]["low"] <= m[key]["mean"] <= m[key]["high"], key
        for key in ("cascading_abs_rho", "random_logit_ssim", "max_sensitivity",
                    "seed_stability"):
            assert 1 <= m[key]["n"] <= 2, key
        assert row["verdict"]
    per_image = pd.read_csv(out / "per_image.csv")
    assert set(per_image["target_class"]) == {"Positive"}  # the crack class, whatever predicted
    page = readme.read_text()
    assert "old table" not in page and page.startswith("before\n") and page.endswith("after\n")
    assert "| rank | method |" in page and "python -m crackxai.scorecard" in page
    assert "--readme" not in page
    with pytest.raises(SystemExit):  # a missing block: one-paragraph error, exit 2
        tool.main(["--from-report", str(out), "--readme", str(readme), "--block", "none"])
    shutil.rmtree(out)
