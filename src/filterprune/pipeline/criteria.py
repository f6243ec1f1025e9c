"""Criteria comparison (Li et al. 2017, §4.5, Fig. 8 and 9): each prunable layer pruned alone at
each ratio by each criterion, evaluated without retraining.

Weight criteria: ``l1`` (the paper's), ``l2`` (Appendix 6.1), ``random`` (seeded by the run's
seed) and ``l1-largest`` (the largest-L1 filters removed first). Activation criteria
(``filterprune.engine.activations``): the conv outputs before BatchNorm and ReLU over N training
images (the paper uses the whole training set), scored by mean-mean, mean-std, mean-l1,
mean-l2 and var-l2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from torch import nn

from filterprune.engine import (
    ACTIVATION_CRITERIA,
    CRITERIA,
    DependencyGraph,
    activation_scores,
    random_criterion,
)
from filterprune.errors import FilterpruneError
from filterprune.pipeline.analysis import sensitivity
from filterprune.pipeline.session import Log, Session

WEIGHT_CRITERIA = ("l1", "l2", "random", "l1-largest")
ALL_CRITERIA = WEIGHT_CRITERIA + ACTIVATION_CRITERIA
DEFAULT_IMAGES = 1000


def image_count(session: Session, count: int | None) -> int:
    """``count``, or ``DEFAULT_IMAGES`` capped at the training-set size when None.

    Raises:
        FilterpruneError: ``count`` not in [1, number of training images].
    """
    n = len(session.dataset.train_labels)
    if count is None:
        return min(DEFAULT_IMAGES, n)
    if not 1 <= count <= n:
        raise FilterpruneError(
            f"--images must be in [1, {n}] for {session.dataset.name}, got {count}"
        )
    return count


def compare_criteria(
    session: Session, model: nn.Module, graph: DependencyGraph, criteria: Sequence[str],
    ratios: Sequence[float], images: int | None, log: Log,
) -> dict:
    """Top-1 of every prunable layer pruned alone, per criterion and ratio (§4.5).

    Args:
        session: the prepared run (data, device, seed).
        model: the trained network (not modified).
        graph: its dependency graph.
        criteria: names from ``ALL_CRITERIA``.
        ratios: fractions of filters removed, each in [0, 1).
        images: number of training images the activation criteria are computed on (None:
            ``DEFAULT_IMAGES``, or all of them if fewer).
        log: receives one line per layer and criterion.

    Returns:
        ``{"ratios": [...], "images": N or None, "criteria": {criterion: {layer: [top-1 %]}}}``;
        ``images`` is None when no activation criterion was asked for.

    Raises:
        FilterpruneError: an unknown criterion or a bad image count.
    """
    unknown = [c for c in criteria if c not in ALL_CRITERIA]
    if unknown:
        raise FilterpruneError(
            f"unknown criterion '{unknown[0]}' (known: {', '.join(ALL_CRITERIA)})"
        )
    activations = {}
    if any(c in ACTIVATION_CRITERIA for c in criteria):
        images = image_count(session, images)
        activations = activation_scores(model.to(session.device),
                                        session.sample_images(images), list(graph.layers))
    curves = {}
    for criterion in criteria:
        if criterion in activations:
            chosen = {"criterion": criterion,
                      "scores": {k: v.cpu() for k, v in activations[criterion].items()}}
        elif criterion == "random":
            chosen = {"criterion": random_criterion(session.config.seed)}
        else:
            chosen = {"criterion": CRITERIA[criterion]}
        layers = sensitivity(session, model, graph, list(ratios),
                             lambda line, c=criterion: log(f"{c}: {line}"), **chosen)["layers"]
        curves[criterion] = layers
    return {"ratios": list(ratios), "images": images if activations else None, "criteria": curves}


def criteria_figure(result: dict, baseline_top1: float) -> Figure:
    """One panel per layer: top-1 (on ``result["split"]``) vs % of filters removed, one line per
    criterion (Fig. 8, 9)."""
    curves = result["criteria"]
    layers = list(next(iter(curves.values())))
    columns = min(3, len(layers))
    rows = math.ceil(len(layers) / columns)
    fig = Figure(figsize=(4.2 * columns, 3.3 * rows))
    x = np.asarray(result["ratios"], dtype=float) * 100
    for i, layer in enumerate(layers):
        ax = fig.add_subplot(rows, columns, i + 1)
        for j, (criterion, per_layer) in enumerate(curves.items()):
            style = "-" if criterion in WEIGHT_CRITERIA else "--"
            ax.plot(x, per_layer[layer], style, marker="o", markersize=3, color=f"C{j % 10}",
                    label=criterion)
        ax.axhline(baseline_top1, color="black", linestyle=":", linewidth=1)
        ax.set_title(layer, fontsize=9)
        ax.set_xlabel("filters pruned away (%)", fontsize=8)
        ax.set_ylabel(f"top-1, {result['split']} split (%)", fontsize=8)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7)
    fig.suptitle("Criteria compared: each layer pruned alone, no retraining (dotted: baseline)",
                 fontsize=10)
    fig.tight_layout()
    return fig
