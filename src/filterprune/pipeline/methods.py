"""Pruning methods compared with the one-shot L1 sweep, one resumable stage per method and ratio.

Every method starts from the baseline, removes the same share at each ratio of ``prune.ratios``
and retrains with ``retrain`` (optionally distilling from the baseline), so that one run compares
them side by side (filterprune.pipeline.comparison renders the table and plots):

- ``l1``: one-shot pruning by ``prune.criterion`` (Li et al. 2017, §3), as the sweep does.
- ``sfp``: Soft Filter Pruning (He et al., IJCAI 2018, Alg. 1): the filters of lowest norm are
  zeroed before retraining and again after every epoch, chosen anew each time; zeroed filters
  keep receiving gradients, so they can come back. After the last epoch they are removed.
- ``unstructured``: per-weight magnitude pruning of the convs (``torch.nn.utils.prune``,
  ``l1_unstructured`` per layer or ``global_unstructured``) at the fraction of conv weights the
  filter-pruned model of the same ratio removes, retrained with the masks, then made permanent
  (``prune.remove``): a dense model with zeros, as many MACs and as fast as the baseline.
- ``cluster``: one filter per cluster of similar filters (filterprune.engine.cluster), by their
  weights or their feature maps; ``online`` re-clusters and zeroes after every epoch like SFP.

Stages are named ``<method name>-<ratio %>`` (``sfp-50``) and write ``<stage>.safetensors``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from filterprune.engine import (
    DependencyGraph,
    PruningPlan,
    apply_plan,
    resolve_ratios,
    select_by_clustering,
    select_filters,
    zero_pruned,
)
from filterprune.engine.modes import eval_mode
from filterprune.pipeline.config import MethodConfig
from filterprune.pipeline.pruned import distill_hooks, pruned_row
from filterprune.pipeline.session import Log, Session, Stages, percent

Select = Callable[[nn.Module], PruningPlan]


def method_stage(method: MethodConfig, ratio: float) -> str:
    """Stage (and model file) name of ``method`` at ``ratio``: ``sfp-50``."""
    return f"{method.name}-{percent(ratio)}"


def run_methods(
    session: Session, model: nn.Module, graph: DependencyGraph, baseline: dict, stages: Stages,
    out_dir: Path, log: Log,
) -> dict[str, list[dict]]:
    """Runs every configured method at every ratio, each as its own stage.

    Returns:
        Method name -> one result row per ratio (as the sweep's rows, plus ``method``, ``kind``,
        ``distill`` and, for ``unstructured``, ``zeroed_conv_weights``).
    """
    return {
        method.name: [
            stages.run(method_stage(method, ratio), lambda m=method, r=ratio: run_method(
                session, model, graph, m, r, baseline, stages, out_dir, log))
            for ratio in session.config.prune.ratios
        ]
        for method in session.config.methods
    }


def run_method(
    session: Session, model: nn.Module, graph: DependencyGraph, method: MethodConfig,
    ratio: float, baseline: dict, stages: Stages, out_dir: Path, log: Log,
) -> dict:
    """Prunes the baseline ``model`` (not modified) with ``method`` at ``ratio`` and retrains.

    Returns:
        The result row (see ``pruned_row``) with the method's name, kind and options.
    """
    stage = method_stage(method, ratio)
    cfg = session.config.prune
    ratios = resolve_ratios(graph, ratio, cfg.skip)
    hooks = distill_hooks(session, model, method.distill)
    extra = {}
    if method.kind == "unstructured":
        student = copy.deepcopy(model).to(session.device)
        extra["zeroed_conv_weights"] = _mask_weights(student, model, graph, ratios, method.scope)
    else:
        select = _selection(session, graph, method, ratios, stage)
        if method.kind == "sfp" or method.online:
            student = zero_pruned(copy.deepcopy(model), select(model), graph)
            hooks["on_epoch_end"] = lambda epoch: zero_pruned(student, select(student), graph)
        else:
            plan = select(model)
            student = apply_plan(model, plan, graph)
    before = session.evaluate(student)
    session.train(student, session.config.retrain, stage, stages.state(stage), **hooks)
    if method.kind == "unstructured":
        for conv in _convs(student):
            torch_prune.remove(conv, "weight")
        plan = None
    elif method.kind == "sfp" or method.online:
        # the zeroed filters have norm 0: the L1 selection at the same ratios removes exactly them
        plan = select_filters(student, graph, ratios, "l1", round_to=cfg.round_to)
        student = apply_plan(student, plan, graph)
    row = pruned_row(session, student, plan, stage, ratio, baseline, before, out_dir, log)
    return {"method": method.name, "kind": method.kind, "distill": method.distill, **row, **extra}


def _selection(
    session: Session, graph: DependencyGraph, method: MethodConfig, ratios: Mapping[str, float],
    stage: str,
) -> Select:
    """The rule that decides a plan from a model's current weights (or feature maps)."""
    cfg = session.config.prune
    if method.kind in ("l1", "sfp"):
        criterion = session.criterion(stage)
        return lambda net: select_filters(net, graph, ratios, criterion, cfg.strategy,
                                          cfg.round_to)
    if method.describe == "weights":
        return lambda net: select_by_clustering(net, graph, ratios, round_to=cfg.round_to)
    images = torch.cat(list(session.sample_images(method.calibration_images)))
    return lambda net: select_by_clustering(
        net, graph, ratios, feature_maps(net, images, ratios), cfg.round_to)


def feature_maps(model: nn.Module, images: torch.Tensor, layers: Mapping[str, float]) -> dict:
    """Output maps of ``layers`` on ``images`` (N, C, H, W), one row per filter: layer name ->
    (C_out, N * H_out * W_out), computed in eval mode without gradients."""
    modules = dict(model.named_modules())
    maps: dict[str, torch.Tensor] = {}
    hooks = [modules[name].register_forward_hook(
        lambda module, args, out, name=name: maps.__setitem__(
            name, out.detach().transpose(0, 1).flatten(1).cpu()))
        for name in layers]
    try:
        with eval_mode(model):
            model(images)
    finally:
        for hook in hooks:
            hook.remove()
    return maps


def _mask_weights(
    student: nn.Module, model: nn.Module, graph: DependencyGraph, ratios: Mapping[str, float],
    scope: str,
) -> float:
    """Masks the smallest conv weights of ``student`` (torch.nn.utils.prune, L1 magnitude), the
    fraction the filter-pruned model at ``ratios`` removes from the convs; returns it."""
    plan = select_filters(model, graph, ratios)
    dense, pruned = (_conv_weights(net) for net in (model, apply_plan(model, plan, graph)))
    amount = 1 - pruned / dense
    convs = _convs(student)
    if scope == "global":
        torch_prune.global_unstructured([(m, "weight") for m in convs],
                                        pruning_method=torch_prune.L1Unstructured, amount=amount)
    else:
        for conv in convs:
            torch_prune.l1_unstructured(conv, "weight", amount=amount)
    return amount


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def _conv_weights(model: nn.Module) -> int:
    return sum(conv.weight.numel() for conv in _convs(model))


