"""The explain report: templates/report.html rendered by Jinja2, with autoescaping."""

from __future__ import annotations

import re

from crackxai.xai import report
from crackxai.xai.scoring import METRICS, Quality

METRICS_JSON = {
    "gradcam": {k: 0.5 for k in METRICS} | {"pointing_game": None, "evals_per_image": 1.0},
    "random_baseline": {"deletion_auc": 0.25, "insertion_auc": 0.75, "pointing_game": None,
                        "energy_pointing_game": None, "topk_iou": None},
    "images": {"n": 2, "misclassified": 1, "with_mask": 0},
}


def render(**overrides) -> str:
    kwargs = dict(classes=["Negative", "<b>Positive</b>"], image_size=64,
                  quality=Quality(baseline="mean", steps=20, top_k_percent=5.0),
                  configuration="seed: 42\nexplain:\n  layer: <auto>\n",
                  run_info={"model run": "abc123", "CAM layer": "conv3_block4_out"})
    return report.report_html(b"\x89PNG fake", METRICS_JSON, **{**kwargs, **overrides})


def test_report_has_the_metrics_table_and_configuration():
    page = render()
    assert page.startswith("<!DOCTYPE html>") and page.endswith("</body></html>\n")
    assert "<th>gradcam</th><td>0.500</td>" in page and "<th>random_baseline</th>" in page
    row = re.search(r"<tr><th>gradcam</th>(.*?)</tr>", page).group(1)
    assert row.count("<td>") == len(METRICS) and "<td>-</td>" in row  # None -> "-"
    baseline = re.search(r"<tr><th>random_baseline</th>(.*?)</tr>", page).group(1)
    assert baseline.count("<td>-</td>") == 3 + 3  # no mask, and no sanity/cost for noise
    for key in METRICS:
        assert f"<th>{key}<br><small>" in page
    assert "2 test images (1 misclassified, 0 with a" in page
    assert "CAM layer: <code>conv3_block4_out</code>" in page
    assert "<code>mean</code> baseline" in page and "top 5% pixels" in page
    assert "within\n4 px of the crack mask" in page  # 15 px at 224 scaled to 64
    assert 'src="data:image/png;base64,iVBORyBmYWtl"' in page
    assert "<script" not in page


def test_report_escapes_what_it_is_given():
    page = render()
    assert "&lt;b&gt;Positive&lt;/b&gt;" in page and "<b>Positive</b>" not in page
    assert "layer: &lt;auto&gt;" in page
    assert "&lt;script&gt;" in render(run_info={"x": "<script>"})


def test_fmt():
    assert report.fmt(None) == "-" and report.fmt("-") == "-"
    assert report.fmt(0.12345) == "0.123" and report.fmt(12345.6) == "12346"
