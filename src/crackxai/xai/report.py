"""The explain report: one standalone HTML page (templates/report.html, rendered by Jinja2 with
autoescaping): the comparison grid embedded as base64, the metrics table and the configuration."""

from __future__ import annotations

import base64
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2

from crackxai.data.kaggle import LEAK_CAVEAT
from crackxai.xai import metrics as EM
from crackxai.xai.scoring import BETTER, METRICS, RANDOM_BASELINE, Quality

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


def report_html(grid_png: bytes, metrics: Mapping[str, Any], *, classes: Sequence[str],
                image_size: int, quality: Quality, configuration: str,
                run_info: Mapping[str, Any]) -> str:
    """The page for `metrics` (as summarised by crackxai.xai.scoring.summarise); `configuration`
    is shown verbatim (the explain settings as YAML), `run_info` as a list of key: value."""
    return _environment().get_template(TEMPLATE).render(
        grid_png=base64.b64encode(grid_png).decode("ascii"),
        metrics=metrics, methods=[m for m in metrics if m != "images"], images=metrics["images"],
        metric_keys=METRICS, better=BETTER, random_baseline=RANDOM_BASELINE,
        classes=list(classes), caveat=LEAK_CAVEAT + EXPLAIN_CAVEAT, image_size=image_size,
        pointing_tolerance=EM.pointing_tolerance((image_size, image_size)),
        baseline=quality.baseline, steps=quality.steps, randomize=quality.randomize,
        top_k_percent=f"{quality.top_k_percent:g}", configuration=configuration,
        run_info={k: str(v) for k, v in run_info.items()},
    )
