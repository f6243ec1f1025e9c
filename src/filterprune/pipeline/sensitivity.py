"""Sensitivity analysis: each prunable layer pruned alone at each ratio, top-1 without
retraining (Li et al. 2017, §3.2, Fig. 2b).

Two ways give the same numbers, with the filters chosen by the same engine call
(``select_filters`` with the configured criterion):

- ``shared-prefix`` (default): no copies; for each batch the unpruned forward pass runs once and
  every (layer, ratio) reuses it up to the layer's consumers
  (filterprune.engine.variants.PrunedVariants). Works on every model torch.fx traces whole
  (no module left to ``ignore``), residual, concatenating and depthwise nets included.
- ``copies``: the reference; a copy of the model pruned by ``apply_plan`` and evaluated per
  (layer, ratio).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from filterprune.engine import (
    DependencyGraph,
    PrunedVariants,
    PruningPlan,
    apply_plan,
    select_filters,
)
from filterprune.training.loop import Batches, ComputeSettings, topk_hits

METHODS = ("shared-prefix", "copies")


def sensitivity_plans(
    model: nn.Module, graph: DependencyGraph, layers: Sequence[str], ratios: Sequence[float],
    criterion: str, scores: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, list[PruningPlan]]:
    """Per layer, the plan pruning it alone at each ratio (``select_filters`` with ``criterion``
    or precomputed ``scores``)."""
    return {name: [select_filters(model, graph, {name: r}, criterion, scores=scores)
                   for r in ratios]
            for name in layers}


def top1_by_copies(
    model: nn.Module, graph: DependencyGraph, plans: dict[str, list[PruningPlan]],
    evaluate: Callable[[nn.Module], dict],
) -> dict[str, list[float]]:
    """Top-1 (%) of a copy of ``model`` pruned by each plan, from ``evaluate(model)["top1"]``."""
    return {name: [evaluate(apply_plan(model, plan, graph))["top1"] for plan in layer_plans]
            for name, layer_plans in plans.items()}


def top1_shared_prefix(
    model: nn.Module, graph: DependencyGraph, plans: dict[str, list[PruningPlan]],
    batches: Batches, device: torch.device | str = "cpu", compute: ComputeSettings | None = None,
) -> dict[str, list[float]]:
    """Top-1 (%) of the model each plan prunes, without copies (see the module docstring).

    Args:
        model: the unpruned network (moved to ``device``; not modified).
        graph: its dependency graph.
        plans: layer name -> plans (``sensitivity_plans``).
        batches: (images (B, C, H, W), labels (B,)) on ``device``.
        device: where to evaluate.
        compute: memory format and autocast of the forward passes, as in ``evaluate``.

    Returns:
        Layer name -> top-1 % per plan, as ``evaluate`` counts it.

    Raises:
        FilterpruneError: plain torch.fx cannot trace the model (use ``top1_by_copies``).
    """
    compute = compute or ComputeSettings()
    variants = PrunedVariants(compute.prepare(model, device), graph, plans)
    correct = {name: [0] * len(layer_plans) for name, layer_plans in plans.items()}
    seen = 0
    for images, labels in batches:
        with compute.autocast(device):
            outputs = variants(compute.batch(images))
        for name, number, logits in outputs:
            correct[name][number] += topk_hits(logits, labels)[:, 0].sum().item()
        seen += len(labels)
    return {name: [100.0 * c / max(1, seen) for c in counts] for name, counts in correct.items()}
