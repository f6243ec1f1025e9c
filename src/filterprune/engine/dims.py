"""How channels flow through operations that may move them to another dim than 1: channels-last
maps (ConvNeXt's MLP), attention (stack, matmul, reshapes into equal parts, transposes) and views
sized from a map's shape. The rules the dependency builder (``filterprune.engine.dependencies``)
mixes in beside ``FunctionRules``; see that module for the channel model.
"""

from __future__ import annotations

import math
import operator

import torch
from torch import fx, nn

from filterprune.engine import ops
from filterprune.engine.nodes import (
    argument,
    cross_norm,
    entries,
    layout_part,
    node_shape,
    not_conv2d,
    owner_of,
)


class DimRules:
    """The builder's rules for channels at whatever dim they are (``self.dim``), mixed into it
    as ``FunctionRules`` is, with the same union-find methods."""

    def visit_channels_last(self, node: fx.Node, shape: tuple | None) -> tuple | None:
        """A node reading channels at another dim than 1 (ConvNeXt's channels-last MLP, a stack
        of feature maps): a Conv2d blocks them (its own filters stay prunable), a Linear on the
        last dim reads and writes them like a pointwise conv,
        element-wise operations and layer scales keep them, LayerNorm over them blocks them, a
        Conv1d along them (ECA attention) blocks them (with ``exact=False`` it follows them,
        approximately); anything else is not understood (None)."""
        source, src_shape = self.source(node)
        if shape is not None and (node.target in ops.ADD or node.target in ops.MUL):
            return self.elementwise(node, shape)
        if source is None or shape is None:
            return None
        if node.op == "call_module":
            name, module = node.target, self.modules[node.target]
            if isinstance(module, nn.Conv2d):  # its filters are still its own channels
                reason = f"its channels reach {self.describe(node)} at dim {self.dim} of its " \
                    "input, not as its input channels"
                self.block(source, reason)
                self.dim = 1
                return self.visit_conv(name, module, self.fresh(src_shape, reason), shape)
            if isinstance(module, nn.modules.conv._ConvNd):
                self.convs.setdefault(name, not_conv2d(name, module))
            if isinstance(module, nn.Conv1d) and self.dim == 2 and shape[2:] == src_shape[2:]:
                return self.approximated(source, shape, f"its channels reach {self.describe(node)} "
                                         "along its length, which mixes neighbouring channels: "
                                         "removing channels changes the others")
            if isinstance(module, nn.Linear) and self.dim == len(shape) - 1 and len(shape) > 2:
                self.convs.setdefault(name, None)
                self.use(name, "input", source)
                return self.member(name, module.out_features)
            if isinstance(module, nn.LayerNorm):
                return self.cross_channel(node, source, shape, name)
            return source if isinstance(module, ops.ELEMENTWISE_MODULES) else None
        if node.target in ops.CROSS_CHANNEL_NORMS:
            return self.cross_channel(node, source, shape, owner_of(argument(node, 2, "weight")))
        return source if ops.is_pass(node.target) and node.target not in ops.SPATIAL_FUNCTIONS \
            else None

    def approximated(self, source: tuple, shape: tuple, reason: str) -> tuple | None:
        """An operation that mixes the channels: blocks them; with ``exact=False`` it keeps
        them and their groups are marked approximate."""
        if self.exact:
            return self.stop(source, shape, reason)
        self.approximate(source, f"{reason} (pruned approximately: exact=False)")
        return source

    def visit_dims(self, node: fx.Node, shape: tuple | None) -> tuple | None:
        """Operations that find the channels at whatever dim they are (``self.dim``) and may
        move them (setting ``self.dim``): a permutation or transpose moves them; a stack joins
        its inputs' groups and inserts a dim; a reduction or softmax over other dims keeps them
        (a dim other than the channels' holds copies of the same layout), over the channels
        blocks them; an expand keeps them; a matmul keeps them where they are a batch or a
        kept dim; a reshape is ``reshaped``. None where not understood."""
        target = node.target
        if target in ops.STACKS:
            return self.stacked(node, shape)
        if target in ops.MATMULS:
            return self.matmul(node, shape)
        source, src_shape = self.source(node)
        if source is None or shape is None or src_shape is None:
            return None
        if target in ops.PERMUTES or target in ops.TRANSPOSES:
            if target in ops.TRANSPOSES:
                order = list(range(len(shape)))
                i, j = (argument(node, 1, "dim0") % len(shape),
                        argument(node, 2, "dim1") % len(shape))
                order[i], order[j] = j, i
            else:
                order = node.args[1:] if node.op == "call_method" else \
                    (argument(node, 1, "dims"),)
                order = order[0] if len(order) == 1 and isinstance(order[0], list | tuple) \
                    else order
            self.dim = [d % len(shape) for d in order].index(self.dim)
            return source if self.dim else None
        if target in ops.EXPANDS:
            return self.sized(node, source if len(shape) == len(src_shape) and
                              shape[self.dim] == src_shape[self.dim] else None)
        dims = argument(node, 1, "dim")
        dims = dims if isinstance(dims, list | tuple) else (dims,)
        if target not in ops.SOFTMAXES and not (target in ops.REDUCTIONS or
                                                target in ops.REDUCTION_METHODS):
            return self.sized(node, self.reshaped(node, source, src_shape, shape))
        if None in dims or not dims:
            return None
        reduced = {d % len(src_shape) for d in dims}
        if self.dim in reduced:
            return self.stop(source, shape, cross_norm(self.describe(node))
                             if target in ops.SOFTMAXES else f"its channels are reduced "
                             f"together by {self.describe(node)}: removing channels changes "
                             "the result")
        if 0 in reduced:
            return None
        if target not in ops.SOFTMAXES and not argument(node, 2, "keepdim", False):
            self.dim -= sum(d < self.dim for d in reduced)
        return source if len(shape) > self.dim else None

    def sized(self, node: fx.Node, layout: tuple | None) -> tuple | None:
        """A view, reshape or expand whose sizes include the channel count C of a map (read
        from its shape: ``B, C, H, W = x.shape``; or ``expand_as(x)``): where C (or C // k)
        sizes the output's channels, that map's channels are joined with them (k copies of
        them), else they are blocked (timm's lambda layer reshapes its output to its input's
        count); the map the output is rearranged from (a channel shuffle's view of its input
        to ``x.size(1)``) has the output's entries, so its count follows the pruning as it is.
        Returns ``layout``, the output's."""
        if node.target == "expand_as":
            other = node.args[1]
            counts = [(self.dims.get(other, 1), other, 1)] if other in self.layouts else []
        else:
            counts = [(i, t, k) for i, size in enumerate(_sizes(node) or ())
                      for t, dim, k in _shape_reads(size)
                      if t in self.layouts and dim % len(node_shape(t)) == self.dims.get(t, 1)]
        reason = f"its channel count sizes {self.describe(node)}"
        for position, t, k in counts:
            if layout is not None and position == self.dim and k and \
                    entries(self.layouts[t]) == k * entries(layout):
                if not _rearranged(node, t):
                    self.join(self.layouts[t], layout * k, reason)
            else:
                self.block(self.layouts[t], f"{reason}, where pruning cannot follow it")
        return layout

    def stacked(self, node: fx.Node, shape: tuple | None) -> tuple | None:
        """``torch.stack(maps, dim)`` of maps with their channels at one dim: their groups are
        joined (the new dim then holds copies of one layout, as Selective Kernel's paths,
        later summed over) and the channels move one dim on if the new dim is before them."""
        parts = node.args[0] if node.args else node.kwargs.get("tensors")
        layouts = [self.layouts.get(x) for x in parts]
        dims = {self.dims.get(x, 1) for x in parts}
        if shape is None or None in layouts or len(dims) != 1:
            return None
        self.dim = dims.pop()
        for other in layouts[1:]:
            self.join(layouts[0], other, f"its output is stacked with others by "
                      f"{self.describe(node)}")
        self.dim += argument(node, 1, "dim", 0) % len(shape) <= self.dim
        return layouts[0]

    def matmul(self, node: fx.Node, shape: tuple | None) -> tuple | None:
        """``a @ b``, (..., n, m) @ (..., m, p) -> (..., n, p): an operand whose channels are a
        batch dim or its kept dim (n of ``a``, p of ``b``) passes them on (both doing so at one
        output dim: joined); channels along the contracted dim m are blocked (each output reads
        all of them: a consumer that cannot be pruned exactly)."""
        if shape is None:
            return None
        what, kept = self.describe(node), []
        for x, own in zip(node.args[:2], (-2, -1), strict=True):
            x_shape = node_shape(x) if x in self.layouts else None
            if x_shape is None or len(x_shape) < 2:
                continue
            dim = self.dims.get(x, 1) - len(x_shape)
            if dim == -3 - own:
                self.block(self.layouts[x], f"its channels are contracted by {what}: each "
                           "output reads all of them, so they cannot be pruned exactly")
            else:
                kept.append((len(shape) + (own if dim == own else dim), self.layouts[x]))
        if not kept:
            return None
        (self.dim, layout), *others = kept
        for dim, other in others:
            if dim == self.dim:
                self.join(layout, other, f"its output is multiplied by another map in {what}")
            else:
                self.block(other, f"its channels and another map's channels reach different "
                           f"dims of the output of {what}")
        return layout

    def reshaped(
        self, node: fx.Node, source: tuple, src_shape: tuple | None, shape: tuple | None
    ) -> tuple | None:
        """Layout after a view, reshape, flatten, squeeze or unsqueeze of a map with its
        channels at dim ``self.dim`` (C of them), which it may move (setting ``self.dim``).

        - Dims of size 1 inserted or removed around the channels move them; the batch dim
          (dim 0) never holds them.
        - Splitting them into (k, C / k) (ResNeSt's ``x.reshape(B, radix, RC // radix, H,
          W)``) makes k equal parts: the new dims hold copies of the last part's layout (a
          new group, of which the k parts are copies, as for ``chunk``).
        - Merging them with the k copies before them (the reverse) lays the copies side by
          side; merging them with the dims after them multiplies the features per channel
          (a C-major flatten before a Linear).

        Where the channels move or are split or merged with copies, the size the forward gives
        the channels' dim must be computed (from a shape) or -1: a fixed size (or any size,
        recorded by ``tracer="record"``) would not follow the pruning, and blocks them. None
        where not understood.
        """
        if shape is None or src_shape is None or len(shape) < 2:
            return None
        d, channels = self.dim, src_shape[self.dim]
        lead, end = math.prod(src_shape[:d]), math.prod(src_shape[:d + 1])
        ends = [math.prod(shape[:i]) for i in range(len(shape) + 1)]
        src_ends = [math.prod(src_shape[:i]) for i in range(len(src_shape) + 1)]
        runs = [(j, m) for j in range(len(shape) - 1, 0, -1) if ends[j] == lead
                for m in range(j, len(shape)) if ends[m + 1] == end][:1]
        if runs:  # the channels become dims j..m: kept, moved or split
            dim, copies, f = runs[0][1], channels // shape[runs[0][1]], 1
        else:  # merged with dims before or after them into one dim
            dim = next((i for i in range(len(shape))
                        if ends[i] <= lead and ends[i + 1] >= end), None)
            if dim is None or ends[dim] not in src_ends[1:d + 1] or \
                    ends[dim + 1] not in src_ends[d + 1:]:
                return None  # the batch dim, or parts of other dims, would join the channels
            copies, f = lead // ends[dim], ends[dim + 1] // end
        if dim == 0:
            return None
        self.dim = dim
        if (dim != d or copies > 1) and not _computed(node, shape, dim):
            return self.stop(source, shape, f"its channels are reshaped by {self.describe(node)} "
                             "to a size fixed in the forward (or recorded by tracer='record'): "
                             "it would not follow the pruning")
        if runs and copies > 1:
            return self.parts(source, copies, f"its channels are split into {copies} equal "
                              f"parts by {self.describe(node)}")
        return tuple((space, c, g * f, start) for space, c, g, start in source) * \
            (copies if not runs else 1)

    def parts(self, source: tuple, k: int, reason: str) -> tuple | None:
        """The layout of each of k equal parts of ``source``'s entries: k copies of one layout
        give it; the whole channels of one group give a new group of which the parts are
        copies; other layouts (the two halves a ShuffleNet block concatenates, a shuffled
        map's halves) are cut into k parts, each joined with the first entry by entry (the
        same kept entries in every part, as a channel shuffle or ``chunk`` of the pruned map
        needs), and give the first. Joined with ``reason``; None if k does not divide them."""
        n, total = len(source) // k, entries(source)
        if len(source) % k == 0 and source == source[:n] * k:
            return source[:n]
        if total % k:
            return None
        if self.whole_group(source, k):
            piece = ((self.new_space(source[0][1] // k), source[0][1] // k, source[0][2], 0),)
            self.join(source, piece * k, reason)
            return piece
        size = total // k
        first = layout_part(source, 0, size)
        for i in range(1, k):
            self.join(first, layout_part(source, i * size, (i + 1) * size), reason)
        return first


def _sizes(node: fx.Node) -> tuple | None:
    """The sizes a view, reshape or expand gives its output, one per dim; None for the
    operations that take none (flatten, squeeze, unsqueeze, expand_as)."""
    if node.op == "call_method" and node.target in ("view", "reshape", "expand"):
        sizes = node.args[1:]
    elif node.target in (torch.reshape, torch.broadcast_to, "broadcast_to"):
        sizes = node.args[1:2] or (node.kwargs.get("shape", node.kwargs.get("size")),)
    else:
        return None
    return tuple(sizes[0]) if len(sizes) == 1 and isinstance(sizes[0], list | tuple) else sizes


def _shape_reads(size: object) -> list[tuple[fx.Node, int, int | None]]:
    """(map, dim, k) for each size of a map that ``size`` is computed from (``x.shape[1]``,
    ``x.size(1)``, ``B, C, H, W = x.shape``): ``size`` is that size // k, or some other
    arithmetic on it (k None)."""
    if not isinstance(size, fx.Node):
        return []
    if size.op == "call_method" and size.target == "size" and len(size.args) > 1:
        return [(size.args[0], size.args[1], 1)]
    if size.target is operator.getitem and isinstance(size.args[0], fx.Node) and \
            isinstance(size.args[1], int) and (
                size.args[0].target is getattr and size.args[0].args[1] == "shape" or
                size.args[0].target == "size" and len(size.args[0].args) == 1):
        return [(size.args[0].args[0], size.args[1], 1)]
    if size.op != "call_function" or size.target not in ops.ARITHMETIC:
        return []
    if size.target is operator.floordiv and type(size.args[1]) is int:
        return [(t, dim, k and k * size.args[1]) for t, dim, k in _shape_reads(size.args[0])]
    return [(t, dim, None) for x in size.args for t, dim, _ in _shape_reads(x)]


def _rearranged(node: fx.Node, source: fx.Node) -> bool:
    """Whether ``node``'s data is ``source``'s, only reshaped, transposed or permuted."""
    moves = ops.RESHAPES | ops.RESHAPE_METHODS | ops.PERMUTES | ops.TRANSPOSES | {"contiguous"}
    while isinstance(node, fx.Node) and node is not source and node.target in moves:
        node = node.args[0] if node.args else node.kwargs.get("input")
    return node is source


def _computed(node: fx.Node, shape: tuple, dim: int) -> bool:
    """Whether a reshape gives its output's dim ``dim`` a size computed in the forward (from a
    shape, or -1), so that it follows a pruning; flatten, squeeze and unsqueeze take none."""
    if node.op == "call_module":  # nn.Unflatten: fixed sizes (nn.Flatten keeps the dim)
        return False
    sizes = _sizes(node)
    if sizes is None:
        return True
    return len(sizes) == len(shape) and (isinstance(sizes[dim], fx.Node) or sizes[dim] == -1)

