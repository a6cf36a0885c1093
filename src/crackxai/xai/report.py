"""The explain report: one standalone HTML page (templates/report.html, rendered by Jinja2 with
autoescaping): the scorecard (ranked table with verdicts, its chart beside it), the comparison
grid, every metric with its interval, the cascading curves (PNGs embedded as base64) and the
configuration. Laid out for a window about 1,400 px wide: wide tables scroll in their own box."""

from __future__ import annotations

import base64
import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2

from crackxai.data.kaggle import LEAK_CAVEAT
from crackxai.xai import metrics as EM
from crackxai.xai import scorecard as SC
from crackxai.xai.assess import Reruns
from crackxai.xai.scoring import RANDOM_BASELINE, Quality

EXPLAIN_CAVEAT = (" Explanations of a model that memorised photo texture can look convincing "
                  "and still not generalise.")
TEMPLATE = "report.html"


def fmt(value: Any) -> str:
    """A metric for the table: 3 decimals (none for large values); '-' where it is undefined."""
    if value is None or value == "-":
        return "-"
    return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"


@functools.cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("crackxai.xai", "templates"),
                             autoescape=jinja2.select_autoescape(["html"]),
                             keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    env.filters["fmt"] = fmt
    return env


def _embedded(path: Path) -> str | None:
    return base64.b64encode(path.read_bytes()).decode("ascii") if path.is_file() else None


def report_html(out: Path, card: Mapping[str, Any], images: Mapping[str, int], *,
                classes: Sequence[str], image_size: int, quality: Quality, reruns: Reruns,
                configuration: str, run_info: Mapping[str, Any], kaggle: bool,
                grid_shown: int) -> str:
    """The page for a scorecard (crackxai.xai.scorecard.scorecard) with the PNGs the stage wrote
    into `out` (grid.png, scorecard.png, cascading.png) embedded; `configuration` is shown
    verbatim (the explain settings as YAML), `run_info` as a list of key: value. The Kaggle
    caveat shows only when `kaggle` (the data is that set or a copy of it)."""
    baseline = card.get(RANDOM_BASELINE) or {}
    return _environment().get_template(TEMPLATE).render(
        grid_png=_embedded(out / "grid.png"), chart_png=_embedded(out / "scorecard.png"),
        cascading_png=_embedded(out / "cascading.png"), grid_shown=grid_shown,
        rows=card["methods"], baseline=baseline, metrics=SC.METRICS,
        confidence=f"{card['confidence']:.0%}", n_resamples=card["n_resamples"], images=images,
        cell=SC.cell, classes=list(classes), caveat=(LEAK_CAVEAT + EXPLAIN_CAVEAT) if kaggle
        else None, image_size=image_size,
        pointing_tolerance=EM.pointing_tolerance((image_size, image_size)),
        baseline_kind=quality.baseline, steps=quality.steps, randomize=quality.randomize,
        top_k_percent=f"{quality.top_k_percent:g}", reruns=reruns,
        thresholds={"rho": SC.RANDOMISATION_MAX_ABS_RHO, "seed": SC.SEED_STABILITY_MIN,
                    "roc": SC.ROC_CHANCE},
        configuration=configuration, run_info={k: str(v) for k, v in run_info.items()},
    )
