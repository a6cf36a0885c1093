"""The explain report: templates/report.html rendered by Jinja2, with autoescaping: the scorecard
first (verdicts, chart beside), every metric with its interval in a box that scrolls rather than
overflowing the page, the Kaggle caveat only for Kaggle data."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from crackxai.xai import report, scorecard
from crackxai.xai.assess import Reruns
from crackxai.xai.scoring import Quality

PNG = b"\x89PNG fake"


def card() -> dict:
    rows = [{"row": r, "method": "gradcam", "roc_auc": 0.8 + 0.01 * r, "deletion_auc": 0.3,
             "insertion_auc": 0.8, "sanity_spearman": 0.2, "seconds": 0.1, "model_evals": 1}
            for r in range(4)]
    rows += [{"row": r, "method": "random_baseline", "roc_auc": 0.5, "deletion_auc": 0.5,
              "insertion_auc": 0.5} for r in range(4)]
    return scorecard.scorecard(pd.DataFrame(rows), ["gradcam"], seed=0)


def render(tmp_path: Path, **overrides) -> str:
    for name in ("grid.png", "scorecard.png", "cascading.png"):
        (tmp_path / name).write_bytes(PNG)
    kwargs = dict(classes=["Negative", "<b>Positive</b>"], image_size=64,
                  quality=Quality(baseline="mean", steps=20, top_k_percent=5.0),
                  reruns=Reruns(images=2), configuration="seed: 42\nexplain:\n  layer: <auto>\n",
                  run_info={"model run": "abc123", "CAM layer": "conv3_block4_out"},
                  kaggle=False, grid_shown=4)
    images = {"n": 4, "misclassified": 1, "with_mask": 4}
    return report.report_html(tmp_path, card(), images, **{**kwargs, **overrides})


def test_report_has_scorecard_metrics_and_configuration(tmp_path: Path):
    page = render(tmp_path)
    assert page.startswith("<!DOCTYPE html>") and page.endswith("</body></html>\n")
    assert page.index("Scorecard") < page.index("Comparison grid") < page.index("Every metric")
    assert "trust for localisation (ROC AUC 0.82 [" in page
    row = re.search(r"<tr><th class=\"text\">ROC AUC vs mask<br>.*?</tr>", page, re.S).group(0)
    assert "0.82 [" in row and "<td>0.50</td>" in row  # method, then the random map
    assert "<tr><td>1.0</td><th class=\"text\">gradcam</th>" in page  # rank
    assert "4 test images (1 misclassified, 4 with a" in page
    assert "CAM layer: <code>conv3_block4_out</code>" in page
    assert "<code>mean</code> baseline" in page and "top 5% pixels" in page
    assert "within 4 px" in page  # 15 px at 224 scaled to 64
    assert page.count('src="data:image/png;base64,iVBORyBmYWtl"') == 3
    assert "<script" not in page


def test_report_layout_fits_a_1400px_window(tmp_path: Path):
    page = render(tmp_path)
    assert "max-width: 1200px" in page and ".scroll { max-width: 100%; overflow-x: auto; }" in page
    assert page.count('<div class="scroll"><table>') == 2  # every table scrolls in its own box
    assert 'class="side"' in page  # the chart beside the table (wraps below on narrow windows)


def test_kaggle_caveat_only_for_kaggle_data(tmp_path: Path):
    assert "458 photos" not in render(tmp_path)
    assert "458 photos" in render(tmp_path, kaggle=True)


def test_report_escapes_what_it_is_given(tmp_path: Path):
    page = render(tmp_path)
    assert "&lt;b&gt;Positive&lt;/b&gt;" in page and "<b>Positive</b>" not in page
    assert "layer: &lt;auto&gt;" in page
    assert "&lt;script&gt;" in render(tmp_path, run_info={"x": "<script>"})


def test_fmt():
    assert report.fmt(None) == "-" and report.fmt("-") == "-"
    assert report.fmt(0.12345) == "0.123" and report.fmt(12345.6) == "12346"
