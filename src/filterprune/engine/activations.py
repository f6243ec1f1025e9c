"""Activation-based filter criteria (Li et al. 2017, §4.5, Fig. 9).

The feature map j of a conv, for image i, is its output channel j BEFORE BatchNorm and ReLU,
x_{i,j} of shape (H, W). Over N images the paper defines, for each feature map j:

- ``mean-mean``: (1/N) sum_i mean(x_{i,j})
- ``mean-std``:  (1/N) sum_i std(x_{i,j})   (population std over the H*W positions)
- ``mean-l1``:   (1/N) sum_i ||x_{i,j}||_1
- ``mean-l2``:   (1/N) sum_i ||x_{i,j}||_2
- ``var-l2``:    var({||x_{i,j}||_2 : i = 1..N})   (population variance over the images)

Like the weight criteria, a higher score means a more important filter; the plan keeps the
highest (``select_filters(..., scores=...)``). The engine stays data-free: the caller passes the
input batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from filterprune.engine.modes import eval_mode
from filterprune.errors import FilterpruneError

ACTIVATION_CRITERIA = ("mean-mean", "mean-std", "mean-l1", "mean-l2", "var-l2")


class _Sums:
    """Running float64 sums over images of per-channel statistics of one conv's outputs."""

    def __init__(self) -> None:
        self.count = 0
        self.sums: dict[str, torch.Tensor] = {}

    def add(self, output: torch.Tensor) -> None:
        self.count += output.shape[0]
        maps = output.detach().double().flatten(2)  # (B, C, H*W)
        l2 = maps.norm(dim=2)
        stats = {
            "mean": maps.mean(dim=2), "std": maps.std(dim=2, correction=0),
            "l1": maps.abs().sum(dim=2), "l2": l2, "l2_squared": l2.square(),
        }
        for key, value in stats.items():
            total = value.sum(dim=0)
            self.sums[key] = self.sums[key] + total if key in self.sums else total

    def scores(self) -> dict[str, torch.Tensor]:
        mean = {key: total / self.count for key, total in self.sums.items()}
        return {
            "mean-mean": mean["mean"], "mean-std": mean["std"], "mean-l1": mean["l1"],
            "mean-l2": mean["l2"],
            "var-l2": (mean["l2_squared"] - mean["l2"].square()).clamp_min(0),
        }


def activation_scores(
    model: nn.Module, batches: Iterable[torch.Tensor], layers: Sequence[str]
) -> dict[str, dict[str, torch.Tensor]]:
    """Scores the filters of ``layers`` by the statistics of their feature maps (§4.5, Fig. 9).

    Forward hooks on the convs record their outputs (before any BatchNorm or ReLU that follows)
    while ``model`` runs in eval mode on every batch; the model is not modified.

    Args:
        model: the network.
        batches: input tensors (B, C, H, W) that ``model`` accepts (e.g. N training images).
        layers: qualified names of the convs to score.

    Returns:
        criterion name (``ACTIVATION_CRITERIA``) -> layer name -> scores (C_out,), float32.

    Raises:
        FilterpruneError: a name that is not a conv of ``model``, or no input images.
    """
    modules = dict(model.named_modules())
    for name in layers:
        if not isinstance(modules.get(name), nn.Conv2d):
            raise FilterpruneError(f"'{name}' is not a conv layer of the model")
    sums = {name: _Sums() for name in layers}

    def hook(name: str):
        def record(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            sums[name].add(output)
        return record

    handles = [modules[name].register_forward_hook(hook(name)) for name in layers]
    try:
        with eval_mode(model), torch.inference_mode():
            for inputs in batches:
                model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    if any(s.count == 0 for s in sums.values()):
        raise FilterpruneError("activation criteria need at least one input image")
    per_layer = {name: s.scores() for name, s in sums.items()}
    return {
        criterion: {name: per_layer[name][criterion].float() for name in layers}
        for criterion in ACTIVATION_CRITERIA
    }
