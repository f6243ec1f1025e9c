"""How channels flow through functions, Tensor methods and channels-last maps: the rules the
dependency builder (``filterprune.engine.dependencies``) applies to ``call_function`` and
``call_method`` nodes, with the helpers that read fx nodes. See that module for the channel model.
"""

from __future__ import annotations

import inspect
import itertools
import math
import operator
import re

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
        count). Returns ``layout``, the output's."""
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
                    sum(s[1] for s in self.layouts[t]) == k * sum(s[1] for s in layout):
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
        ``x.split(self.expand_chs // 2, dim=1)``; of several, the one its forward names, as
        Selective Kernel's ``torch.split(x, self.in_channels // self.num_paths, 1)`` beside an
        equal ``self.out_channels``; surgery rewrites it). Returns False where this does not
        apply."""
        if len(source) != 1 or source[0][2] != 1 or not self.whole(source[0]) or \
                len(sizes) < 2 or len(set(sizes)) > 1:
            return False
        attribute = None
        if node.target in ("split", torch.split):
            scope = self.modules.get(scope_of(node))
            size = argument(node, 1, "split_size_or_sections", node.kwargs.get("split_size"))
            ints = {n: v for n, v in vars(scope or object()).items()
                    if type(v) is int and not n.startswith("_")}
            names = _named_in_forward(scope, [n for n, v in ints.items() if v == size]) or \
                _named_in_forward(scope, [n for n, v in ints.items() if v == size * len(sizes)])
            if size != sizes[0] or len(names) != 1:
                return False
            attribute = names[0]
        elif node.target not in ("chunk", torch.chunk):
            return False
        piece = self.parts(source, len(sizes), f"its channels are split into {len(sizes)} "
                           f"equal parts {self.where(node)}")
        self.pieces[node] = [piece] * len(sizes)
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
        names = _named_in_forward(self.modules.get(scope), [
            n for n, v in vars(self.modules.get(scope) or object()).items()
            if isinstance(v, list | tuple) and list(v) == sizes and not n.startswith("_")])
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
        if batch != slice(None) or not isinstance(channels, slice) or any(
            isinstance(v, fx.Node) for v in (channels.start, channels.stop, channels.step)
        ):
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
        parameter with one value per channel (a layer scale) follows them; an operand
        broadcast over them (a spatial gate) passes nothing on, and its own channels, at
        another dim, are blocked."""
        dims = [self.dims.get(x, 1) for x in node.args if x in self.layouts and
                node_shape(x) is not None and len(node_shape(x)) == len(shape) and
                node_shape(x)[self.dims.get(x, 1)] == shape[self.dims.get(x, 1)]]
        if not dims:
            return None
        self.dim = dims[0]
        channels, operands, scales = shape[self.dim], [], []
        for x in node.args:
            x_shape = node_shape(x) if isinstance(x, fx.Node) else None
            if x_shape is None:
                continue
            moved = x in self.layouts and self.dims.get(x, 1) != self.dim
            position = self.dim - (len(shape) - len(x_shape))
            if (x_shape[position] if 0 <= position < len(x_shape) else 1) != channels:
                if moved:
                    self.block(self.layouts[x], f"its channels reach {self.describe(node)} at "
                               "another dim than the other operand's")
                continue  # broadcast over the channels, e.g. a spatial gate
            if x in self.layouts and len(x_shape) == len(shape) and not moved:
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
        """The layout of each of k equal parts of ``source``'s channels: k copies of one layout
        give it, and the channels of one group give a new group of which the parts are copies
        (joined with ``reason``); None otherwise."""
        n = len(source) // k
        if len(source) % k == 0 and source == source[:n] * k:
            return source[:n]
        if len(source) != 1 or source[0][2] != 1 or not self.whole(source[0]):
            return None
        piece = ((self.new_space(source[0][1] // k), source[0][1] // k, 1, 0),)
        self.join(source, piece * k, reason)
        return piece


def node_shape(node: object) -> tuple | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if isinstance(meta, TensorMetadata) else None


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


def _computed(node: fx.Node, shape: tuple, dim: int) -> bool:
    """Whether a reshape gives its output's dim ``dim`` a size computed in the forward (from a
    shape, or -1), so that it follows a pruning; flatten, squeeze and unsqueeze take none."""
    if node.op == "call_module":  # nn.Unflatten: fixed sizes (nn.Flatten keeps the dim)
        return False
    sizes = _sizes(node)
    if sizes is None:
        return True
    return len(sizes) == len(shape) and (isinstance(sizes[dim], fx.Node) or sizes[dim] == -1)


def _named_in_forward(module: nn.Module | None, names: list[str]) -> list[str]:
    """``names``, attributes of ``module`` that a size in its forward may come from; where
    there are several, only those its forward's source names (``self.NAME``)."""
    if len(names) < 2:
        return names
    try:
        source = inspect.getsource(type(module).forward)
    except (OSError, TypeError):
        return names
    return [n for n in names if re.search(rf"\bself\.{n}\b", source)]


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


def not_conv2d(name: str, conv: nn.Module) -> str:
    return f"'{name}' is a {type(conv).__name__}: the engine prunes the filters of Conv2d " \
           "layers only"


def cross_norm(what: str) -> str:
    return f"its channels reach {what}, which normalises over channels: removing channels " \
           "changes the statistics of the others"
