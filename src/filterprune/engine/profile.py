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

from dataclasses import asdict, dataclass

import torch
from torch import nn

from filterprune.engine.graph import as_tuple, eval_mode


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

    Example:
        >>> conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        >>> profile(conv, torch.zeros(1, 3, 4, 4)).macs  # 8 * 3 * 3 * 3 * 4 * 4
        3456
    """
    inputs = as_tuple(example_inputs)
    batch = inputs[0].shape[0]
    counted = {n: m for n, m in model.named_modules()
               if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))}
    shapes: dict[str, tuple[int, ...]] = {}
    macs: dict[str, int] = {}

    def record(name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            shapes.setdefault(name, tuple(output.shape))
            if isinstance(module, nn.Linear):
                positions = output.numel() // module.out_features
            elif getattr(module, "transposed", False):
                positions = args[0].numel() // module.in_channels
            else:
                positions = output.numel() // module.out_channels
            macs[name] = macs.get(name, 0) + module.weight.numel() * positions

        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in counted.items()]
    try:
        with eval_mode(model), torch.no_grad():
            model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    layers = []
    for name in shapes:  # hooks fire in forward order
        module = counted[name]
        layers.append(
            LayerProfile(
                name=name,
                type=type(module).__name__,
                weight_shape=tuple(module.weight.shape),
                output_shape=tuple(shapes[name][1:]),
                macs=macs[name] // batch,
                params=sum(p.numel() for p in module.parameters(recurse=False)),
            )
        )
    return Profile(
        macs=sum(layer.macs for layer in layers),
        params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        params_conv_linear=sum(
            p.numel() for m in counted.values() for p in m.parameters(recurse=False)
        ),
        layers=tuple(layers),
    )
