"""The analyses of a run's baseline: filter norms (Li et al. 2017, Fig. 2a) and the sensitivity
of each layer pruned alone without retraining (§3.2, Fig. 2b), used by the main job, the
``sensitivity`` command and the criteria comparison (§4.5).

The sensitivity is computed by the building blocks of the public ``filterprune.sensitivity``
(filterprune.analysis): one layer per channel group (``analysed_layers``), the plans of
``sensitivity_plans`` and their top-1 by ``top1_shared_prefix`` or ``top1_by_copies``. Under
torchrun each process analyses a share of the groups.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from filterprune import distributed
from filterprune.analysis import (
    analysed_layers,
    sensitivity_plans,
    top1_by_copies,
    top1_shared_prefix,
)
from filterprune.engine import DependencyGraph, PrunedVariants, l1_norm
from filterprune.engine.criteria import Criterion
from filterprune.pipeline.session import Log, Session


def filter_norms(model: nn.Module, graph: DependencyGraph) -> dict[str, list[float]]:
    """Per prunable layer, filter L1 norms sorted descending, divided by the largest (Fig. 2a)."""
    modules = dict(model.named_modules())
    norms = {}
    for name in graph.layers:
        scores = l1_norm(modules[name].weight).sort(descending=True).values
        norms[name] = (scores / scores[0].clamp_min(1e-12)).tolist()
    return norms


def sensitivity(
    session: Session, model: nn.Module, graph: DependencyGraph, ratios: list[float], log: Log,
    criterion: str | Criterion | None = None, scores: Mapping[str, torch.Tensor] | None = None,
) -> dict:
    """Each channel group (named by its first member) pruned alone at each ratio, evaluated
    without retraining (Fig. 2b) on the split choices are made on (``Session.choice_split``:
    the validation split, or the test split when none is held out).

    ``criterion`` (default: the run's, ``Session.criterion``) or precomputed ``scores`` choose
    the filters (``select_filters``). The ``shared-prefix`` method falls back to pruned copies
    for models torch.fx cannot trace whole.

    Returns:
        ``{"ratios": [...], "layers": {name: [top-1 % per ratio]}, "members": {name: [every
        member]}, "split": the split}``; ``members`` lists the groups of several layers
        (``residual="coupled"``).
    """
    groups = analysed_layers(graph, None)
    mine = groups[distributed.rank() :: distributed.world_size()]  # torchrun: a share
    plans = sensitivity_plans(model, graph, mine, ratios,
                              criterion or session.criterion("sensitivity"), scores)
    method = session.config.sensitivity.method
    if method == "shared-prefix" and not PrunedVariants.supports(model):
        log("sensitivity: torch.fx cannot trace the model whole; evaluating pruned copies")
        method = "copies"
    if method == "copies":
        top1 = top1_by_copies(model, graph, plans,
                              lambda m: session.evaluate(m, session.choice_split)["top1"])
    else:
        top1 = top1_shared_prefix(model, graph, plans, session.batches(session.choice_split),
                                  session.device, session.compute)
    gathered = distributed.gather_dicts(top1)
    layers = {name: gathered[name] for name in groups}
    for name, accuracies in layers.items():
        log(f"sensitivity {name}: " + " ".join(f"{a:.1f}" for a in accuracies))
    members = {name: list(graph.layers[name].members) for name in groups
               if len(graph.layers[name].members) > 1}
    return {"ratios": list(ratios), "layers": layers, "members": members,
            "split": session.choice_split}
