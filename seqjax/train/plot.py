"""Learning curves as PNG files (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_curves"]


def plot_curves(
    histories: Mapping[str, Sequence[Mapping[str, Any]]],
    metric: str,
    path: str | os.PathLike,
    baseline: float | None = None,
    logy: bool | str = False,
    *,
    split: str | None = None,
    title: str | None = None,
    baseline_label: str = "baseline",
    xlabel: str = "step",
    x_scale: float = 1.0,
) -> Path:
    """Plots ``metric`` against ``step``, one line per run, and saves it as an image.

    Args:
      histories: ``{run name: metric rows}``, rows as in ``metrics.jsonl``
        (``{"step", "split", <metrics>...}``), e.g. ``FitResult.history``.
      metric: the metric to plot; rows without it are skipped.
      path: the output file (format from its suffix, usually ``.png``); parents are created.
      baseline: if given, a dashed horizontal line at this value (e.g. a task's trivial loss).
      logy: logarithmic y axis; ``"symlog"``: logarithmic down to 0.01 and linear below, so
        that zeros (a solved task's error) stay on the plot.
      split: only rows of this split (``"train"``, ``"valid"``); ``None``: every split, one line
        per (run, split) when a run has the metric in several splits.
      title: the figure title (default: the metric name).
      baseline_label: the legend entry of the baseline.
      xlabel: the x-axis label.
      x_scale: x = ``step * x_scale`` (e.g. the batch size, to plot against sequences seen).

    Returns:
      The path written.

    Raises:
      ValueError: if no row of any history has ``metric``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lines: list[tuple[str, list[float], list[float]]] = []
    for name, rows in histories.items():
        by_split: dict[str, tuple[list[float], list[float]]] = {}
        for row in rows:
            if metric not in row or (split is not None and row.get("split") != split):
                continue
            steps, values = by_split.setdefault(str(row.get("split", "")), ([], []))
            steps.append(int(row["step"]) * x_scale)
            values.append(float(row[metric]))
        for row_split, (steps, values) in by_split.items():
            label = name if len(by_split) == 1 else f"{name} ({row_split})"
            lines.append((label, steps, values))
    if not lines:
        raise ValueError(f"no row has {metric=}" + ("" if split is None else f" in {split=}")
                         + f" in the histories of {sorted(histories)}")

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)  # an Agg canvas for this figure only; pyplot's backend is untouched
    ax = fig.add_subplot()
    for label, steps, values in lines:
        ax.plot(steps, values, label=label, linewidth=1.5)
    if baseline is not None:
        ax.axhline(baseline, linestyle="--", color="gray", linewidth=1.2, label=baseline_label)
    if logy == "symlog":
        ax.set_yscale("symlog", linthresh=1e-2)
        top = max([max(v) for _, _, v in lines] + ([baseline] if baseline is not None else []))
        ax.set_ylim(0.0, 2.0 * top)
    elif logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)
    ax.set_title(title if title is not None else metric)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return out
