"""Executes a pruning plan: removes filters physically and returns a smaller dense model.

For each pruned conv: its output channels (weight rows and bias), the channels of the BatchNorms on
its output path, and the input side of every consumer (conv input channels; for a Linear after a
flatten, the H*W input features of each removed channel). Li et al. 2017, §3.1.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from filterprune.engine.graph import Consumer, DependencyGraph
from filterprune.engine.plan import PruningPlan
from filterprune.errors import FilterpruneError


def apply_plan(model: nn.Module, plan: PruningPlan, graph: DependencyGraph) -> nn.Module:
    """Returns a pruned copy of ``model``; ``model`` itself is left unchanged.

    Args:
        model: the unpruned network.
        plan: kept filters per layer (``filterprune.engine.plan``).
        graph: the dependency graph of ``model`` (``filterprune.engine.graph.trace``).

    Returns:
        A new model whose pruned convs have ``len(plan.kept[name])`` output channels, with the
        parameters of the kept channels copied unchanged.

    Raises:
        FilterpruneError: a layer of the plan is not prunable in ``model``, or its width in the
            plan differs from the model's.
    """
    for name in plan.kept:
        layer = graph.check_prunable(name)
        if plan.widths[name] != layer.out_channels:
            raise FilterpruneError(
                f"plan does not fit the model: '{name}' has {layer.out_channels} filters, "
                f"the plan expects {plan.widths[name]}"
            )
    pruned = copy.deepcopy(model)
    modules = dict(pruned.named_modules())
    for name, kept in plan.kept.items():
        index = torch.tensor(kept, dtype=torch.long)
        layer = graph.layers[name]
        _prune_conv_out(modules[name], index)
        for norm in layer.norms:
            _prune_batchnorm(modules[norm], index)
        for consumer in layer.consumers:
            _prune_consumer_in(modules[consumer.name], consumer, index)
    return pruned


def _select(param: torch.Tensor | None, index: torch.Tensor, dim: int) -> None:
    if param is not None:
        param.data = param.data.index_select(dim, index.to(param.device)).clone()
        if param.grad is not None:
            param.grad = None


def _prune_conv_out(conv: nn.Conv2d, index: torch.Tensor) -> None:
    _select(conv.weight, index, 0)
    _select(conv.bias, index, 0)
    conv.out_channels = len(index)


def _prune_batchnorm(bn: nn.BatchNorm2d, index: torch.Tensor) -> None:
    for tensor in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
        _select(tensor, index, 0)
    bn.num_features = len(index)


def _prune_consumer_in(module: nn.Module, consumer: Consumer, index: torch.Tensor) -> None:
    if consumer.kind == "conv":
        _select(module.weight, index, 1)
        module.in_channels = len(index)
    else:
        f = consumer.features_per_channel
        features = (index[:, None] * f + torch.arange(f)).flatten()
        _select(module.weight, features, 1)
        module.in_features = len(features)
