"""The plots of report.md (matplotlib, no display needed) and the helpers every section's plots
share: the figure size, the baseline's star, labels, grid and legend."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from filterprune.pipeline.results import Baseline, PrunedRow, SensitivityTable


def layer_colors(n: int) -> list:
    """Returns n distinct colours: tab10 up to 10 layers, then samples of viridis."""
    if n <= 10:
        return [f"C{i}" for i in range(n)]
    return list(colormaps["viridis"](np.linspace(0, 0.95, n)))


def new_figure() -> tuple[Figure, Axes]:
    """An empty figure of the report's size with one axes."""
    fig = Figure(figsize=(7, 4.5))
    return fig, fig.add_subplot()


def mark_baseline(ax: Axes, x: float, top1: float, **style) -> None:
    """Marks the baseline as a black star at (``x``, ``top1``) (``style``, e.g. ``xerr``, goes
    to ``errorbar``)."""
    ax.errorbar([x], [top1], marker="*", markersize=14, color="black", linestyle="none",
                label="baseline", **style)


def finish(fig: Figure, ax: Axes, xlabel: str, ylabel: str, title: str,
           entries: int = 8) -> Figure:
    """Labels, grid and a legend sized for ``entries`` entries; returns ``fig``, laid out."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8 if entries <= 8 else 7, ncol=1 if entries <= 8 else 2)
    fig.tight_layout()
    return fig


def sensitivity_figure(sensitivity: SensitivityTable, baseline_top1: float) -> Figure:
    """Top-1 vs % of filters removed, one curve per layer pruned alone (Li et al. Fig. 2b)."""
    fig, ax = new_figure()
    x = np.asarray(sensitivity.ratios, dtype=float) * 100
    layers = sensitivity.layers
    for (name, accs), color in zip(layers.items(), layer_colors(len(layers)), strict=True):
        ax.plot(x, accs, marker="o", markersize=3, color=color, label=name)
    ax.axhline(baseline_top1, color="black", linestyle="--", linewidth=1, label="baseline")
    return finish(fig, ax, "filters pruned away (%)",
                  f"top-1 accuracy on the {sensitivity.split} split (%)",
                  "Sensitivity to pruning (each layer alone, no retraining)", len(layers) + 1)


def filter_norms_figure(filter_norms: dict) -> Figure:
    """Sorted normalised filter L1 norms vs filter index as a fraction (Li et al. Fig. 2a)."""
    fig, ax = new_figure()
    for (name, norms), color in zip(
        filter_norms.items(), layer_colors(len(filter_norms)), strict=True
    ):
        ax.plot(np.linspace(0, 1, len(norms)), norms, color=color, label=f"{name} ({len(norms)})")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    return finish(fig, ax, "filter index / number of filters (sorted by L1 norm)",
                  "L1 norm / max L1 norm", "Sorted filter L1 norms per layer", len(filter_norms))


def accuracy_vs_cost_figure(
    pruning: list[PrunedRow], baseline: Baseline, key: str, label: str
) -> Figure:
    """Top-1 before and after retraining vs the cost of the pruned models, baseline marked.

    Args:
        pruning: The pruning rows, largest MACs first.
        baseline: The baseline of the results.
        key: The cost field of the rows and the baseline: "macs" or "params".
        label: The cost name for the axis label.

    Returns:
        The figure.
    """
    fig, ax = new_figure()
    x = [getattr(row, key) / 1e6 for row in pruning]
    ax.plot(x, [row.top1_before for row in pruning], marker="o", label="before retraining")
    ax.plot(x, [row.top1_after for row in pruning], marker="s", label="after retraining")
    for xi, row in zip(x, pruning, strict=True):
        ax.annotate(
            row.label,
            (xi, row.top1_after),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=7,
        )
    mark_baseline(ax, getattr(baseline, key) / 1e6, baseline.top1)
    return finish(fig, ax, f"{label} (millions)", "top-1 accuracy on the test split (%)",
                  f"Top-1 accuracy vs {label} (labels: ratio of filters removed, or plan)")
