"""How channels flow through functions, Tensor methods and channels-last maps: the rules the
dependency builder (``filterprune.engine.dependencies``) applies to ``call_function`` and
``call_method`` nodes, with the helpers that read fx nodes. See that module for the channel model.
"""

from __future__ import annotations

import itertools
import math
import operator

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import TensorMetadata

from filterprune.engine import ops


class FunctionRules:
    """The builder's rules for operations other than layers, mixed into it: they give a node's
    output a layout (or None: not understood, so the builder blocks its inputs) and use the
    builder's union-find (``join``, ``block``, ``fresh``, ``stop``, ``use``, ``new_space``,
    ``cut``)."""

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
                return self.cross_channel(node, source, shape, name)
            return source if isinstance(module, ops.ELEMENTWISE_MODULES) else None
        target = node.target
        if target in ops.PERMUTES:
            order = node.args[1:] if node.op == "call_method" else (argument(node, 1, "dims"),)
            order = order[0] if len(order) == 1 and isinstance(order[0], list | tuple) else order
            self.dim = [d % len(shape) for d in order].index(self.dim)
            return source if self.dim else None
        if target in ops.CROSS_CHANNEL_NORMS:
            return self.cross_channel(node, source, shape, owner_of(argument(node, 2, "weight")))
        return source if ops.is_pass(target) and target not in ops.SPATIAL_FUNCTIONS else None

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
            return _merged(sum(parts, ())) if dim % len(shape) == 1 and None not in parts else None
        if target in ops.CREATIONS:  # made from a shape, not from channel values
            return self.fresh(shape, f"its channels are made by {self.describe(node)}")
        if source is None:
            return None
        if target in ops.CONVS:
            return self.functional_conv(node, source, shape)
        if target in ops.CHANNEL_NORMS:
            return self.functional_norm(node, source, shape)
        if target in ops.CROSS_CHANNEL_NORMS:
            return self.cross_channel(node, source, shape, owner_of(argument(node, 2, "weight")))
        if ops.is_pass(target):
            return source
        if target in ops.RESHAPES or target in ops.RESHAPE_METHODS:
            return reshaped(source, src_shape, shape)
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
        weight, bias = argument(node, 1, "weight"), argument(node, 2, "bias")
        name = owner_of(weight, "weight")
        conv = self.modules.get(name)
        if isinstance(conv, nn.Conv2d) and (bias is None or owner_of(bias, "bias") == name) \
                and argument(node, 6, "groups", 1) == conv.groups:
            return self.visit_conv(name, conv, source, shape)
        scope = scope_of(node)
        reason = f"its channels reach {self.describe(node)}, whose weight is computed in the " \
                 "forward (e.g. weight standardisation): removing input channels would change " \
                 "the weights of the others"
        conv = self.modules.get(scope)
        if not self.exact and isinstance(conv, nn.Conv2d) and \
                argument(node, 6, "groups", 1) == conv.groups:
            self.approximate(source, reason)
            return self.visit_conv(scope, conv, source, shape)
        if isinstance(self.modules.get(scope), nn.Conv2d):
            self.convs.setdefault(scope, f"its weight is computed in its forward "
                                         f"({type(self.modules[scope]).__name__})")
        self.stop(source, shape, reason)
        return self.fresh(shape, f"its channels come from {self.describe(node)}, whose weight "
                                 "is computed in the forward")

    def cross_channel(
        self, node: fx.Node, source: tuple, shape: tuple, name: str | None
    ) -> tuple | None:
        """LayerNorm or GroupNorm over the channels (module ``name`` has the affine
        parameters): blocks them; with ``exact=False`` it follows them (a GroupNorm keeps the
        same count per norm group) and their groups are marked approximate."""
        module, what = self.modules.get(name) if name is not None else None, self.describe(node)
        channels = sum(s[1] for s in source)
        if isinstance(module, nn.LayerNorm):
            fits = tuple(module.normalized_shape) == (channels,) and self.dim == len(shape) - 1
        elif isinstance(module, nn.GroupNorm):
            per = channels // module.num_groups
            fits = self.dim == 1 and all(s[1] % per == 0 and self.whole(s) for s in source)
        else:
            fits = False
        if self.exact or not fits:
            return self.stop(source, shape, cross_norm(what))
        for space, width, *_ in source if isinstance(module, nn.GroupNorm) else ():
            self.split(space, width // per, what)
        self.use(name, "follower", source)
        self.approximate(source, f"{cross_norm(what)} (pruned approximately: exact=False)")
        return source

    def functional_norm(self, node: fx.Node, source: tuple, shape: tuple) -> tuple | None:
        """``F.batch_norm`` / ``F.instance_norm``: per-channel statistics, so it follows its
        input like BatchNorm2d, its parameters those of the module that owns them."""
        tensors = [x for x in (*node.args[1:], *node.kwargs.values()) if isinstance(x, fx.Node)]
        owners = {owner_of(x) for x in tensors}
        if not owners:
            return source
        channels = sum(s[1] for s in source)
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
        shapes = node_shapes(node)
        if source is None or shapes is None:
            for x in node.all_input_nodes:
                self.block(self.layouts.get(x, ()), f"its channels reach {self.describe(node)}, "
                           "which the engine cannot prune through")
            return
        default = 1 if node.target in ("unbind", torch.unbind) else 2
        dim = argument(node, default, "dim", 0) % len(src_shape)
        if dim != 1:
            self.pieces[node] = [source] * len(shapes)
            return
        if self.equal_parts(node, source, [s[1] for s in shapes]) or \
                self.unequal_parts(node, source, [s[1] for s in shapes]):
            return
        reason = f"its channels are split at fixed sizes by {self.describe(node)}: pruning " \
                 "them would move the split"
        self.block(source, reason)
        self.pieces[node] = [self.fresh(s, reason) for s in shapes]

    def equal_parts(self, node: fx.Node, source: tuple, sizes: list[int]) -> bool:
        """A split of one group's channels into k equal parts: each part is a copy of the
        channels of a new group, whose kept count is the new part size (``chunk`` computes it
        from the channels; ``split`` takes it from the one int attribute of the module running
        it that holds it, or else from the one that holds the k parts' total, as CSPNet's
        ``x.split(self.expand_chs // 2, dim=1)``; surgery rewrites it). Returns False where
        this does not apply."""
        if len(source) != 1 or source[0][2] != 1 or not self.whole(source[0]) or \
                len(sizes) < 2 or len(set(sizes)) > 1:
            return False
        attribute = None
        if node.target in ("split", torch.split):
            scope = self.modules.get(scope_of(node))
            size = argument(node, 1, "split_size_or_sections", node.kwargs.get("split_size"))
            ints = {n: v for n, v in vars(scope or object()).items()
                    if type(v) is int and not n.startswith("_")}
            names = [n for n, v in ints.items() if v == size] or \
                [n for n, v in ints.items() if v == size * len(sizes)]
            if size != sizes[0] or len(names) != 1:
                return False
            attribute = names[0]
        elif node.target not in ("chunk", torch.chunk):
            return False
        piece = self.new_space(sizes[0])
        self.join(source, ((piece, sizes[0], 1, 0),) * len(sizes),
                  f"its channels are split into {len(sizes)} equal parts {self.where(node)}")
        self.pieces[node] = [((piece, sizes[0], 1, 0),)] * len(sizes)
        if attribute is not None:
            self.split_sizes.append((scope_of(node), attribute, self.pieces[node]))
        return True

    def unequal_parts(self, node: fx.Node, source: tuple, sizes: list[int]) -> bool:
        """``torch.split(x, sizes, 1)``, ``sizes`` held by one list attribute of the module
        running it (MixNet's MixedConv2d): each part reads its share of the layout, a group cut
        by the split keeps at least one channel in each of its parts (``ChannelGroup.runs``),
        and surgery rewrites the attribute to the kept counts. False where this does not
        apply (no such attribute, features per channel after a flatten)."""
        sections = argument(node, 1, "split_size_or_sections", node.kwargs.get("split_size"))
        if node.target not in ("split", torch.split) or not isinstance(sections, list | tuple) \
                or list(sections) != sizes or any(s[2] != 1 for s in source):
            return False
        scope = scope_of(node)
        names = [n for n, v in vars(self.modules.get(scope) or object()).items()
                 if isinstance(v, list | tuple) and list(v) == sizes and not n.startswith("_")]
        if len(names) != 1:
            return False
        ends = list(itertools.accumulate(sizes))
        for end in ends[:-1]:
            self.cut(source, end)
        parts = [_part(source, end - size, end) for size, end in zip(sizes, ends, strict=True)]
        self.split_sizes.append((scope, names[0], parts))
        self.pieces[node] = parts
        return True

    def sliced(self, node: fx.Node, source: tuple, src_shape: tuple, shape: tuple) -> tuple | None:
        """``x[...]``: spatial slices keep the layout; a channel slice takes its part of the
        layout (``channel_part``); other channel slices block the channels."""
        part = self.channel_part(node, source, src_shape)
        return self.stop(source, shape, part) if isinstance(part, str) else part

    def visit_setitem(self, node: fx.Node) -> None:
        """``x[index] = value`` (or ``x[:, :n] += y``, which fx writes as a getitem, an iadd
        and this): the part of ``x``'s channels it writes is joined with ``value``'s (a
        constant value joins nothing); an index or value the engine does not understand
        blocks both."""
        target, _, value = node.args
        source, src_shape = self.source(node)
        if source is None:
            return
        part = self.channel_part(node, source, src_shape) if self.dim == 1 else None
        values = self.layouts.get(value) if isinstance(value, fx.Node) else ()
        value_shape = node_shape(value) if isinstance(value, fx.Node) else None
        if part is None or isinstance(part, str) or values is None or (
            values and (value_shape is None or len(value_shape) != len(src_shape))
        ):
            reason = part if isinstance(part, str) else f"its channels are written in place " \
                f"by {self.describe(node)}, which the engine cannot prune through"
            self.block(source + (values or ()), reason)
        elif values:
            self.join(part, values, f"its channels are written in place {self.where(node)}")

    def channel_part(self, node: fx.Node, source: tuple, src_shape: tuple) -> tuple | str | None:
        """The layout of ``x[index]`` (``node.args[1]``): spatial slices keep the layout; a
        channel slice ``x[:, a:b]`` takes the part of the layout between its bounds, each
        bound other than 0 and the channel count held by one int attribute of the module
        running it (DPN's ``x[:, :self.num_1x1_c]``, ReXNet's ``x[:, 0:self.in_channels]``):
        the channels are cut there (each side keeps at least one, in proportion) and surgery
        rewrites the attribute to the kept count before the bound. Other channel slices give
        the reason they cannot be pruned through; an index not understood gives None."""
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
        width = src_shape[1]
        start, stop = channels.start or 0, width if channels.stop is None else channels.stop
        bounds = [b for b in (start, min(stop, width)) if 0 < b < width]
        scope = self.modules.get(scope_of(node))
        names = [[n for n, v in vars(scope or object()).items()
                  if type(v) is int and v == b and not n.startswith("_")] for b in bounds]
        if channels.step not in (None, 1) or not 0 <= start < min(stop, width) or \
                any(len(n) != 1 for n in names):
            return f"channels {start}:{channels.stop} of {width} are taken at fixed " \
                   f"positions by {self.describe(node)}: pruning would move them"
        for bound, (name,) in zip(bounds, names, strict=True):
            self.cut(source, bound)
            self.split_sizes.append((scope_of(node), name, [_part(source, 0, bound)]))
        return _part(source, start, min(stop, width))

    def elementwise(self, node: fx.Node, shape: tuple) -> tuple | None:
        """Addition or multiplication: operands whose channels line up share their groups; a
        parameter with one value per channel (a layer scale) follows them."""
        dims = {self.dims.get(x, 1) for x in node.all_input_nodes if x in self.layouts}
        if len(dims) != 1:
            return None
        self.dim = dims.pop()
        channels, operands, scales = shape[self.dim], [], []
        for x in node.args:
            x_shape = node_shape(x) if isinstance(x, fx.Node) else None
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
        owner = owner_of(node)
        if owner is None:
            return None
        param = getattr(self.modules.get(owner), node.target.rpartition(".")[2], None)
        if isinstance(param, nn.Parameter) and param.numel() == channels and \
                max(param.shape, default=1) == channels:
            return node.target
        return None


def node_shape(node: object) -> tuple | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if isinstance(meta, TensorMetadata) else None


def reshaped(source: tuple | None, src_shape: tuple | None, shape: tuple | None) -> tuple | None:
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
        return tuple((space, channels, f * spatial, start) for space, channels, f, start in source)
    return None


def node_shapes(node: fx.Node) -> list[tuple] | None:
    """Shapes of the tensors of a tuple output (a split), or None."""
    meta = node.meta.get("tensor_meta")
    if isinstance(meta, list | tuple) and all(isinstance(m, TensorMetadata) for m in meta):
        return [tuple(m.shape) for m in meta]
    return None


def has_tensors(node: fx.Node) -> bool:
    return node_shape(node) is not None or node_shapes(node) is not None


def scope_of(node: fx.Node) -> str:
    """Qualified name of the innermost module whose forward made ``node`` ("" for the model)."""
    stack = node.meta.get("nn_module_stack") or {}
    return next(reversed(stack.values()))[0] if stack else ""


def argument(node: fx.Node, position: int, name: str, default: object = None) -> object:
    return node.args[position] if len(node.args) > position else node.kwargs.get(name, default)


def owner_of(value: object, attribute: str | None = None) -> str | None:
    """The module owning a parameter or buffer read by a get_attr node (with that attribute)."""
    if not isinstance(value, fx.Node) or value.op != "get_attr":
        return None
    owner, _, name = value.target.rpartition(".")
    return owner if attribute in (None, name) else None


def _part(layout: tuple, lo: int, hi: int) -> tuple:
    """The segments of channels ``lo`` to ``hi`` of a layout."""
    part, offset = [], 0
    for space, channels, f, start in layout:
        a, b = max(lo, offset), min(hi, offset + channels)
        if a < b:
            part.append((space, b - a, f, start + a - offset))
        offset += channels
    return tuple(part)


def _merged(layout: tuple) -> tuple:
    """A layout with neighbouring parts of one space (a split concatenated back) joined."""
    merged: list[tuple] = []
    for space, channels, f, start in layout:
        if merged and merged[-1][0] == space and merged[-1][2] == f and \
                merged[-1][3] + merged[-1][1] == start:
            merged[-1] = (space, merged[-1][1] + channels, f, merged[-1][3])
        else:
            merged.append((space, channels, f, start))
    return tuple(merged)


def cross_norm(what: str) -> str:
    return f"its channels reach {what}, which normalises over channels: removing channels " \
           "changes the statistics of the others"
