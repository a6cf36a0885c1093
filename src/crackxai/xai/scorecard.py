"""Which explanation method to trust: every metric per method as a mean with a bootstrap 95%
interval, the methods ranked, and a one-line verdict each.

Input is the per-image table of crackxai.xai.scoring (one row per image and method); output is
plain data (`scorecard`) and its Markdown (`markdown`). Intervals are percentile bootstrap
intervals of the mean over images (Efron & Tibshirani 1993, ch. 13): seeded, resampled for all
metrics at once with NumPy. Images where a metric does not exist (no mask; not in the rerun subset;
a constant map) are left out, and `n` says how many counted; no image -> None (JSON null), never 0.

The rank is the mean of a method's ranks over the RANKED metrics it has (1 = best on that metric,
ties share the average rank); the table lists methods by it, those whose verdict disqualifies them
(DISQUALIFIED) last; the random baseline is shown but not ranked. Verdict thresholds are
the constants below; each verdict names the figure it rests on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crackxai.xai import render

CONFIDENCE = 0.95
N_RESAMPLES = 2000
RANDOM_BASELINE = "random_baseline"


@dataclass(frozen=True)
class Metric:
    """One scorecard column: its per-image column, which way is better, its group, a label."""

    name: str
    column: str
    better: str  # "higher" | "lower"
    group: str
    label: str
    absolute: bool = False  # take |value| per image first (signed rho -> |rho|)


METRICS: tuple[Metric, ...] = (
    Metric("roc_auc", "roc_auc", "higher", "localisation", "ROC AUC vs mask"),
    Metric("relevance_rank_accuracy", "relevance_rank_accuracy", "higher", "localisation",
           "relevance rank acc."),
    Metric("relevance_mass_accuracy", "relevance_mass_accuracy", "higher", "localisation",
           "relevance mass acc."),
    Metric("pointing_game", "pointing_game", "higher", "localisation", "pointing game"),
    Metric("energy_pointing_game", "energy_pointing_game", "higher", "localisation",
           "energy pointing game"),
    Metric("topk_iou", "topk_iou", "higher", "localisation", "top-k IoU"),
    Metric("deletion_auc", "deletion_auc", "lower", "faithfulness", "deletion AUC"),
    Metric("insertion_auc", "insertion_auc", "higher", "faithfulness", "insertion AUC"),
    Metric("sanity_abs_spearman", "sanity_spearman", "lower", "randomisation",
           "sanity |rho| (head)", absolute=True),
    Metric("cascading_abs_rho", "cascading_abs_rho", "lower", "randomisation",
           "cascading |rho| (all blocks)"),
    Metric("random_logit_ssim", "random_logit_ssim", "lower", "randomisation",
           "random-logit SSIM"),
    Metric("max_sensitivity", "max_sensitivity", "lower", "robustness", "max-sensitivity"),
    Metric("seed_stability", "seed_stability", "higher", "robustness", "seed-to-seed rho"),
    Metric("sparseness", "sparseness", "higher", "complexity", "sparseness (Gini)"),
    Metric("complexity", "complexity", "lower", "complexity", "complexity (entropy)"),
    Metric("seconds_per_image", "seconds", "lower", "cost", "s / image"),
    Metric("evals_per_image", "model_evals", "lower", "cost", "model evals / image"),
)
BY_NAME = {m.name: m for m in METRICS}
RANKED = tuple(m.name for m in METRICS if m.group not in ("cost", "complexity"))
# The README's and the report's short table: the columns a reader compares first.
KEY_METRICS = ("roc_auc", "relevance_rank_accuracy", "pointing_game", "deletion_auc",
               "insertion_auc", "sanity_abs_spearman", "cascading_abs_rho", "seed_stability",
               "seconds_per_image")

# Verdict thresholds. |rho| above this after re-initialising weights: the map barely depends on
# what the model learnt (Adebayo et al. 2018 read high rank correlation as failing).
RANDOMISATION_MAX_ABS_RHO = 0.5
# Mean seed-to-seed Spearman rho below this: the map explains the sampler as much as the model.
SEED_STABILITY_MIN = 0.5
ROC_CHANCE = 0.5
DISQUALIFIED = ("fails the randomisation test", "no more faithful than a random map")


def bootstrap_mean(values: Iterable[float | None], *, confidence: float = CONFIDENCE,
                   n_resamples: int = N_RESAMPLES, seed: int = 0) -> dict[str, float | int | None]:
    """{'mean', 'low', 'high', 'n'}: the mean of the finite values and its percentile bootstrap
    interval (`n_resamples` resamples of the images with replacement, seeded). One value: the
    interval is that value; none: everything None and n 0."""
    v = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").to_numpy(float)
    v = v[np.isfinite(v)]
    n = len(v)
    if n == 0:
        return {"mean": None, "low": None, "high": None, "n": 0}
    mean = float(v.mean())
    if n == 1 or np.ptp(v) == 0:
        return {"mean": mean, "low": mean, "high": mean, "n": n}
    idx = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    means = v[idx].mean(axis=1)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return {"mean": mean, "low": float(low), "high": float(high), "n": n}


def _column(per_image: pd.DataFrame, metric: Metric) -> pd.Series:
    if metric.column not in per_image:
        return pd.Series([], dtype=float)
    values = pd.to_numeric(per_image[metric.column], errors="coerce").astype(float)
    return values.abs() if metric.absolute else values


def intervals(per_image: pd.DataFrame, methods: Sequence[str], *, seed: int = 0,
              confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES
              ) -> dict[str, dict[str, dict[str, Any]]]:
    """{method: {metric: bootstrap_mean(...)}} for every scorecard metric (the random baseline
    too, where the table has it)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for method in [*methods, RANDOM_BASELINE]:
        d = per_image[per_image["method"] == method]
        if d.empty:
            continue
        out[method] = {m.name: bootstrap_mean(_column(d, m), confidence=confidence,
                                              n_resamples=n_resamples, seed=seed)
                       for m in METRICS}
    return out


def rank_methods(summary: Mapping[str, Mapping[str, Mapping[str, Any]]],
                 methods: Sequence[str]) -> dict[str, float | None]:
    """{method: mean rank over the RANKED metrics it has (1 = best)}; None with none."""
    ranks: dict[str, list[float]] = {m: [] for m in methods}
    for name in RANKED:
        means = pd.Series({m: summary[m][name]["mean"] for m in methods
                           if summary[m][name]["mean"] is not None}, dtype=float)
        if means.empty:
            continue
        r = means.rank(ascending=BY_NAME[name].better == "lower", method="average")
        for m, value in r.items():
            ranks[str(m)].append(float(value))
    return {m: (float(np.mean(r)) if r else None) for m, r in ranks.items()}


def _fmt(s: Mapping[str, Any]) -> str:
    return f"{s['mean']:.2f} [{s['low']:.2f}, {s['high']:.2f}]"


def verdict(stats: Mapping[str, Mapping[str, Any]],
            baseline: Mapping[str, Mapping[str, Any]] | None) -> str:
    """One line a person can act on, from a method's metrics (and the random baseline's)."""
    def mean(name: str, source: Mapping[str, Mapping[str, Any]] | None = stats) -> float | None:
        return None if source is None or name not in source else source[name]["mean"]

    clauses: list[str] = []
    worst = max((mean(k) for k in ("sanity_abs_spearman", "cascading_abs_rho")
                 if mean(k) is not None), default=None)
    if worst is not None and worst > RANDOMISATION_MAX_ABS_RHO:
        key = max((k for k in ("sanity_abs_spearman", "cascading_abs_rho")
                   if mean(k) is not None), key=lambda k: mean(k) or 0.0)
        clauses.append(f"fails the randomisation test ({BY_NAME[key].label} {_fmt(stats[key])} "
                       f"> {RANDOMISATION_MAX_ABS_RHO}): the map barely depends on the learnt "
                       "weights, do not trust it")
    gap, chance_gap = (None if mean("insertion_auc", src) is None or mean("deletion_auc", src) is None
                       else mean("insertion_auc", src) - mean("deletion_auc", src)
                       for src in (stats, baseline))
    if not clauses and gap is not None and chance_gap is not None and gap <= chance_gap:
        clauses.append(f"no more faithful than a random map (insertion - deletion {gap:.2f} vs "
                       f"{chance_gap:.2f}): do not use")
    roc = stats.get("roc_auc")
    if not clauses:
        if roc is None or roc["mean"] is None:
            clauses.append("faithful to the model, localisation not measured (no masks)"
                           if gap is not None else "localisation not measured (no masks)")
        elif roc["low"] > ROC_CHANCE:
            clauses.append(f"trust for localisation (ROC AUC {_fmt(roc)} above chance "
                           f"{ROC_CHANCE}, n={roc['n']})")
        elif roc["high"] < ROC_CHANCE:
            clauses.append(f"points away from the cracks (ROC AUC {_fmt(roc)} below chance): "
                           "do not use for localisation")
        else:
            clauses.append(f"no better than chance at localisation (ROC AUC {_fmt(roc)} "
                           f"includes {ROC_CHANCE})")
    stable = mean("seed_stability")
    if stable is not None and stable < SEED_STABILITY_MIN:
        clauses.append(f"unstable across seeds (rho {stable:.2f}): average several seeds")
    return "; ".join(clauses)


def scorecard(per_image: pd.DataFrame, methods: Sequence[str], *, seed: int = 0,
              confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES) -> dict[str, Any]:
    """{'methods': [{'method', 'rank', 'verdict', 'metrics': {metric: {mean, low, high, n}}},
    ...] best first, 'random_baseline': {metric: ...} or None, 'confidence', 'n_resamples'}."""
    summary = intervals(per_image, methods, seed=seed, confidence=confidence,
                        n_resamples=n_resamples)
    present = [m for m in methods if m in summary]
    ranks = rank_methods(summary, present)
    baseline = summary.get(RANDOM_BASELINE)
    rows = [{"method": m, "rank": ranks[m], "verdict": verdict(summary[m], baseline),
             "metrics": summary[m]} for m in present]
    # a method not to trust at all (randomisation, faithfulness) goes below every other
    rows.sort(key=lambda r: (r["verdict"].startswith(DISQUALIFIED), r["rank"] is None,
                             r["rank"] or 0.0, r["method"]))
    return {"methods": rows, RANDOM_BASELINE: baseline, "confidence": confidence,
            "n_resamples": n_resamples}


def flat_metrics(card: Mapping[str, Any]) -> dict[str, float]:
    """MLflow metrics: explain/<method>/<metric> (mean), .../<metric>_low, _high; and
    explain/<method>/rank; the random baseline's as in `means`. Undefined values left out."""
    out: dict[str, float] = {}
    baseline = card.get(RANDOM_BASELINE)
    rows = [*card["methods"], *([{"method": RANDOM_BASELINE, "rank": None, "metrics": {
        k: s for k, s in baseline.items()
        if BY_NAME[k].group in ("localisation", "faithfulness")}}] if baseline else [])]
    for row in rows:
        prefix = f"explain/{row['method']}/"
        if row["rank"] is not None:
            out[prefix + "rank"] = row["rank"]
        for name, s in row["metrics"].items():
            if s["mean"] is not None:
                out.update({prefix + name: s["mean"], f"{prefix}{name}_low": s["low"],
                            f"{prefix}{name}_high": s["high"]})
    return out


def cell(s: Mapping[str, Any] | None, n_total: int | None = None) -> str:
    """'0.71 [0.65, 0.77]' (with ' n=4' when fewer than n_total images counted); '-' if None."""
    if s is None or s["mean"] is None:
        return "-"
    digits = 1 if abs(s["mean"]) >= 10 else 2
    text = (f"{s['mean']:.{digits}f}" if s["low"] == s["high"] else
            f"{s['mean']:.{digits}f} [{s['low']:.{digits}f}, {s['high']:.{digits}f}]")
    return text + (f" n={s['n']}" if n_total is not None and s["n"] < n_total else "")


def markdown(card: Mapping[str, Any], metrics: Sequence[str] = KEY_METRICS,
             n_images: int | None = None) -> str:
    """The scorecard as a Markdown table: rank, method, `metrics` as mean [95% interval] (n where
    fewer than `n_images` counted), verdict; the random baseline last, unranked."""
    def line(cells: Sequence[str]) -> str:  # a | inside a cell (|rho|) would end it
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    head = ["rank", "method", *(f"{BY_NAME[k].label} ({BY_NAME[k].better} better)"
                                for k in metrics), "verdict"]
    lines = [line(head), "|" + "---|" * len(head)]
    for row in card["methods"]:
        rank = "-" if row["rank"] is None else f"{row['rank']:.1f}"
        cells = [cell(row["metrics"][k], n_images) for k in metrics]
        lines.append(line([rank, row["method"], *cells, row["verdict"]]))
    if card.get(RANDOM_BASELINE):
        cells = [cell(card[RANDOM_BASELINE].get(k), n_images) for k in metrics]
        lines.append(line(["", "random map", *cells, "chance level"]))
    return "\n".join(lines) + "\n"


def table(card: Mapping[str, Any]) -> pd.DataFrame:
    """Long form for scorecard.csv: one row per (method, metric) with mean, low, high, n, rank,
    verdict."""
    rows = [{"method": r["method"], "rank": r["rank"], "verdict": r["verdict"], "metric": name,
             "better": BY_NAME[name].better, "group": BY_NAME[name].group, **s}
            for r in card["methods"] for name, s in r["metrics"].items()]
    if card.get(RANDOM_BASELINE):
        rows += [{"method": RANDOM_BASELINE, "rank": None, "verdict": "chance level",
                  "metric": name, "better": BY_NAME[name].better, "group": BY_NAME[name].group,
                  **s} for name, s in card[RANDOM_BASELINE].items()]
    return pd.DataFrame(rows)


def means(card: Mapping[str, Any]) -> dict[str, dict[str, float | None]]:
    """metrics.json: {method: {metric: mean or None}}; the random baseline's localisation and
    faithfulness means (what no information scores)."""
    out = {r["method"]: {k: s["mean"] for k, s in r["metrics"].items()} for r in card["methods"]}
    if card.get(RANDOM_BASELINE):
        out[RANDOM_BASELINE] = {k: s["mean"] for k, s in card[RANDOM_BASELINE].items()
                                if BY_NAME[k].group in ("localisation", "faithfulness")}
    return out


CHART_METRICS = ("roc_auc", "pointing_game", "insertion_auc", "deletion_auc",
                 "sanity_abs_spearman", "cascading_abs_rho")


def chart(card: Mapping[str, Any], path: Path | str,
          metrics: Sequence[str] = CHART_METRICS) -> None:
    """The scorecard as dot-and-whisker panels (mean and interval per method, best first; the
    random map's mean dashed), metrics no method has left out."""
    shown = [k for k in metrics if any(r["metrics"][k]["mean"] is not None
                                       for r in card["methods"])]
    if not shown:
        shown = ["seconds_per_image"]
    rows = [(r["method"], [None if r["metrics"][k]["mean"] is None else
                           (r["metrics"][k]["mean"], r["metrics"][k]["low"], r["metrics"][k]["high"])
                           for k in shown]) for r in card["methods"]]
    baseline = card.get(RANDOM_BASELINE) or {}
    chance = [baseline[k]["mean"] if k in baseline else None for k in shown]
    render.interval_chart(rows, [f"{BY_NAME[k].label}\n({BY_NAME[k].better} better)"
                                 for k in shown], path, chance)


def cascading_curves(curve: pd.DataFrame, measure: str = "abs_rho"
                     ) -> dict[str, tuple[list[str], list[float]]]:
    """{method: (blocks in cascade order, mean `measure` over images per step)}."""
    out: dict[str, tuple[list[str], list[float]]] = {}
    if curve.empty:
        return out
    for method, d in curve.groupby("method", sort=False):
        steps = d.groupby(["step", "block"])[measure].mean().reset_index().sort_values("step")
        out[str(method)] = (steps["block"].tolist(), steps[measure].tolist())
    return out


def cascading_chart(curve: pd.DataFrame, path: Path | str) -> None:
    """One line per method: mean |Spearman rho| between trained and randomised maps per step."""
    render.curve_chart(cascading_curves(curve), path,
                       "Cascading randomisation (top block first): should fall towards 0",
                       "|Spearman rho| trained vs randomised")
