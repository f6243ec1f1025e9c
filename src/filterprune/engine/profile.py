"""MACs and parameter counts, as Li et al. 2017 count them (Table 1).

MACs are the multiply-accumulates of conv and linear layers only: for a conv,
C_out * (C_in / groups) * kH * kW * H_out * W_out (Conv1d and Conv3d alike, with one or three
kernel and output sizes; a transposed conv as torch counts it, per input position); for a
linear, in_features * out_features.
BatchNorm, activations, pooling and biases are not counted. FLOPs = 2 x MACs. They are counted
from each call's tensor shapes (weight entries x output positions; for a transposed conv, input
positions), as torch's FlopCounterMode counts them (it gives the same numbers, 5-10x slower:
it intercepts every op), over every call, divided by the batch size of the example input, so
they are per image.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from filterprune.engine.modes import as_tuple, eval_mode
from filterprune.errors import FilterpruneError

#: The layers whose MACs are counted.
COUNTED = (nn.modules.conv._ConvNd, nn.Linear)


@dataclass(frozen=True)
class LayerProfile:
    """One conv or linear layer: output shape per image ((C, L), (C, H, W), (C, D, H, W) or
    (F,)), MACs and parameters."""

    name: str
    type: str
    weight_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    macs: int
    params: int


@dataclass(frozen=True)
class Profile:
    """Model cost per image.

    Attributes:
        macs: multiply-accumulates of conv and linear layers.
        params: every learnable parameter (BatchNorm included), what users call "params".
        params_conv_linear: weights and biases of conv and linear layers only: the convention
            of Li et al. 2017, Table 1 (VGG-16-pruned-A: 5.39E6, printed 5.4E6).
        layers: per conv/linear layer, in forward order.
    """

    macs: int
    params: int
    params_conv_linear: int
    layers: tuple[LayerProfile, ...]

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def to_dict(self) -> dict:
        return {**asdict(self), "flops": self.flops}


def profile(model: nn.Module, example_inputs: torch.Tensor | tuple) -> Profile:
    """Counts MACs and parameters of ``model`` on ``example_inputs``.

    Args:
        model: the network; not modified (run in eval mode, without gradients).
        example_inputs: a tensor (B, C, H, W) or tuple of positional inputs; counts are divided
            by B.

    Returns:
        The profile, per image.

    Raises:
        FilterpruneError: a conv or Linear module returned something else than a tensor.

    Example:
        >>> conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        >>> profile(conv, torch.zeros(1, 3, 4, 4)).macs  # 8 * 3 * 3 * 3 * 4 * 4
        3456
    """
    inputs = as_tuple(example_inputs)
    with MacCounter(model) as counter, eval_mode(model):
        model(*inputs)
    if counter.uncounted:
        raise FilterpruneError(f"cannot count the MACs of '{counter.uncounted[0]}': its input "
                               "or output is not a tensor")
    return counter.profile(inputs[0].shape[0])


class MacCounter:
    """Counts the MACs of the conv and Linear modules of a model called while it is active (a
    forward hook on each), so that a pass made for another reason (the tracer's shape pass)
    also gives the profile.

    Example:
        >>> conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        >>> with MacCounter(conv) as counter:
        ...     _ = conv(torch.zeros(2, 3, 4, 4))
        >>> counter.profile(batch=2).macs
        3456
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.counted = {n: m for n, m in model.named_modules() if isinstance(m, COUNTED)}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.macs: dict[str, int] = {}
        self.uncounted: list[str] = []  # modules called with a non-tensor input or output
        self.hooks: list = []

    def __enter__(self) -> MacCounter:
        """Starts counting from zero."""
        self.shapes.clear()
        self.macs.clear()
        self.uncounted.clear()
        self.hooks = [m.register_forward_hook(self._hook(n)) for n, m in self.counted.items()]
        return self

    def __exit__(self, *exc: object) -> None:
        for hook in self.hooks:
            hook.remove()

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            self.add(name, tuple(output.shape) if isinstance(output, torch.Tensor) else None,
                     args[0].numel() if args and isinstance(args[0], torch.Tensor) else None)

        return hook

    def add(self, name: str, output_shape: tuple[int, ...] | None,
            input_numel: int | None) -> None:
        """Counts one call of module ``name`` from the shape of its output and the number of
        entries of its first input (None where they are not tensors: the call is listed in
        ``uncounted`` instead)."""
        module = self.counted[name]
        transposed = getattr(module, "transposed", False)
        if output_shape is None or (transposed and input_numel is None):
            self.uncounted.append(name)
            return
        self.shapes.setdefault(name, output_shape)
        if isinstance(module, nn.Linear):
            positions = math.prod(output_shape) // module.out_features
        elif transposed:
            positions = input_numel // module.in_channels
        else:
            positions = math.prod(output_shape) // module.out_channels
        self.macs[name] = self.macs.get(name, 0) + module.weight.numel() * positions

    def profile(self, batch: int) -> Profile:
        """The profile of the calls counted, per image of a batch of ``batch``."""
        layers = []
        for name in self.shapes:  # hooks fire in forward order
            module = self.counted[name]
            layers.append(
                LayerProfile(
                    name=name,
                    type=type(module).__name__,
                    weight_shape=tuple(module.weight.shape),
                    output_shape=tuple(self.shapes[name][1:]),
                    macs=self.macs[name] // batch,
                    params=sum(p.numel() for p in module.parameters(recurse=False)),
                )
            )
        return Profile(
            macs=sum(layer.macs for layer in layers),
            params=sum(p.numel() for p in self.model.parameters() if p.requires_grad),
            params_conv_linear=sum(
                p.numel() for m in self.counted.values() for p in m.parameters(recurse=False)
            ),
            layers=tuple(layers),
        )
