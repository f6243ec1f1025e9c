"""What the dependency builder knows of each operation: how channels flow through it.

Operations are known by object (torch functions, ``nn`` layer types, Tensor method names) or, for
other libraries' functions that torch.fx keeps as leaf calls (``torchvision.ops.stochastic_depth``
is ``torch.fx.wrap``-ped), by qualified name, so that the engine imports neither torchvision nor
timm. Dropout, DropPath and stochastic depth keep the channels in eval and in training (they scale
or zero whole samples or elements, never mix channels).
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

# Layers and functions whose output has the channels of their (first) input, element by element
# (wherever the channels are: these also pass channels-last tensors).
ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.LogSigmoid,
    nn.Tanhshrink, nn.Softsign, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.AlphaDropout, nn.FeatureAlphaDropout, nn.Identity,
)
# Layers and functions that keep the channels at dim 1 and work on the spatial dims after it.
SPATIAL_MODULES = (
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d,
    nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, nn.ZeroPad2d,
    nn.ReflectionPad2d, nn.ReplicationPad2d, nn.ConstantPad2d,
)
PASS_MODULES = ELEMENTWISE_MODULES + SPATIAL_MODULES
SPATIAL_FUNCTIONS = {
    F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.lp_pool2d,
    F.interpolate, F.upsample, torch.max_pool2d,
}
PASS_FUNCTIONS = SPATIAL_FUNCTIONS | {
    F.relu, F.relu_, F.relu6, F.leaky_relu, F.elu, F.celu, F.selu, F.gelu, F.silu, F.mish,
    F.hardswish, F.hardtanh, F.hardsigmoid, F.sigmoid, F.tanh, F.softplus, F.logsigmoid,
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout,
    torch.relu, torch.relu_, torch.sigmoid, torch.tanh, torch.clamp,
    torch.clip, torch.abs, torch.exp, torch.sqrt, torch.rsqrt, torch.square, torch.neg,
    torch.erf,
}
PASS_METHODS = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clip", "clip_",
    "clamp_min", "clamp_min_", "clamp_max", "clamp_max_", "abs", "exp", "sqrt", "rsqrt",
    "square", "neg", "erf", "contiguous", "clone", "detach", "float", "half", "bfloat16",
    "double", "to", "type_as", "requires_grad_",
}
# Other libraries' functions, by ``module.name``.
PASS_NAMES = {
    "torchvision.ops.stochastic_depth.stochastic_depth",
    "timm.layers.drop.drop_path", "timm.layers.drop.drop_block_2d",
    "timm.layers.drop.drop_block_fast_2d",
}
RESHAPES = {torch.flatten, torch.squeeze, torch.unsqueeze, torch.reshape}
RESHAPE_METHODS = {"view", "reshape", "flatten", "squeeze", "unsqueeze"}
REDUCTIONS = {torch.mean, torch.sum, torch.amax, torch.amin}
REDUCTION_METHODS = {"mean", "sum", "amax", "amin"}
ADD = {operator.add, operator.iadd, operator.sub, operator.isub, torch.add, torch.sub,
       "add", "add_", "sub", "sub_"}
MUL = {operator.mul, operator.imul, operator.truediv, operator.itruediv, torch.mul, torch.div,
       "mul", "mul_", "div", "div_"}
SPLITS = {torch.split, torch.chunk, torch.tensor_split, torch.unbind, "split", "chunk",
          "tensor_split", "unbind", "split_with_sizes"}
# Per-channel normalisation (statistics per channel): exact followers of their input.
CHANNEL_NORMS = {F.batch_norm, F.instance_norm, torch.batch_norm, torch.instance_norm}
# Normalisation over channels: removing channels changes the statistics of the others.
CROSS_CHANNEL_NORMS = {F.layer_norm, F.group_norm, torch.layer_norm, torch.group_norm}
CONVS = {F.conv2d, torch.conv2d}
# Moving the channels to another dim (channels-last and back, as in ConvNeXt).
PERMUTES = {torch.permute, "permute"}
TRANSPOSES = {torch.transpose, torch.swapaxes, torch.swapdims, "transpose", "swapaxes",
              "swapdims"}
STACKS = {torch.stack}
SOFTMAXES = {F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, "softmax",
             "log_softmax"}
MATMULS = {operator.matmul, torch.matmul, torch.bmm, "matmul", "bmm"}
EXPANDS = {torch.broadcast_to, "broadcast_to", "expand", "expand_as"}
# Arithmetic on sizes read from shapes.
ARITHMETIC = {operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv}
# Operations that read the channels at whatever dim they are, and may move them to another.
DIM_OPS = RESHAPES | RESHAPE_METHODS | REDUCTIONS | REDUCTION_METHODS | PERMUTES | TRANSPOSES \
    | STACKS | SOFTMAXES | MATMULS | EXPANDS
CONCATS = {torch.cat, torch.concat, torch.concatenate}
# Tensors made from another's shape, dtype or device, not from its values.
CREATIONS = {torch.zeros_like, torch.ones_like, torch.empty_like, torch.rand_like,
             torch.randn_like, torch.full_like, "new_empty", "new_zeros", "new_ones",
             "new_full", "new_tensor"}


def qualified_name(target: object) -> str:
    """``module.name`` of a function (empty for method names and objects without one)."""
    module, name = getattr(target, "__module__", None), getattr(target, "__name__", None)
    return f"{module}.{name}" if module and name else ""


def is_pass(target: object) -> bool:
    """Whether the call keeps the layout of its first argument."""
    if isinstance(target, str):
        return target in PASS_METHODS
    return target in PASS_FUNCTIONS or qualified_name(target) in PASS_NAMES


def op_name(target: object) -> str:
    """A readable name of a call target: ``torch.split``, ``Tensor.chunk``, ``operator.add``."""
    if isinstance(target, str):
        return f"Tensor.{target}"
    name = getattr(target, "__name__", str(target))
    module = (getattr(target, "__module__", None) or "").lstrip("_")  # _operator: operator
    if module.startswith("torch"):
        module = "F" if module.startswith("torch.nn.functional") else "torch"
    return f"{module}.{name}" if module else name
