"""Channel dependencies of a model, found by tracing it with torch.fx (or, where fx cannot trace
it, by recording one forward pass op by op).

Every feature map of the traced model gets a *channel layout*: the channel groups its channels
come from, in order (one group for a conv output; several after a concatenation). A
:class:`ChannelGroup` is a set of channels that must be pruned at the same indices:

- a conv (groups=1) or Linear starts a group: its output channels (the group's *members*);
- BatchNorm, activations, pooling, dropout, interpolation, spatial padding and slicing, view /
  flatten and reductions over H, W keep the layout (flatten multiplies the features per channel);
- a depthwise conv (groups = in = out channels) and a BatchNorm are *followers*: their
  per-channel weights are pruned with the indices of their input's group;
- element-wise addition (a residual shortcut: the block output and the shortcut share channels)
  and multiplication (a squeeze-and-excitation gate computed from the same channels) join the
  groups of their operands, so a group can have several members (e.g. every second conv of a
  ResNet stage, the stem conv and the 1x1 projection shortcut);
- a concatenation along channels lays its inputs' groups side by side (offsets into the
  consumer's input channels); a layout of k copies of one group's C channels joined with one
  layer's k * C channels (GhostNet: ``cat([x, depthwise(x)])`` added to a conv shortcut) makes
  that layer a member whose filter ``i`` is channel ``i % C`` (``ChannelGroup.tiles``);
- a split of one group's channels into k equal parts (Res2Net's ``torch.split(x, self.width,
  1)``, ``chunk``) makes each part a copy of a new group's channels (the same tiles): every
  part keeps the same channels, and surgery rewrites the one int attribute of the module that
  holds the part size (``DependencyGraph.split_sizes``); other splits and slices along the
  channels block the channels they cut;
- a conv or Linear reading a layout is a *consumer*: its input channels (for a Linear after a
  flatten, the H*W input features of each channel) are pruned;
- ``permute`` moves the channels to another dim (ConvNeXt's channels-last blocks): there a Linear
  on the last dim reads and writes channels like a pointwise conv (a prunable layer),
  element-wise operations keep them, a parameter with one value per channel (a layer scale
  ``gamma * x``) is a follower, and LayerNorm over them blocks them.

A grouped conv (1 < groups < in_channels) reads its input and writes its output in ``groups``
equal runs of channels: a group it reads or writes gets ``chunks`` equal runs that must keep equal
counts (its input weights are then gathered per group: each conv group keeps its own kept
channels). A group is *blocked* (never pruned) when its channels reach the model input or output,
a grouped conv whose groups do not line up with them, a channel zero-padding (option-A
shortcut), an ignored module or an operation the engine does not know; the reason names the
module or operation. Li et al. 2017, §3.1 (what is removed)
and §3.3 (residual networks: ``residual="inner"`` prunes only groups with a single member, the
paper's CIFAR scheme; ``residual="coupled"`` also prunes groups joined by shortcuts or gates).
"""

from __future__ import annotations

import fnmatch
import math
import operator
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import TensorMetadata

from filterprune.engine import ops
from filterprune.engine.graph import (
    RESIDUAL_POLICIES,
    TRACERS,
    ChannelGroup,
    Consumer,
    DependencyGraph,
    Layout,
    Segment,
)
from filterprune.engine.tracers import trace_graph
from filterprune.errors import FilterpruneError

_PER_CHANNEL_NORMS = (
    nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
)

def trace(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple,
    *,
    residual: str = "inner",
    ignore: Sequence[str] = (),
    tracer: str = "auto",
) -> DependencyGraph:
    """Finds the channel groups of ``model`` and its prunable convs.

    Args:
        model: the network; it is not modified (BatchNorm statistics included).
        example_inputs: a tensor (e.g. shape (1, C, H, W)) or tuple of tensors accepted by
            ``model(*example_inputs)``; used to learn feature-map sizes at flatten points.
        residual: ``"inner"``: only groups with one member are prunable (the first conv of a
            CIFAR ResNet block; Li et al. 2017, §3.3); ``"coupled"``: groups joined by residual
            additions or gates are prunable too, all members at the same indices (§3.3,
            ResNet-34 pruned-C).
        ignore: names or glob patterns of modules the engine must leave untouched: the
            tracer does not enter them and the channels they read and write are not pruned.
        tracer: ``"fx"`` (torch.fx symbolic tracing), ``"record"`` (one eager forward pass on
            ``example_inputs`` recorded op by op: works with data-dependent control flow, and
            sees the path these inputs take) or ``"auto"`` (fx, else record).

    Returns:
        The dependency graph, layers in forward (topological) order.

    Raises:
        FilterpruneError: an unknown residual policy or tracer, an ``ignore`` entry that names
            no module, a model torch.fx cannot trace (with ``tracer="fx"``), or a model that
            fails on ``example_inputs``.
    """
    if residual not in RESIDUAL_POLICIES:
        raise FilterpruneError(
            f"unknown residual policy '{residual}' (known: {', '.join(RESIDUAL_POLICIES)})"
        )
    if tracer not in TRACERS:
        raise FilterpruneError(f"unknown tracer '{tracer}' (known: {', '.join(TRACERS)})")
    names = [name for name, _ in model.named_modules()]
    for key in ignore:
        if not any(fnmatch.fnmatchcase(name, key) for name in names):
            raise FilterpruneError(f"unknown layer or pattern '{key}' in ignore: no such module")
    graphs, train_failure = trace_graph(model, example_inputs, tuple(ignore), tracer)
    builder = _Builder(dict(model.named_modules()), tuple(ignore))
    for graph in graphs:  # eval mode, then train mode: the same layers share their channels
        for node in graph.nodes:
            builder.visit(node)
    convs = [name for name in names
             if isinstance(model.get_submodule(name), nn.modules.conv._ConvNd)]
    not_called = "it is not called in the model's forward" + (
        f" in eval mode, and running it in train mode failed: {train_failure}"
        if train_failure else ""
    )
    return builder.finish(residual, convs, not_called)


class _Builder:
    """Walks an fx graph in order, giving each node's output a channel layout.

    Channel spaces are kept in a union-find; a space is a set of channels created by one layer
    (or operation). Layouts are tuples of (space, channels, features per channel).
    """

    def __init__(self, modules: dict[str, nn.Module], ignore: tuple[str, ...]) -> None:
        self.modules = modules
        self.ignore = ignore
        self.parent: list[int] = []
        self.members: list[list[str]] = []
        self.blocked: list[str | None] = []
        self.coupling: list[str | None] = []
        self.chunks: list[int] = []
        self.widths: list[int] = []  # channels of each space
        self.layouts: dict[fx.Node, tuple] = {}
        self.uses: dict[tuple[str, str], tuple] = {}  # (module, "input" | "follower") -> layout
        self.outputs: dict[str, int] = {}  # member module -> its space (shared calls reuse it)
        self.convs: dict[str, str | None] = {}  # conv name -> reason it is not a member, or None
        self.pieces: dict[fx.Node, list] = {}  # split node -> layout of each piece
        self.split_sizes: list[tuple[str, str, int]] = []  # (module, attribute, piece space)
        self.dims: dict[fx.Node, int] = {}  # node -> dim of its channels, where not 1
        self.dim = 1  # dim of the channels of the node being visited

    # --- union-find over channel spaces ---

    def new_space(self, width: int, member: str | None = None, blocked: str | None = None) -> int:
        self.widths.append(width)
        self.parent.append(len(self.parent))
        self.members.append([member] if member else [])
        self.blocked.append(blocked)
        self.coupling.append(None)
        self.chunks.append(1)
        return len(self.parent) - 1

    def find(self, space: int) -> int:
        while self.parent[space] != space:
            self.parent[space] = self.parent[self.parent[space]]
            space = self.parent[space]
        return space

    def join(self, a: tuple, b: tuple, reason: str) -> None:
        """Joins two layouts segment by segment, or one segment with k copies of one space
        (its channels repeat the space's: tiles); blocks both if they do not line up."""
        if [s[1:] for s in a] != [s[1:] for s in b]:
            copies = self.copies(a, b) or self.copies(b, a)
            if copies is None:
                self.block(a + b, f"{reason}, with channels of another layout")
                return
            a, b = copies
        for (x, *_), (y, *_) in zip(a, b, strict=True):
            x, y = self.find(x), self.find(y)
            if x != y:
                self.coupling[x] = self.coupling[x] or reason
                self.coupling[y] = self.coupling[y] or reason
                self.chunks[min(x, y)] = math.lcm(self.chunks[x], self.chunks[y])
                self.parent[max(x, y)] = min(x, y)

    def copies(self, one: tuple, many: tuple) -> tuple[tuple, tuple] | None:
        """``(one, many[:1])`` if ``one`` is a single segment and ``many`` k copies of one
        space's segment, k * its channels in all (the tiles of ``ChannelGroup``), else None."""
        if len(one) != 1 or len(many) < 2 or len({(self.find(s), *r) for s, *r in many}) > 1:
            return None
        (_, channels, f), (_, part, g) = one[0], many[0]
        return (one, many[:1]) if f == g and channels == part * len(many) else None

    def block(self, layout: tuple, reason: str) -> None:
        for space, *_ in layout:
            root = self.find(space)
            self.blocked[root] = self.blocked[root] or reason

    # --- nodes ---

    def visit(self, node: fx.Node) -> None:
        shape = _shape(node)
        inputs = [self.layouts[n] for n in node.all_input_nodes if n in self.layouts]
        first = node.args[0] if node.args else node.kwargs.get("input")
        dims = [self.dims.get(n, 1) for n in node.all_input_nodes if n in self.layouts]
        self.dim = self.dims.get(first, 1) if first in self.layouts else max(dims, default=1)
        if node.op == "placeholder":
            layout = self.fresh(shape, "its channels are those of the model input")
        elif node.op == "output":
            for x in inputs:
                self.block(x, "its channels reach the model output")
            return
        elif node.op == "get_attr" or (node.op != "call_module" and not _has_tensors(node)):
            return  # parameters, and shape, dtype or device queries: no channels flow
        elif node.target in ops.PERMUTES or set(dims) - {1}:
            layout = self.visit_channels_last(node, shape)
        elif node.op == "call_module":
            layout = self.visit_module(node, shape)
        elif node.target in ops.SPLITS:
            self.visit_split(node)
            return
        else:
            layout = self.visit_function(node, shape)
        if layout is None:
            reason = f"its channels reach {self.describe(node)}, which the engine cannot " \
                     "prune through"
            for x in inputs:
                self.block(x, reason)
            layout = self.fresh(shape, reason)
        if layout is not None:
            self.layouts[node] = layout
            if self.dim != 1:
                self.dims[node] = self.dim

    def describe(self, node: fx.Node) -> str:
        """The node in the user's terms: the module, or the operation and the module calling it."""
        if node.op == "call_module":
            return f"'{node.target}' ({type(self.modules[node.target]).__name__})"
        return f"{ops.op_name(node.target)} {self.where(node)}"

    def where(self, node: fx.Node) -> str:
        """``in 'layer1.0' (BasicBlock)``: the innermost module whose forward made the node."""
        scope = _scope(node)
        if scope and scope in self.modules:
            return f"in '{scope}' ({type(self.modules[scope]).__name__})"
        return "in the model's forward"

    def fresh(self, shape: tuple | None, reason: str) -> tuple | None:
        if shape is None or len(shape) <= max(self.dim, 1):
            return None
        return ((self.new_space(shape[self.dim], blocked=reason), shape[self.dim], 1),)

    def stop(self, source: tuple, shape: tuple | None, reason: str) -> tuple | None:
        """Blocks ``source`` with ``reason``; the output gets new blocked channels."""
        self.block(source, reason)
        return self.fresh(shape, reason)

    def use(self, name: str, role: str, layout: tuple) -> None:
        """Records that module ``name`` is pruned by ``layout``; a shared module joins layouts."""
        previous = self.uses.setdefault((name, role), layout)
        if previous is not layout:
            self.join(previous, layout, f"module '{name}' is applied to other feature maps too")

    def visit_channels_last(self, node: fx.Node, shape: tuple | None) -> tuple | None:
        """A node reading channels at another dim than 1 (ConvNeXt's channels-last MLP): a
        permutation moves them, a Linear on the last dim reads and writes them like a pointwise
        conv, element-wise operations and layer scales keep them, LayerNorm over them blocks
        them; anything else is not understood (None)."""
        source, _ = self.source(node)
        if shape is not None and (node.target in ops.ADD or node.target in ops.MUL):
            return self.elementwise(node, shape)
        if source is None or shape is None:
            return None
        if node.op == "call_module":
            name, module = node.target, self.modules[node.target]
            if isinstance(module, nn.modules.conv._ConvNd):
                self.convs.setdefault(name, f"its input has its channels at dim {self.dim}")
            if isinstance(module, nn.Linear) and self.dim == len(shape) - 1 and len(shape) > 2:
                self.convs.setdefault(name, None)
                self.use(name, "input", source)
                return self.member(name, module.out_features)
            if isinstance(module, nn.LayerNorm):
                return self.stop(source, shape, _cross_norm(self.describe(node)))
            return source if isinstance(module, ops.ELEMENTWISE_MODULES) else None
        target = node.target
        if target in ops.PERMUTES:
            order = node.args[1:] if node.op == "call_method" else (_arg(node, 1, "dims"),)
            order = order[0] if len(order) == 1 and isinstance(order[0], list | tuple) else order
            self.dim = [d % len(shape) for d in order].index(self.dim)
            return source if self.dim else None
        if target in ops.CROSS_CHANNEL_NORMS:
            return self.stop(source, shape, _cross_norm(self.describe(node)))
        return source if ops.is_pass(target) and target not in ops.SPATIAL_FUNCTIONS else None

    def visit_module(self, node: fx.Node, shape: tuple | None) -> tuple | None:
        name, module = node.target, self.modules[node.target]
        source, src_shape = self.source(node)
        if any(fnmatch.fnmatchcase(name, key) for key in self.ignore):
            self.convs.setdefault(name, "it is ignored")
            for x in node.all_input_nodes:
                self.block(self.layouts.get(x, ()), f"its channels reach ignored module '{name}'")
            return self.fresh(shape, f"its channels come from ignored module '{name}'")
        if isinstance(module, nn.Conv2d):
            return self.visit_conv(name, module, source, shape)
        if isinstance(module, nn.modules.conv._ConvNd):  # Conv1d, Conv3d, transposed convs
            self.convs.setdefault(name, f"'{name}' is a {type(module).__name__}: the engine "
                                  "prunes the filters of Conv2d layers only")
            return None
        if isinstance(module, nn.Linear) and source is not None and len(src_shape) == 2:
            self.use(name, "input", source)
            return self.member(name, module.out_features)
        if isinstance(module, _PER_CHANNEL_NORMS) or (
            isinstance(module, nn.PReLU) and module.num_parameters > 1
        ):
            if source is not None:
                self.use(name, "follower", source)
            return source
        if isinstance(module, nn.GroupNorm | nn.LayerNorm | nn.LocalResponseNorm):
            return None if source is None else self.stop(source, shape, _cross_norm(
                f"'{name}' ({type(module).__name__})"))
        if isinstance(module, nn.Flatten | nn.Unflatten):
            return _reshaped(source, src_shape, shape)
        if isinstance(module, ops.PASS_MODULES):
            return source
        return None

    def source(self, node: fx.Node) -> tuple[tuple | None, tuple | None]:
        """Layout and shape of the node's first argument (None, None if it has none)."""
        first = node.args[0] if node.args else node.kwargs.get("input")
        if not isinstance(first, fx.Node) or first not in self.layouts:
            return None, None
        return self.layouts[first], _shape(first)

    def visit_conv(
        self, name: str, conv: nn.Conv2d, source: tuple | None, shape: tuple | None
    ) -> tuple | None:
        if source is None or any(f != 1 for *_, f in source):
            return None
        if conv.groups == 1:
            self.convs.setdefault(name, None)
            self.use(name, "input", source)
            return self.member(name, conv.out_channels)
        if conv.groups == conv.in_channels == conv.out_channels:
            self.convs.setdefault(name, "a depthwise conv: its channels follow its input's group")
            self.use(name, "follower", source)
            return source
        per_group = conv.in_channels // conv.groups
        if any(channels % per_group for _, channels, _ in source):
            reason = f"its channels reach grouped conv '{name}' (groups={conv.groups}) across " \
                     "its groups' boundaries"
            self.convs.setdefault(name, reason)
            return self.stop(source, shape, reason)
        for space, channels, _ in source:
            self.split(space, channels // per_group)
        self.convs.setdefault(name, None)
        self.use(name, "input", source)
        output = self.member(name, conv.out_channels)
        self.split(output[0][0], conv.groups)
        return output

    def split(self, space: int, chunks: int) -> None:
        """Requires equal kept counts in each of ``chunks`` equal runs of a space's channels."""
        root = self.find(space)
        self.chunks[root] = math.lcm(self.chunks[root], chunks)

    def member(self, name: str, channels: int) -> tuple:
        if name not in self.outputs:
            self.outputs[name] = self.new_space(channels, member=name)
        return ((self.outputs[name], channels, 1),)

    def visit_function(self, node: fx.Node, shape: tuple | None) -> tuple | None:
        target = node.target
        source, src_shape = self.source(node)
        if target is operator.getitem and node.args[0] in self.pieces:
            return self.pieces[node.args[0]][node.args[1]]
        if shape is None or len(shape) < 2:
            return None
        if target in ops.ADD or target in ops.MUL:
            return self.elementwise(node, shape)
        if target in ops.CONCATS:
            dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
            parts = [self.layouts.get(x) for x in node.args[0]]
            return sum(parts, ()) if dim % len(shape) == 1 and None not in parts else None
        if target in ops.CREATIONS:  # made from a shape, not from channel values
            return self.fresh(shape, f"its channels are made by {self.describe(node)}")
        if source is None:
            return None
        if target in ops.CONVS:
            return self.functional_conv(node, source, shape)
        if target in ops.CHANNEL_NORMS:
            return self.functional_norm(node, source, shape)
        if target in ops.CROSS_CHANNEL_NORMS:
            return self.stop(source, shape, _cross_norm(self.describe(node)))
        if ops.is_pass(target):
            return source
        if target in ops.RESHAPES or target in ops.RESHAPE_METHODS:
            return _reshaped(source, src_shape, shape)
        if target in ops.REDUCTIONS or target in ops.REDUCTION_METHODS:
            dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
            dims = dims if isinstance(dims, list | tuple) else (dims,)
            keeps = None not in dims and {d % len(src_shape) for d in dims}.isdisjoint({0, 1})
            return source if keeps and len(shape) >= 2 else None
        if target is F.pad:
            spatial = len(node.args[1] if len(node.args) > 1 else node.kwargs["pad"]) <= 4
            if not spatial:
                self.block(source, f"its channels are zero-padded by {self.describe(node)} (a "
                                   "channel-padding shortcut)")
            return source if spatial else None
        if target is operator.getitem:
            return self.sliced(node, source, src_shape, shape)
        return None

    def functional_conv(self, node: fx.Node, source: tuple, shape: tuple) -> tuple | None:
        """``F.conv2d`` in a conv module's forward (e.g. timm's Conv2dSame: pad, then conv)."""
        weight, bias = _arg(node, 1, "weight"), _arg(node, 2, "bias")
        name = _owner(weight, "weight")
        conv = self.modules.get(name)
        if isinstance(conv, nn.Conv2d) and (bias is None or _owner(bias, "bias") == name) \
                and _arg(node, 6, "groups", 1) == conv.groups:
            return self.visit_conv(name, conv, source, shape)
        scope = _scope(node)
        reason = f"its channels reach {self.describe(node)}, whose weight is computed in the " \
                 "forward (e.g. weight standardisation): removing input channels would change " \
                 "the weights of the others"
        if isinstance(self.modules.get(scope), nn.Conv2d):
            self.convs.setdefault(scope, f"its weight is computed in its forward "
                                         f"({type(self.modules[scope]).__name__})")
        self.stop(source, shape, reason)
        return self.fresh(shape, f"its channels come from {self.describe(node)}, whose weight "
                                 "is computed in the forward")

    def functional_norm(self, node: fx.Node, source: tuple, shape: tuple) -> tuple | None:
        """``F.batch_norm`` / ``F.instance_norm``: per-channel statistics, so it follows its
        input like BatchNorm2d, its parameters those of the module that owns them."""
        tensors = [x for x in (*node.args[1:], *node.kwargs.values()) if isinstance(x, fx.Node)]
        owners = {_owner(x) for x in tensors}
        if not owners:
            return source
        channels = sum(c for _, c, _ in source)
        name = owners.pop()
        module = self.modules.get(name)
        if owners or module is None or any(
            t.ndim and tuple(t.shape) != (channels,)
            for t in (*module.parameters(recurse=False), *module.buffers(recurse=False))
        ):
            return self.stop(source, shape, f"its channels reach {self.describe(node)}, whose "
                             "per-channel parameters are not those of one module")
        self.use(name, "follower", source)
        return source

    def visit_split(self, node: fx.Node) -> None:
        """``torch.split`` / ``chunk`` / ``unbind``: along the channels at sizes fixed in the
        forward (pruning would move them), else every piece keeps the layout."""
        source, src_shape = self.source(node)
        shapes = _shapes(node)
        if source is None or shapes is None:
            for x in node.all_input_nodes:
                self.block(self.layouts.get(x, ()), f"its channels reach {self.describe(node)}, "
                           "which the engine cannot prune through")
            return
        default = 1 if node.target in ("unbind", torch.unbind) else 2
        dim = _arg(node, default, "dim", 0) % len(src_shape)
        if dim != 1:
            self.pieces[node] = [source] * len(shapes)
            return
        if self.equal_parts(node, source, [s[1] for s in shapes]):
            return
        reason = f"its channels are split at fixed sizes by {self.describe(node)}: pruning " \
                 "them would move the split"
        self.block(source, reason)
        self.pieces[node] = [self.fresh(s, reason) for s in shapes]

    def equal_parts(self, node: fx.Node, source: tuple, sizes: list[int]) -> bool:
        """A split of one group's channels into k equal parts: each part is a copy of the
        channels of a new group, whose kept count is the new part size (``chunk`` computes it
        from the channels; ``split`` takes it from the one int attribute of the module running
        it that holds it, rewritten by surgery). Returns False where this does not apply."""
        if len(source) != 1 or source[0][2] != 1 or len(sizes) < 2 or len(set(sizes)) > 1:
            return False
        attribute = None
        if node.target in ("split", torch.split):
            scope = self.modules.get(_scope(node))
            size = _arg(node, 1, "split_size_or_sections", node.kwargs.get("split_size"))
            names = [n for n, v in vars(scope or object()).items()
                     if type(v) is int and v == size and not n.startswith("_")]
            if size != sizes[0] or len(names) != 1:
                return False
            attribute = names[0]
        elif node.target not in ("chunk", torch.chunk):
            return False
        piece = self.new_space(sizes[0])
        self.join(source, ((piece, sizes[0], 1),) * len(sizes),
                  f"its channels are split into {len(sizes)} equal parts {self.where(node)}")
        if attribute is not None:
            self.split_sizes.append((_scope(node), attribute, piece))
        self.pieces[node] = [((piece, sizes[0], 1),)] * len(sizes)
        return True

    def sliced(self, node: fx.Node, source: tuple, src_shape: tuple, shape: tuple) -> tuple | None:
        """``x[...]``: spatial slices keep the layout, and so does a channel slice that keeps
        every channel; a channel slice at fixed positions blocks the channels."""
        index = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
        if any(i is None or isinstance(i, fx.Node) for i in index) or index.count(...) > 1:
            return None
        if ... in index:
            e = index.index(...)
            index = index[:e] + (slice(None),) * (len(src_shape) - len(index) + 1) + index[e + 1:]
        index = index + (slice(None),) * (len(src_shape) - len(index))
        batch, channels = index[:2]
        if batch != slice(None) or not isinstance(channels, slice):
            return None
        if channels.step in (None, 1) and channels.start in (None, 0) and (
            channels.stop is None or channels.stop >= src_shape[1]
        ):
            return source if shape[1] == src_shape[1] else None
        return self.stop(source, shape, f"channels {channels.start or 0}:{channels.stop} of "
                         f"{src_shape[1]} are taken at fixed positions by {self.describe(node)}: "
                         "pruning would move them")

    def elementwise(self, node: fx.Node, shape: tuple) -> tuple | None:
        """Addition or multiplication: operands whose channels line up share their groups; a
        parameter with one value per channel (a layer scale) follows them."""
        dims = {self.dims.get(x, 1) for x in node.all_input_nodes if x in self.layouts}
        if len(dims) != 1:
            return None
        self.dim = dims.pop()
        channels, operands, scales = shape[self.dim], [], []
        for x in node.args:
            x_shape = _shape(x) if isinstance(x, fx.Node) else None
            if x_shape is None:
                continue
            position = self.dim - (len(shape) - len(x_shape))
            if (x_shape[position] if 0 <= position < len(x_shape) else 1) != channels:
                continue  # broadcast over the channels, e.g. a spatial gate
            if x in self.layouts and len(x_shape) == len(shape):
                operands.append(self.layouts[x])
            elif self.parameter(x, channels):
                scales.append(self.parameter(x, channels))
            else:
                return None
        if not operands:
            return None
        what = "added to a residual shortcut" if node.target in ops.ADD else "multiplied by a gate"
        for other in operands[1:]:
            self.join(operands[0], other, f"its output is {what} {self.where(node)}")
        for name in scales:
            self.use(name, "follower", operands[0])
        return operands[0]

    def parameter(self, node: fx.Node, channels: int) -> str | None:
        """The qualified name of the parameter ``node`` reads (through reshapes) if it has one
        value per channel, else None."""
        while node.op in ("call_method", "call_function") and \
                node.target in ops.RESHAPE_METHODS | ops.RESHAPES:
            node = node.args[0]
        owner = _owner(node)
        module = self.modules.get(owner) if owner is not None else None
        param = getattr(module, node.target.rpartition(".")[2], None)
        if isinstance(param, nn.Parameter) and param.numel() == channels and \
                max(param.shape, default=1) == channels:
            return node.target
        return None

    # --- result ---

    def finish(self, residual: str, convs: list[str], not_called: str) -> DependencyGraph:
        roots: dict[int, ChannelGroup] = {}
        for space in range(len(self.parent)):
            root = self.find(space)
            group = roots.setdefault(root, ChannelGroup([], 0))
            group.members += self.members[space]
            group.blocked = group.blocked or self.blocked[space]
            group.coupling = group.coupling or self.coupling[space]
            group.chunks = math.lcm(group.chunks, self.chunks[space])
            width = self.widths[space]
            group.out_channels = min(group.out_channels or width, width)
        for space in range(len(self.parent)):
            group = roots[self.find(space)]
            if self.widths[space] % group.out_channels or group.out_channels % group.chunks:
                group.blocked = group.blocked or "its channels are joined with repeats of " \
                    "channels whose count does not divide theirs"
        for name, space in self.outputs.items():
            group = roots[self.find(space)]
            if self.widths[space] > group.out_channels:
                group.tiles[name] = self.widths[space] // group.out_channels

        def resolve(layout: tuple) -> Layout:
            return tuple(Segment(group if group.members else None, channels, f)
                         for space, channels, f in layout
                         for group in (roots[self.find(space)],))
        inputs, followers = {}, {}
        for (name, role), layout in self.uses.items():
            (inputs if role == "input" else followers)[name] = resolve(layout)
        for name, layout in followers.items():
            for segment in layout:
                if segment.group is not None:
                    segment.group.followers.append(name)
        for name, layout in inputs.items():
            kind = "conv" if isinstance(self.modules[name], nn.Conv2d) else "linear"
            offset = 0
            for segment in layout:
                if segment.group is not None:
                    segment.group.consumers.append(
                        Consumer(name, kind, segment.features_per_channel, offset)
                    )
                offset += segment.channels * segment.features_per_channel
        groups = [group for group in roots.values() if group.members]
        layers, not_prunable = {}, {}
        for name, reason in self.convs.items():
            group = roots[self.find(self.outputs[name])] if name in self.outputs else None
            if group is not None:
                reason = group.blocked
                if residual == "inner" and len(group.members) > 1:
                    reason = f"{group.coupling}; " + (reason or (
                        "residual='coupled' prunes it together with the "
                        f"{len(group.members) - 1} other layer(s) sharing its channels"))
            if reason is None:
                layers[name] = group
            else:
                not_prunable[name] = reason
        for name in convs:  # never traced: inside an ignored module, or not called
            if name not in self.convs:
                inside = any(fnmatch.fnmatchcase(prefix, key) for key in self.ignore
                             for prefix in _prefixes(name))
                not_prunable[name] = "it is inside an ignored module" if inside else not_called
        split_sizes = [(name, attribute, roots[self.find(space)])
                       for name, attribute, space in self.split_sizes]
        return DependencyGraph(layers, not_prunable, groups, inputs, followers, residual,
                               split_sizes)


def _prefixes(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _shape(node: object) -> tuple | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if isinstance(meta, TensorMetadata) else None


def _reshaped(source: tuple | None, src_shape: tuple | None, shape: tuple | None) -> tuple | None:
    """Layout after a view, reshape, flatten, squeeze or unsqueeze, if it keeps the channels.

    Keeping (B, C) keeps the layout; (B, C, *spatial) -> (B, C * prod(spatial)) is a C-major
    flatten that multiplies the features per channel; anything else is not understood (None).
    """
    if source is None or src_shape is None or shape is None or len(shape) < 2:
        return None
    if shape[:2] == src_shape[:2]:
        return source
    if len(shape) == 2 and shape[0] == src_shape[0] and len(src_shape) > 2:
        spatial = math.prod(src_shape[2:])
        return tuple((space, channels, f * spatial) for space, channels, f in source)
    return None


def _shapes(node: fx.Node) -> list[tuple] | None:
    """Shapes of the tensors of a tuple output (a split), or None."""
    meta = node.meta.get("tensor_meta")
    if isinstance(meta, list | tuple) and all(isinstance(m, TensorMetadata) for m in meta):
        return [tuple(m.shape) for m in meta]
    return None


def _has_tensors(node: fx.Node) -> bool:
    return _shape(node) is not None or _shapes(node) is not None


def _scope(node: fx.Node) -> str:
    """Qualified name of the innermost module whose forward made ``node`` ("" for the model)."""
    stack = node.meta.get("nn_module_stack") or {}
    return next(reversed(stack.values()))[0] if stack else ""


def _arg(node: fx.Node, position: int, name: str, default: object = None) -> object:
    return node.args[position] if len(node.args) > position else node.kwargs.get(name, default)


def _owner(value: object, attribute: str | None = None) -> str | None:
    """The module owning a parameter or buffer read by a get_attr node (with that attribute)."""
    if not isinstance(value, fx.Node) or value.op != "get_attr":
        return None
    owner, _, name = value.target.rpartition(".")
    return owner if attribute in (None, name) else None


def _cross_norm(what: str) -> str:
    return f"its channels reach {what}, which normalises over channels: removing channels " \
           "changes the statistics of the others"
