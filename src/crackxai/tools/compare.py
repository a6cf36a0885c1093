"""Compare the last runs in the MLflow store: a table of what changed and what it did, and a chart.

    python -m crackxai.compare [--last N] [--metric test/accuracy] [--param train.lr]
                               [--experiment crackxai] [--uri URI] [--out reports/compare.png]
                               [--promote test/accuracy [--registered-model crackxai]]

Only top-level runs (one per trained model) are compared; the nested explain runs hang under them.
The table shows each run's name (the DVC experiment name for `dvc exp run`), the params that differ
between the runs, and the key metrics; the chart plots `--metric` against the changed param.
`--promote METRIC` then sets the alias `champion` on the registered model version of the best of
the compared runs by METRIC (lower is better for losses and errors, else higher), so
`models:/crackxai@champion` names it.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from crackxai.config import default_config
from crackxai.core.entry import command, log
from crackxai.core.errors import CrackxaiError
from crackxai.core.paths import project_root
from crackxai.tracking.registry import CHAMPION_ALIAS, lower_is_better, promote_best
from crackxai.tracking.runs import redact, resolve_tracking_uri

STAGE = "compare"
KEY_METRICS = ("test/accuracy", "test/f1", "test/roc_auc", "test/average_precision",
               "val/accuracy", "val/loss")
KEY_METRIC_PREFIXES = ("test/", "val/")
MAX_METRIC_COLUMNS = 6
PAGE_SIZE = 200


def load_runs(tracking_uri: str, experiment: str, last: int) -> list[Any]:
    """The `last` most recent top-level runs of `experiment`, newest first."""
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///"):]).is_file():
        raise CrackxaiError(
            f"No MLflow store at '{tracking_uri[len('sqlite:///'):]}'. Run the pipeline first "
            "(`dvc exp run` or `dvc repro`), or point --uri / MLFLOW_TRACKING_URI at your store."
        )
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    try:
        exp = client.get_experiment_by_name(experiment)
    except Exception as exc:  # MLflow raises many types for an unreachable store
        reason = " ".join(str(exc).split())[:300]
        raise CrackxaiError(f"Cannot read MLflow store '{redact(tracking_uri)}' ({reason}). "
                            "Check --uri / MLFLOW_TRACKING_URI.") from None
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise CrackxaiError(
            f"MLflow store '{redact(tracking_uri)}' has no experiment '{experiment}' "
            f"(it has: {', '.join(names) or 'none'}). Pass --experiment NAME, or run the pipeline first."
        )
    runs: list[Any] = []
    page_token = None
    while len(runs) < last:
        page = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"],
                                  max_results=PAGE_SIZE, page_token=page_token)
        # Nested runs (explain) carry mlflow.parentRunId; compare one run per model.
        runs += [r for r in page if "mlflow.parentRunId" not in r.data.tags]
        page_token = page.token
        if not page_token:
            break
    if not runs:
        raise CrackxaiError(
            f"Experiment '{experiment}' in '{redact(tracking_uri)}' has no runs yet. Run the pipeline "
            "first, e.g. `dvc exp run -S train.lr=1e-4` or `python -m crackxai.pipeline -m "
            "train.lr=1e-3,1e-4`."
        )
    return runs[:last]


def differing_params(runs: list[Any]) -> list[str]:
    """Params whose value is not the same in every run (a missing param counts as a value)."""
    keys = sorted({k for r in runs for k in r.data.params})
    return [k for k in keys if len({r.data.params.get(k) for r in runs}) > 1]


def key_metrics(runs: list[Any], metric: str) -> list[str]:
    """`metric` first, then the usual headline metrics the runs have (else any test/ or val/ ones),
    a few columns."""
    present = {k for r in runs for k in r.data.metrics}
    names = [m for m in KEY_METRICS if m in present] or \
        sorted(k for k in present if k.startswith(KEY_METRIC_PREFIXES))
    return [metric, *(n for n in names if n != metric)][:MAX_METRIC_COLUMNS]


def run_label(run: Any) -> str:
    return run.info.run_name or run.info.run_id[:8]


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(runs: list[Any], params: list[str], metrics: list[str]) -> str:
    """A plain-text table: one row per run, columns run / status / changed params / metrics."""
    header = ["run", "status", *params, *metrics]
    rows = [[run_label(r), r.info.status, *(r.data.params.get(p) for p in params),
             *(r.data.metrics.get(m) for m in metrics)] for r in runs]
    cells = [header] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _as_number(value: str | None) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def plot(runs: list[Any], metric: str, param: str | None, out: str | Path) -> Path:
    """`metric` against `param` (numbers on an x axis, log-scaled when they span decades; anything
    else as categories), one labelled point per run; without a param, one bar per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(r, r.data.metrics[metric]) for r in runs if metric in r.data.metrics]
    if not points:
        available = sorted({k for r in runs for k in r.data.metrics})
        raise CrackxaiError(
            f"None of the compared runs has metric '{metric}'. Pick one with --metric "
            f"(available: {', '.join(available) or 'none'})."
        )
    points.reverse()  # oldest first reads left to right
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if param is None:
        ax.bar([run_label(r) for r, _ in points], [y for _, y in points], color="tab:blue")
        ax.set_xlabel("run")
        ax.tick_params(axis="x", labelrotation=30)
    else:
        values = [r.data.params.get(param) for r, _ in points]
        numbers = [_as_number(v) for v in values]
        if all(n is not None for n in numbers):
            xs: list[Any] = numbers
            if min(xs) > 0 and max(xs) / min(xs) >= 10:
                ax.set_xscale("log")
        else:
            categories = sorted({str(v) for v in values})
            xs = [categories.index(str(v)) for v in values]
            ax.set_xticks(range(len(categories)), categories)
        ax.scatter(xs, [y for _, y in points], s=40, color="tab:blue", zorder=3)
        for x, (r, y) in zip(xs, points, strict=True):
            ax.annotate(run_label(r), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(param)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} over the last {len(runs)} runs")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)  # a chart, not a pipeline output: no atomic write needed
    plt.close(fig)
    return out


def compare(last: int = 10, metric: str = "test/accuracy", experiment: str | None = None,
            param: str | None = None, uri: str | None = None,
            out: str | Path | None = "reports/compare.png") -> str:
    """Print the comparison table (and return it); write the chart to `out` unless it is None."""
    if last < 1:
        raise CrackxaiError(f"--last must be a positive number of runs, got {last}.")
    tracking_uri = resolve_tracking_uri(uri, project_root())
    experiment = experiment or default_config().tracking.experiment
    runs = load_runs(tracking_uri, experiment, last)
    changed = differing_params(runs)
    if param is not None and param not in {k for r in runs for k in r.data.params}:
        raise CrackxaiError(
            f"--param '{param}' is not a param of these runs. Params that differ: "
            f"{', '.join(changed) or 'none'}."
        )
    table = format_table(runs, changed, key_metrics(runs, metric))
    log(STAGE, f"{len(runs)} run(s) of '{experiment}' in {redact(tracking_uri)}; "
               f"params that differ: {', '.join(changed) or 'none'}")
    print(table, flush=True)
    if out is not None:
        path = plot(runs, metric, param or (changed[0] if changed else None), out)
        log(STAGE, f"chart of {metric} written to {path}")
    return table


def promote(metric: str, last: int = 10, experiment: str | None = None, uri: str | None = None,
            registered_model: str | None = None) -> str:
    """Alias `champion` -> the registered version of the best of the last `last` runs by
    `metric`; returns (and logs) what it did."""
    if last < 1:
        raise CrackxaiError(f"--last must be a positive number of runs, got {last}.")
    import mlflow

    tracking_uri = resolve_tracking_uri(uri, project_root())
    defaults = default_config().tracking
    experiment = experiment or defaults.experiment
    name = registered_model or defaults.registered_model
    if not name:
        raise CrackxaiError("--promote needs a registered model name: pass --registered-model "
                            "NAME (tracking.registered_model is null in conf/tracking/).")
    runs = load_runs(tracking_uri, experiment, last)
    client = mlflow.MlflowClient(tracking_uri)
    best, version = promote_best(client, runs, metric, name)
    how = "lowest" if lower_is_better(metric) else "highest"
    message = (f"{name} version {version.version} (run {run_label(best)}, {metric} "
               f"{best.data.metrics[metric]:.4g}, the {how} of {len(runs)} run(s)) is now "
               f"models:/{name}@{CHAMPION_ALIAS}")
    log(STAGE, message)
    return message


@command(STAGE)
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m crackxai.compare", description=__doc__.split(
        "\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--last", type=int, default=10, help="number of recent runs (default 10)")
    parser.add_argument("--metric", default="test/accuracy", help="metric to chart (default "
                        "test/accuracy)")
    parser.add_argument("--param", default=None, help="param on the x axis (default: the first "
                        "param that differs)")
    parser.add_argument("--experiment", default=None, help="MLflow experiment (default crackxai)")
    parser.add_argument("--uri", default=None, help="tracking store (default MLFLOW_TRACKING_URI, "
                        "else sqlite:///<project>/mlflow.db)")
    parser.add_argument("--out", default="reports/compare.png", help="chart file (PNG)")
    parser.add_argument("--no-plot", action="store_true", help="print the table only")
    parser.add_argument("--promote", metavar="METRIC", default=None, help="set the alias "
                        f"'{CHAMPION_ALIAS}' on the registered version of the best compared run "
                        "by METRIC (e.g. test/accuracy; lower is better for losses)")
    parser.add_argument("--registered-model", default=None, help="registered model for "
                        "--promote (default tracking.registered_model: crackxai)")
    args = parser.parse_args(argv)
    compare(last=args.last, metric=args.metric, experiment=args.experiment, param=args.param,
            uri=args.uri, out=None if args.no_plot else args.out)
    if args.promote:
        promote(args.promote, last=args.last, experiment=args.experiment, uri=args.uri,
                registered_model=args.registered_model)


if __name__ == "__main__":
    main(sys.argv[1:])
