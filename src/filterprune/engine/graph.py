"""Channel dependencies of a model, found by tracing it with torch.fx.

A conv layer is *prunable* when every path from its output reaches, through channel-preserving
operations only (BatchNorm, activations, pooling, dropout, interpolation), either the input of
another conv or a flatten followed by a Linear. Removing filter j then means removing output
channel j of the conv, channel j of each BatchNorm on the way, and input channel j of every
consumer (for a Linear after a flatten: the H*W inputs that channel j was flattened into).
Li et al. 2017, §3.1. Outputs that reach a residual addition, a concatenation, the model output or
any other operation are reported as not prunable, with the reason.
"""

from __future__ import annotations

import contextlib
import math
import operator
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from filterprune.errors import FilterpruneError

_PASS_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
    nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.PReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d, nn.Dropout, nn.Dropout2d, nn.Identity, nn.Upsample,
)
_PASS_FUNCTIONS = {
    F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.gelu, F.silu, F.mish, F.hardswish, F.hardtanh,
    F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.dropout,
    F.dropout2d, F.interpolate, torch.relu, torch.sigmoid, torch.tanh,
}
_PASS_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone", "detach"}
# Shape queries read no channel values: ``x.view(x.size(0), -1)`` stays prunable.
_SHAPE_METHODS = {"size", "dim"}
# Element-wise ops that may sit between a flatten and the Linear that consumes it.
_FLAT_PASS_MODULES = (nn.Dropout, nn.Identity)


@dataclass(frozen=True)
class Consumer:
    """A layer that reads the output channels of a prunable conv.

    Attributes:
        name: qualified module name.
        kind: ``"conv"`` (input channels) or ``"linear"`` (input features after a flatten).
        features_per_channel: Linear inputs per channel (H*W of the flattened feature map);
            1 for a conv.
    """

    name: str
    kind: str
    features_per_channel: int = 1


@dataclass
class PrunableLayer:
    """A conv whose filters can be removed, with everything that must shrink with it.

    Attributes:
        name: qualified module name of the conv.
        out_channels: number of filters (C_out).
        norms: BatchNorm layers on its output path, pruned at the same channel indices.
        consumers: layers that read its feature maps, pruned on their input side.
        producer: the prunable conv whose feature maps this conv reads, if any (used by the greedy
            strategy, Li et al. 2017 §3.3).
    """

    name: str
    out_channels: int
    norms: list[str] = field(default_factory=list)
    consumers: list[Consumer] = field(default_factory=list)
    producer: str | None = None


@dataclass
class DependencyGraph:
    """Prunable convs in forward order, and the convs that cannot be pruned with the reason."""

    layers: dict[str, PrunableLayer]
    not_prunable: dict[str, str]

    def check_prunable(self, name: str) -> PrunableLayer:
        """Returns the layer, or raises FilterpruneError saying why ``name`` cannot be pruned."""
        if name in self.layers:
            return self.layers[name]
        if name in self.not_prunable:
            raise FilterpruneError(f"layer '{name}' cannot be pruned: {self.not_prunable[name]}")
        raise FilterpruneError(f"unknown layer '{name}': not a conv layer of the model")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Puts ``model`` in eval mode with gradients off; restores every module's flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        for m, training in flags:
            m.training = training


def as_tuple(example_inputs: torch.Tensor | tuple) -> tuple:
    """Example inputs as a tuple of positional arguments."""
    return example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)


def trace(model: nn.Module, example_inputs: torch.Tensor | tuple) -> DependencyGraph:
    """Finds the prunable convs of ``model`` and their dependent layers.

    Args:
        model: the network; it is not modified (BatchNorm statistics included).
        example_inputs: a tensor (e.g. shape (1, C, H, W)) or tuple of tensors accepted by
            ``model(*example_inputs)``; used to learn feature-map sizes at flatten points.

    Returns:
        The dependency graph, layers in forward (topological) order.

    Raises:
        FilterpruneError: if torch.fx cannot trace the model.
    """
    try:
        gm = fx.symbolic_trace(model)
    except Exception as e:  # fx raises many types (TraceError, TypeError, NotImplementedError)
        first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FilterpruneError(f"torch.fx cannot trace {type(model).__name__}: {first_line}") from e
    with eval_mode(model):
        ShapeProp(gm).propagate(*as_tuple(example_inputs))
    modules = dict(gm.named_modules())
    call_count: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            call_count[node.target] = call_count.get(node.target, 0) + 1

    layers: dict[str, PrunableLayer] = {}
    not_prunable: dict[str, str] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.Conv2d):
            continue
        conv = modules[node.target]
        if call_count[node.target] > 1:
            not_prunable[node.target] = "the module is called more than once"
        elif conv.groups != 1:
            not_prunable[node.target] = f"grouped conv (groups={conv.groups}) is not supported yet"
        else:
            layer = PrunableLayer(node.target, conv.out_channels)
            reason = _follow(node, modules, call_count, layer)
            if reason is None:
                layers[node.target] = layer
            else:
                not_prunable[node.target] = reason
    for layer in layers.values():
        for consumer in layer.consumers:
            if consumer.kind == "conv" and consumer.name in layers:
                layers[consumer.name].producer = layer.name
    return DependencyGraph(layers, not_prunable)


def _follow(
    start: fx.Node, modules: dict[str, nn.Module], call_count: dict[str, int], layer: PrunableLayer
) -> str | None:
    """Walks the users of ``start``; fills ``layer``; returns why it is not prunable, or None."""
    stack = [(user, None) for user in start.users]
    seen: set[fx.Node] = set()
    while stack:
        node, flat_features = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        module = modules.get(node.target) if node.op == "call_module" else None
        if _is_shape_query(node):
            continue
        if flat_features is not None:  # after a flatten: only a Linear may consume the features
            if isinstance(module, nn.Linear):
                layer.consumers.append(Consumer(node.target, "linear", flat_features))
                continue
            if not isinstance(module, _FLAT_PASS_MODULES):
                return f"its flattened output reaches '{node.name}', not a Linear layer"
        elif isinstance(module, nn.Conv2d):
            if module.groups != 1 or call_count[node.target] > 1:
                return f"its output is read by '{node.target}', a grouped or shared conv"
            layer.consumers.append(Consumer(node.target, "conv"))
            continue
        elif isinstance(module, nn.BatchNorm2d):
            if call_count[node.target] > 1:
                return f"its BatchNorm '{node.target}' is shared"
            layer.norms.append(node.target)
        elif _is_flatten(node, module):
            shape = node.args[0].meta["tensor_meta"].shape
            flat_features = math.prod(shape[2:])
        elif not _passes_channels(node, module):
            return f"its output reaches '{_describe(node)}', which the engine cannot prune through"
        stack.extend((user, flat_features) for user in node.users)
    return None


def _is_shape_query(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in _SHAPE_METHODS
    return node.op == "call_function" and node.target is getattr and node.args[1] == "shape"


def _passes_channels(node: fx.Node, module: nn.Module | None) -> bool:
    if node.op == "call_module":
        return isinstance(module, _PASS_MODULES)
    if node.op == "call_function":
        return node.target in _PASS_FUNCTIONS
    if node.op == "call_method":
        return node.target in _PASS_METHODS
    return False


def _is_flatten(node: fx.Node, module: nn.Module | None) -> bool:
    """True for flattens that keep the batch dimension and merge (C, H, W) in C-major order."""
    if isinstance(module, nn.Flatten):
        return module.start_dim == 1 and module.end_dim == -1
    if node.op == "call_function" and node.target is torch.flatten:
        return node.args[1:2] == (1,) or node.kwargs.get("start_dim") == 1
    if node.op == "call_method" and node.target in ("view", "reshape", "flatten"):
        out = node.meta.get("tensor_meta")
        src = node.args[0].meta.get("tensor_meta")
        return out is not None and src is not None and len(out.shape) == 2 and (
            out.shape[0] == src.shape[0]
        )
    return False


def _describe(node: fx.Node) -> str:
    if node.op == "output":
        return "the model output"
    if node.target in (operator.add, torch.add) or node.target in ("add", "add_"):
        return f"{node.name} (a residual addition)"
    if node.target is torch.cat:
        return f"{node.name} (a concatenation)"
    return node.name
