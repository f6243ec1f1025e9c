"""Teaching the engine a layer of your own: how channels flow through it.

A registered layer class is a leaf of the trace (its forward is not entered) with one of four
channel flows:

- ``"follows"``: its output has its input's channels (a norm, an activation with per-channel
  parameters); the tensors in ``outputs`` are cut with its input's channels, like BatchNorm's.
- ``"produces"``: it reads its input's channels and writes channels of its own, like a conv (a
  prunable layer, scored by its first ``outputs`` tensor): ``inputs`` tensors are cut with the
  channels it reads, ``outputs`` tensors with the filters it keeps.
- ``"consumes"``: it reads its input's channels (``inputs`` tensors are cut with them) and writes
  something that is never pruned (a head).
- ``"blocks"``: the channels it reads and writes are never pruned (the reason names the layer).

Tensors are named as in ``module.named_parameters`` / ``named_buffers`` (own ones), each with the
dim that holds the channels. ``resize(module)``, if given, runs after the cuts to update the
layer's own counts (e.g. ``module.channels = module.weight.shape[0]``).

Example:
    >>> from torch import nn
    >>> class Scale(nn.Module):  # one learnt factor per channel
    ...     def __init__(self, c):
    ...         super().__init__()
    ...         self.factor = nn.Parameter(torch.ones(c, 1, 1))
    ...     def forward(self, x):
    ...         return x * self.factor
    >>> register_layer(Scale, "follows", outputs={"factor": 0})
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), Scale(8), nn.Conv2d(8, 4, 3))
    >>> import filterprune
    >>> filterprune.prune(net, torch.zeros(1, 3, 8, 8), ratio=0.5).model[1].factor.shape
    torch.Size([4, 1, 1])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from filterprune.errors import FilterpruneError

FLOWS = ("follows", "produces", "consumes", "blocks")


@dataclass(frozen=True)
class LayerRule:
    """How channels flow through a registered layer class (see the module docstring)."""

    flow: str
    inputs: Mapping[str, int] = field(default_factory=dict)
    outputs: Mapping[str, int] = field(default_factory=dict)
    resize: Callable[[nn.Module], None] | None = None

    def cut(self, module: nn.Module, index: torch.Tensor, side: str) -> None:
        """Keeps the entries ``index`` of the ``side`` (``"inputs"`` or ``"outputs"``) tensors
        of ``module``, then calls ``resize``."""
        tensors = dict((*module.named_parameters(recurse=False),
                        *module.named_buffers(recurse=False)))
        for name, dim in getattr(self, side).items():
            tensor = tensors[name]
            tensor.data = tensor.data.index_select(dim, index.to(tensor.device))  # a copy
            tensor.grad = None
        if self.resize is not None:
            self.resize(module)


_RULES: dict[type, LayerRule] = {}


def register_layer(
    cls: type[nn.Module],
    flow: str,
    *,
    inputs: Mapping[str, int] | None = None,
    outputs: Mapping[str, int] | None = None,
    resize: Callable[[nn.Module], None] | None = None,
) -> None:
    """Tells the engine how channels flow through layers of class ``cls`` (and subclasses).

    Args:
        cls: the layer class.
        flow: ``"follows"``, ``"produces"``, ``"consumes"`` or ``"blocks"``.
        inputs: own tensor name -> dim of the input channels it reads (``"produces"``,
            ``"consumes"``), e.g. ``{"weight": 1}``; with none given, the input is not cut and
            its channels are not pruned.
        outputs: own tensor name -> dim of the output channels (``"follows"``,
            ``"produces"``), e.g. ``{"weight": 0, "bias": 0}``.
        resize: called with the layer after its tensors are cut.

    Raises:
        FilterpruneError: an unknown flow, ``"produces"`` without ``outputs``, or tensor names
            given to ``"blocks"``.
    """
    if flow not in FLOWS:
        raise FilterpruneError(f"unknown channel flow '{flow}' (known: {', '.join(FLOWS)})")
    if flow == "produces" and not outputs:
        raise FilterpruneError("a layer that produces channels needs outputs={tensor: dim}")
    if flow == "blocks" and (inputs or outputs):
        raise FilterpruneError("a blocking layer has no tensors to cut")
    _RULES[cls] = LayerRule(flow, dict(inputs or {}), dict(outputs or {}), resize)


def rule_of(module: nn.Module) -> LayerRule | None:
    """The rule registered for the class of ``module`` (or its nearest base class), or None."""
    return next((_RULES[c] for c in type(module).__mro__ if c in _RULES), None)
