"""``modelsafe plot RUN... --metric M -o curve.png``: metrics over steps, one line per run."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import click

from ..errors import FrameworkNotInstalledError
from .address import listing, open_run, resolve_run
from .errors import CommandError
from .output import emit_json, escape, json_option, say


@dataclass
class Series:
    run: str
    metric: str
    steps: list[int]
    values: list[float]

    @property
    def label(self) -> str:
        return f"{os.path.basename(os.path.normpath(self.run)) or self.run}"

    def as_dict(self) -> dict[str, Any]:
        return {"run": self.run, "metric": self.metric, "steps": self.steps, "values": self.values}


def collect(run_path: str, metric: str) -> tuple[Series, set[str]]:
    """The (step, value) points of ``metric`` in a run (manifests only), and every metric seen."""
    infos, _ = listing(open_run(run_path))
    seen: set[str] = set()
    steps, values = [], []
    for info in infos:
        seen.update(info.metrics)
        value = info.metrics.get(metric)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        steps.append(info.step)
        values.append(float(value))
    return Series(run_path, metric, steps, values), seen


def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend (works without a display)."""
    try:
        import matplotlib
    except ImportError:
        raise FrameworkNotInstalledError(
            "modelsafe plot needs matplotlib, which is not installed: pip install 'modelsafe[plot]'"
        ) from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def draw(series: list[Series], metrics: list[str], output: str, *, title: str | None, log_y: bool, dpi: int) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(len(metrics), 1, figsize=(8, 3.2 * len(metrics) + 0.8), squeeze=False, sharex=True)
    try:
        for ax, metric in zip(axes[:, 0], metrics):
            for s in (s for s in series if s.metric == metric):
                finite = [(x, y) for x, y in zip(s.steps, s.values) if math.isfinite(y)]
                if not finite:
                    continue
                xs, ys = zip(*finite)
                ax.plot(xs, ys, marker="o" if len(xs) < 50 else None, markersize=3, label=s.label)
            ax.set_ylabel(metric)
            if log_y:
                ax.set_yscale("log")
            ax.grid(True, alpha=0.3)
            ax.legend(loc="best", fontsize="small")
        axes[-1, 0].set_xlabel("step")
        fig.suptitle(title or ", ".join(metrics) + " by step")
        fig.tight_layout()
        fig.savefig(output, format="png", dpi=dpi)
    finally:
        plt.close(fig)


@click.command("plot")
@click.argument("runs", nargs=-1, required=True)
@click.option("--metric", "-m", "metrics", multiple=True, required=True, metavar="METRIC",
              help="Metric to draw over steps; repeat for several (one panel each).")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="PNG file to write.")
@click.option("--title", help="Figure title.")
@click.option("--log-y", is_flag=True, help="Logarithmic y axis.")
@click.option("--dpi", type=click.IntRange(30, 600), default=100, show_default=True, help="Resolution of the PNG in dots per inch.")
@json_option
def plot(runs: tuple[str, ...], metrics: tuple[str, ...], output: str, title: str | None, log_y: bool, dpi: int, as_json: bool) -> None:
    """Draw METRIC over steps for one or several RUNS into a PNG.

    Reads the metrics recorded in each checkpoint's manifest (only committed
    checkpoints still on disk are plotted).
    """
    series: list[Series] = []
    for run in runs:
        path = resolve_run(run)
        for metric in metrics:
            found, seen = collect(path, metric)
            if not found.steps:
                have = ", ".join(sorted(seen)) or "none"
                raise CommandError(
                    f"{path}: no checkpoint records metric {metric!r} (metrics in this run: {have})",
                    kind="MetricNotFound", path=path, key=metric,
                )
            series.append(found)
    draw(series, list(metrics), output, title=title, log_y=log_y, dpi=dpi)
    if as_json:
        emit_json({"output": output, "bytes": os.path.getsize(output), "series": [s.as_dict() for s in series]})
        return
    points = sum(len(s.steps) for s in series)
    say(f"wrote {escape(output)}: {len(series)} line(s), {points} point(s)")
