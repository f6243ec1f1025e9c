"""Channel dependencies of a model, found by tracing it with torch.fx (or, where fx cannot trace
it, by recording one forward pass op by op).

Every feature map of the traced model gets a *channel layout*: the channel groups its channels
come from, in order (one group for a conv output; several after a concatenation). A
:class:`ChannelGroup` is a set of channels that must be pruned at the same indices:

- a conv (groups=1) or Linear starts a group: its output channels (the group's *members*);
- BatchNorm, activations, pooling, dropout, interpolation, spatial padding and slicing, view /
  flatten and reductions over H, W keep the layout (flatten multiplies the features per channel);
- a depthwise conv (groups = in channels) and a BatchNorm are *followers*: their
  per-channel weights are pruned with the indices of their input's group (a depthwise conv
  with k filters per input channel, out = k x in, gives each channel k features: its filters
  k c ... k c + k - 1 follow channel c);
- element-wise addition (a residual shortcut: the block output and the shortcut share channels)
  and multiplication (a squeeze-and-excitation gate computed from the same channels) join the
  groups of their operands, so a group can have several members (e.g. every second conv of a
  ResNet stage, the stem conv and the 1x1 projection shortcut);
- a concatenation along channels lays its inputs' groups side by side (offsets into the
  consumer's input channels);
- joining two layouts ties their channels one to one, whatever parts of spaces they are
  (``ChannelSpaces.join``): k copies of one group's C channels joined with one layer's k * C
  channels (GhostNet: ``cat([x, depthwise(x)])`` added to a conv shortcut) make that layer a
  member whose filter ``i`` is channel ``i % C``; a part of a layer's channels joined with
  other channels (ReXNet's ``x[:, :in_chs] + shortcut``, DPN's ``x_s[:, :c] + out[:, :c]``,
  MixNet's split parts added to a whole shortcut) makes the rest of its channels runs of the
  same group; each member covers ranges of its group's channels (``ChannelGroup.covers``) and
  each run keeps its share (``ChannelGroup.runs``);
- a split of one group's channels into k equal parts (Res2Net's ``torch.split(x, self.width,
  1)``, ``chunk``) makes each part a copy of a new group's channels (the same copies): every
  part keeps the same channels, and surgery rewrites the one int attribute of the module that
  holds the part size (``DependencyGraph.split_sizes``);
- ``torch.split(x, sizes, 1)`` with ``sizes`` held by one list attribute of the module (MixNet's
  MixedConv2d) gives each part its share of the layout (segments with a ``start``); the groups
  it cuts keep at least one channel in each part (runs) and surgery rewrites the attribute to
  the kept counts; a channel slice ``x[:, a:b]`` whose bounds are held by int attributes of the
  module (DPN's ``x[:, :self.num_1x1_c]``) takes its part likewise, and surgery rewrites them;
  ``x[:, a:b] = y`` (or ``+= y``) joins that part with ``y``; other splits and slices along the
  channels block the channels they cut, and so do splits or slices at one attribute that cut
  different channels;
- a conv or Linear reading a layout is a *consumer*: its input channels (for a Linear after a
  flatten, the H*W input features of each channel) are pruned;
- ``permute`` moves the channels to another dim (ConvNeXt's channels-last blocks): there a Linear
  on the last dim reads and writes channels like a pointwise conv (a prunable layer),
  element-wise operations keep them, a parameter with one value per channel (a layer scale
  ``gamma * x``) is a follower, and LayerNorm over them blocks them;
- attention blocks move the channels between dims (``DimRules.visit_dims``): a dim other
  than the channels' holds copies of one layout; ``torch.stack`` joins its inputs' groups
  (Selective Kernel's paths) and inserts such a dim, as do ``unsqueeze`` and views adding
  dims of size 1; a view of the channels as (k, C / k) (ResNeSt's split attention) makes k
  equal parts (as ``chunk``) and the reverse view lays k copies side by side; reductions and
  softmax over other dims keep the channels, over them block them; a matmul keeps channels
  that are a batch or kept dim (GCNet's global context) and blocks channels it contracts; a
  Conv1d along the channels (ECA) blocks them (approximate with ``exact=False``); a channel
  count read from a map's shape that sizes a view joins that map's channels with the view's
  (or blocks them);
- a channel shuffle (ShuffleNet's ``x.view(b, g, c // g, h, w).transpose(1, 2).reshape(b, c, h,
  w)``, or ``permute``) views any layout as g equal parts, joined entry by entry (the pruned
  parts are interleaved entry by entry), then merges the channels with the copies after them:
  each channel spans g entries (features per channel). Layouts are cut and joined entry by
  entry, so a channel of f entries is tied with every channel of another layout sharing them
  (the next block's branch output, concatenated with a shuffled half, has f filters per
  channel); a conv reads such a layout (each kept channel keeps its f input channels); a
  ``chunk`` of a layout other than one group's whole channels keeps as many entries in each
  part (``ChannelSpaces.balance``), and a channel slice whose bound falls inside a channel's
  entries blocks it.

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
from collections.abc import Callable, Sequence

import torch
from torch import fx, nn

from filterprune.engine import ops
from filterprune.engine.dims import DimRules
from filterprune.engine.functions import FunctionRules
from filterprune.engine.graph import (
    RESIDUAL_POLICIES,
    TRACERS,
    ChannelGroup,
    Consumer,
    DependencyGraph,
    Layout,
    Segment,
)
from filterprune.engine.layers import LayerRules
from filterprune.engine.nodes import has_tensors, node_shape, scope_of
from filterprune.engine.spaces import ChannelSpaces, ranges_of
from filterprune.engine.tracers import trace_graph
from filterprune.errors import FilterpruneError


def trace(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple,
    *,
    residual: str = "inner",
    ignore: Sequence[str] = (),
    tracer: str = "auto",
    prune_linear: bool = False,
    exact: bool = True,
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
        prune_linear: the hidden Linear layers of classifier heads (Linear -> ReLU -> Linear
            in VGG and AlexNet) are prunable layers too; the Linear giving the model output
            never is (its channels reach the output). Off by default: the paper prunes convs.
        exact: with False, LayerNorm / GroupNorm over the channels and weight-standardised
            convs (timm StdConv2d, ScaledStdConv2d) no longer block: their channels are pruned
            and their groups marked approximate (``ChannelGroup.approximate``): the pruned
            model then differs from the masked original.

    Returns:
        The dependency graph, layers in forward (topological) order, with the model's
        profile on ``example_inputs`` (``DependencyGraph.profile``: counted in the tracing
        pass where it can, one forward fewer for ``prune``).

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
    modules = dict(model.named_modules())
    for key in ignore:
        if not any(fnmatch.fnmatchcase(name, key) for name in modules):
            raise FilterpruneError(f"unknown layer or pattern '{key}' in ignore: no such module")
    graphs, train_failure, costs = trace_graph(model, example_inputs, tuple(ignore), tracer)
    builder = _Builder(modules, tuple(ignore), prune_linear, exact)
    for graph in graphs:  # eval mode, then train mode: the same layers share their channels
        for node in graph.nodes:
            builder.visit(node)
    convs = [name for name, m in modules.items() if isinstance(m, nn.modules.conv._ConvNd)]
    not_called = "it is not called in the model's forward" + (
        f" in eval mode, and running it in train mode failed: {train_failure}"
        if train_failure else ""
    )
    graph = builder.finish(residual, convs, not_called)
    graph.prune_linear, graph.exact, graph.profile = prune_linear, exact, costs
    return graph


class _Builder(LayerRules, FunctionRules, DimRules, ChannelSpaces):
    """Walks an fx graph in order, giving each node's output a channel layout.

    Channel spaces are kept in a union-find (:class:`ChannelSpaces`); a space is a set of
    channels created by one layer (or operation). Layouts are tuples of (space, channels,
    features per channel, first channel of the space: non-zero for a part of a split).
    """

    def __init__(
        self, modules: dict[str, nn.Module], ignore: tuple[str, ...], prune_linear: bool,
        exact: bool,
    ) -> None:
        super().__init__()
        self.modules = modules
        self.ignore = ignore
        self.prune_linear = prune_linear
        self.exact = exact
        self.layouts: dict[fx.Node, tuple] = {}
        self.uses: dict[tuple[str, str], tuple] = {}  # (module, "input" | "follower") -> layout
        self.outputs: dict[str, int] = {}  # member module -> its space (shared calls reuse it)
        self.convs: dict[str, str | None] = {}  # conv name -> reason it is not a member, or None
        self.pieces: dict[fx.Node, list] = {}  # split node -> layout of each piece
        self.split_sizes: list[tuple[str, str, list]] = []  # (module, attribute, part layouts)
        self.dims: dict[fx.Node, int] = {}  # node -> dim of its channels, where not 1
        self.dim = 1  # dim of the channels of the node being visited

    # --- nodes ---

    def visit(self, node: fx.Node) -> None:
        shape = node_shape(node)
        inputs = [self.layouts[n] for n in node.all_input_nodes if n in self.layouts]
        first = node.args[0] if node.args else node.kwargs.get("input")
        dims = [self.dims.get(n, 1) for n in node.all_input_nodes if n in self.layouts]
        self.dim = start = self.dims.get(first, 1) if first in self.layouts else \
            max(dims, default=1)
        if node.op == "placeholder":
            layout = self.fresh(shape, "its channels are those of the model input")
        elif node.op == "output":
            for x in inputs:
                self.block(x, "its channels reach the model output")
            return
        elif node.target is operator.setitem:
            self.visit_setitem(node)
            return
        elif node.op == "get_attr" or (node.op != "call_module" and not has_tensors(node)) or (
            node.op != "call_module" and node.all_input_nodes and
            not any(n in self.layouts or n in self.pieces for n in node.all_input_nodes)
        ):
            return  # parameters (reshaped), shape, dtype or device queries: no channels flow
        elif node.op != "call_module" and node.target in ops.DIM_OPS:
            layout = self.visit_dims(node, shape)
        elif set(dims) - {1}:
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
            self.dim = start  # a rule may have moved it before giving up
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
        return self.within(scope_of(node))

    def within(self, scope: str) -> str:
        """``in 'layer1.0' (BasicBlock)``, or ``in the model's forward`` for the model."""
        if scope and scope in self.modules:
            return f"in '{scope}' ({type(self.modules[scope]).__name__})"
        return "in the model's forward"

    def fresh(self, shape: tuple | None, reason: str) -> tuple | None:
        if shape is None or len(shape) <= max(self.dim, 1):
            return None
        return ((self.new_space(shape[self.dim], blocked=reason), shape[self.dim], 1, 0),)

    def stop(self, source: tuple, shape: tuple | None, reason: str) -> tuple | None:
        """Blocks ``source`` with ``reason``; the output gets new blocked channels."""
        self.block(source, reason)
        return self.fresh(shape, reason)

    def use(self, name: str, role: str, layout: tuple) -> None:
        """Records that module ``name`` is pruned by ``layout``; a shared module joins layouts."""
        previous = self.uses.setdefault((name, role), layout)
        if previous is not layout:
            self.join(previous, layout, f"module '{name}' is applied to other feature maps too")

    def source(self, node: fx.Node) -> tuple[tuple | None, tuple | None]:
        """Layout and shape of the node's first argument (None, None if it has none)."""
        first = node.args[0] if node.args else node.kwargs.get("input")
        if not isinstance(first, fx.Node) or first not in self.layouts:
            return None, None
        return self.layouts[first], node_shape(first)

    # --- result ---

    def finish(self, residual: str, convs: list[str], not_called: str) -> DependencyGraph:
        width, runs, pieces = self.coordinates()
        roots: dict[int, ChannelGroup] = {}
        for space in range(len(self.parent)):
            root = self.find(space)
            group = roots.get(root) or roots.setdefault(
                root, ChannelGroup([], width.get(root, 0), runs=runs.get(root, ())))
            group.members += self.members[space]
            group.blocked = group.blocked or self.blocked[space]
            group.coupling = group.coupling or self.coupling[space]
            group.approximate = group.approximate or self.approx[space]
            chunks, what = self.chunks[space]
            copies = len(pieces[space])  # chunks of a space of k copies: chunks / k per copy
            if chunks > 1 and not group.runs and chunks % copies == 0:
                group.chunks = math.lcm(group.chunks, chunks // copies)
            elif chunks > 1:
                group.blocked = group.blocked or f"its channels are read or written per group " \
                    f"by {what} and are also cut into parts of other sizes (a slice or split)"
        for name, space in self.outputs.items():
            if pieces[space] != ((0, width[self.find(space)]),):
                roots[self.find(space)].covers[name] = pieces[space]
        for group in roots.values():
            if group.covers and len({c for name in group.members
                                     for c in group.channels(name).tolist()}) < group.out_channels:
                group.blocked = group.blocked or "some of its channels come from no layer " \
                    "the engine can prune (they are joined with channels that no conv makes)"

        def resolve(layout: tuple) -> Layout:
            return tuple(Segment(group if group.members else None, count, f, first)
                         for space, channels, f, start in layout
                         for group in (roots[self.find(space)],)
                         for first, count in ranges_of(pieces[space], start, channels))
        inputs, followers = {}, {}
        for (name, role), layout in self.uses.items():
            (inputs if role == "input" else followers)[name] = resolve(layout)
        for name, layout in followers.items():
            for segment in layout:
                if segment.group is not None and name not in segment.group.followers:
                    segment.group.followers.append(name)
        for name, layout in inputs.items():
            kind = "linear" if isinstance(self.modules[name], nn.Linear) else "conv"
            offset = 0
            for segment in layout:
                group = segment.group
                if group is not None and all(c.name != name for c in group.consumers):
                    group.consumers.append(
                        Consumer(name, kind, segment.features_per_channel, offset)
                    )
                offset += segment.channels * segment.features_per_channel
        split_sizes = self.resolved_sizes(resolve)
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
        return DependencyGraph(layers, not_prunable, groups, inputs, followers, residual,
                               split_sizes)

    def resolved_sizes(self, resolve: Callable[[tuple], Layout]) -> list:
        """``split_sizes`` with the parts' layouts resolved, each attribute once: an attribute
        that several splits or slices read must keep the same channels in all (else the
        groups they cut are blocked)."""
        sizes: dict[tuple[str, str], tuple] = {}
        for name, attribute, parts in self.split_sizes:
            parts = [resolve(part) for part in parts]
            seen = sizes.setdefault((name, attribute), (name, attribute, parts))[2]
            if [_key(part) for part in parts] != [_key(part) for part in seen]:
                for segment in (s for part in (*parts, *seen) for s in part):
                    if segment.group is not None:
                        segment.group.blocked = segment.group.blocked or (
                            f"its channels are split or sliced {self.within(name)} at "
                            f"'{attribute}' together with other channels: pruning them "
                            "differently would need two values of it")
        return list(sizes.values())


def _key(layout: Layout) -> list[tuple]:
    return [(id(s.group), s.channels, s.features_per_channel, s.start) for s in layout]


def _prefixes(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]
