"""The scorecard (crackxai.xai.scorecard) on tables whose answers are known: bootstrap intervals,
ranks, verdicts, Markdown; the per-image metrics of crackxai.xai.assess on hand-made maps; the
Kaggle provenance rule; LIME's SLIC segmentation count; masked folders in both layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from crackxai.data.kaggle import is_kaggle_data
from crackxai.xai import assess, scorecard

# --- bootstrap ---------------------------------------------------------------------------------


def test_bootstrap_mean_matches_scipy_and_normal_theory():
    values = np.random.default_rng(1).normal(0.6, 0.1, 200)
    ours = scorecard.bootstrap_mean(values, seed=0)
    assert ours["mean"] == pytest.approx(values.mean()) and ours["n"] == 200
    ref = stats.bootstrap((values,), np.mean, method="percentile", confidence_level=0.95,
                          n_resamples=2000, random_state=0).confidence_interval
    assert ours["low"] == pytest.approx(ref.low, abs=0.003)
    assert ours["high"] == pytest.approx(ref.high, abs=0.003)
    half = 1.96 * values.std(ddof=1) / np.sqrt(len(values))  # normal theory
    assert ours["high"] - ours["low"] == pytest.approx(2 * half, rel=0.1)


def test_bootstrap_mean_nulls_left_out_constant_and_single_collapse():
    assert scorecard.bootstrap_mean([None, np.nan]) == {"mean": None, "low": None, "high": None,
                                                        "n": 0}
    assert scorecard.bootstrap_mean([0.25, None, 0.25, np.nan]) == {
        "mean": 0.25, "low": 0.25, "high": 0.25, "n": 2}
    assert scorecard.bootstrap_mean([0.7]) == {"mean": 0.7, "low": 0.7, "high": 0.7, "n": 1}
    a = scorecard.bootstrap_mean([0, 1] * 10, seed=3)
    assert a == scorecard.bootstrap_mean([0, 1] * 10, seed=3)  # seeded
    assert a["low"] < 0.5 < a["high"] and a["n"] == 20


# --- scorecard ---------------------------------------------------------------------------------


def table(n: int = 30) -> pd.DataFrame:
    """good: localises (AUC 0.9), passes sanity; edge: localises but its map ignores the
    weights (|rho| 0.9); blind: chance AUC, unstable across seeds. Random map: AUC 0.5."""
    rng = np.random.default_rng(0)
    rows = []
    spec = {"good": (0.9, 0.1, 1.0), "edge": (0.9, 0.9, 1.0), "blind": (0.5, 0.1, 0.2)}
    for method, (auc, rho, seed_rho) in spec.items():
        for r in range(n):
            rows.append({"row": r, "method": method, "roc_auc": auc + rng.normal(0, 0.02),
                         "sanity_spearman": -rho, "seed_stability": seed_rho,
                         "deletion_auc": 0.3, "insertion_auc": 0.8, "seconds": 1.0,
                         "model_evals": 1})
    rows += [{"row": r, "method": "random_baseline", "roc_auc": 0.5, "deletion_auc": 0.5,
              "insertion_auc": 0.5} for r in range(n)]
    return pd.DataFrame(rows)


def test_scorecard_ranks_and_verdicts():
    card = scorecard.scorecard(table(), ["blind", "edge", "good"], seed=0)
    order = [r["method"] for r in card["methods"]]
    assert order == ["good", "blind", "edge"]  # edge ranks above blind, but fails sanity: last
    by = {r["method"]: r for r in card["methods"]}
    assert by["good"]["verdict"].startswith("trust for localisation")
    assert by["edge"]["verdict"].startswith("fails the randomisation test")
    assert "no better than chance at localisation" in by["blind"]["verdict"]
    assert "unstable across seeds" in by["blind"]["verdict"]
    assert by["good"]["metrics"]["sanity_abs_spearman"]["mean"] == pytest.approx(0.1)  # |rho|
    assert by["good"]["metrics"]["max_sensitivity"] == {"mean": None, "low": None, "high": None,
                                                       "n": 0}  # not measured: null, not 0
    assert card["random_baseline"]["roc_auc"]["mean"] == pytest.approx(0.5)


def test_verdict_unfaithful_and_unmasked():
    base = {"deletion_auc": {"mean": 0.4}, "insertion_auc": {"mean": 0.7}}
    worse = {"deletion_auc": {"mean": 0.5}, "insertion_auc": {"mean": 0.6}}
    assert scorecard.verdict(worse, base).startswith("no more faithful than a random map")
    better = {"deletion_auc": {"mean": 0.2}, "insertion_auc": {"mean": 0.9},
              "roc_auc": {"mean": None}}
    assert scorecard.verdict(better, base) == ("faithful to the model, localisation not "
                                               "measured (no masks)")


def test_markdown_flat_metrics_and_table():
    card = scorecard.scorecard(table(10), ["good", "edge"], seed=0)
    text = scorecard.markdown(card, n_images=10)
    lines = text.strip().splitlines()
    assert len(lines) == 2 + 2 + 1  # header, rule, 2 methods, random map
    assert all(line.replace("\\|", "").count("|") == lines[0].replace("\\|", "").count("|")
               for line in lines)  # a |rho| inside a cell is escaped
    assert "0.90 [" in lines[2] and "random map" in lines[-1]
    flat = scorecard.flat_metrics(card)
    assert flat["explain/good/rank"] < flat["explain/edge/rank"]
    assert flat["explain/good/roc_auc_low"] <= flat["explain/good/roc_auc"]
    assert "explain/good/max_sensitivity" not in flat  # undefined: left out
    long = scorecard.table(card)
    assert set(long["method"]) == {"good", "edge", "random_baseline"}
    assert len(long) == 3 * len(scorecard.METRICS)


# --- per-image metrics over a selection (hand-made maps) --------------------------------------


def test_map_records_known_values_and_null_without_mask():
    mask = np.zeros((4, 4), np.uint8)
    mask[0, :2] = 1  # 2 of 16 pixels
    perfect = mask.astype(np.float32)  # high exactly on the mask
    inverted = 1.0 - perfect
    onehot = np.zeros((4, 4), np.float32)
    onehot[3, 3] = 1.0
    records = assess.map_records("m", np.stack([perfect, inverted, onehot]), [mask, mask, None])
    assert records[0]["roc_auc"] == 1.0 and records[0]["relevance_rank_accuracy"] == 1.0
    assert records[0]["relevance_mass_accuracy"] == 1.0
    assert records[1]["roc_auc"] == 0.0 and records[1]["relevance_rank_accuracy"] == 0.0
    assert np.isnan(records[2]["roc_auc"])  # no mask: null, never 0
    assert records[2]["sparseness"] == pytest.approx(1 - 1 / 16)  # one-hot Gini
    assert records[2]["complexity"] == pytest.approx(0.0)  # one-hot entropy
    assert records[1]["complexity"] == pytest.approx(np.log(14))  # 14 equal pixels


def test_rerun_rows_mix_the_sorted_classes():
    assert assess.rerun_rows(8, 2).tolist() == [0, 7]
    assert assess.rerun_rows(3, 5).tolist() == [0, 1, 2]
    assert assess.rerun_rows(5, 0).tolist() == []


# --- provenance: the Kaggle caveat only where it applies --------------------------------------


def test_is_kaggle_data_by_source_or_layout():
    synthetic = pd.DataFrame({"path": ["Negative/neg_0001.png", "Positive/pos_0001.png"],
                              "class": ["Negative", "Positive"], "source": "synthetic"})
    assert not is_kaggle_data(synthetic)
    assert is_kaggle_data(synthetic.assign(source="kaggle"))
    # the generator's own file names (Negative/00001.jpg) match the set's layout
    generated = pd.DataFrame({"path": ["Negative/00001.jpg", "Positive/00001.jpg"],
                              "class": ["Negative", "Positive"], "source": "synthetic"})
    assert not is_kaggle_data(generated)
    copy = pd.DataFrame({"path": ["Negative/00001.jpg", "Positive/19378_1.jpg"],
                         "class": ["Negative", "Positive"], "source": "local"})
    assert is_kaggle_data(copy)
    other = copy.assign(path=["Negative/a.jpg", "Positive/b.jpg"])
    assert not is_kaggle_data(other)
    assert not is_kaggle_data(copy.assign(**{"class": ["Cat", "Dog"]}))


def test_the_embedded_generator_is_not_kaggle_data(tmp_path: Path):
    """Its files are named like the set's (Negative/00001.jpg): the default pipeline must not
    print the Kaggle leak caveat."""
    from crackxai.data import synthetic
    from crackxai.data.sources import SourceOptions

    rows = synthetic.fetch(tmp_path / "raw", tmp_path / "scratch",
                           SourceOptions(seed=0, n_per_class=3, image_size=32))
    assert rows[0]["path"] == "Negative/00001.jpg"
    assert not is_kaggle_data(pd.DataFrame(rows))


def test_crack_sample_is_recognised_as_a_kaggle_copy(crack_sample: Path):
    rows = [{"path": f"{c}/{f.name}", "class": c, "source": "local"}
            for c in ("Negative", "Positive") for f in sorted((crack_sample / c).iterdir())]
    assert is_kaggle_data(pd.DataFrame(rows))


# --- LIME's segmentation follows the configured superpixel count ------------------------------


def test_slic_segment_count_does_not_depend_on_image_size():
    """SLIC gives about n_segments superpixels at any size (measured on real crack photos: 40-49
    at 64 px and 34-48 at 150 px, where quickshift makes 2-5 and 16-23)."""
    import cv2

    from crackxai.xai.lime import segmenter

    seg = {"algo": "slic", "n_segments": 50, "compactness": 10.0, "sigma": 1.0,
           "kernel_size": 4, "max_dist": 200, "ratio": 0.2}
    rng = np.random.default_rng(0)
    for size in (64, 150):  # a smooth texture (white noise would be one flat Lab cloud)
        image = cv2.GaussianBlur(rng.random((size, size, 3)).astype(np.float32), (0, 0),
                                 size / 16)
        image = (255 * (image - image.min()) / np.ptp(image)).astype(np.uint8)
        count = len(np.unique(segmenter(seg, 0)(image)))
        assert 30 <= count <= 70, (size, count)
