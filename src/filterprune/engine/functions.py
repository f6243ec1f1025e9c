"""How channels flow through functions and Tensor methods along dim 1: element-wise operations,
concatenation, splits and slices, functional convs and norms. The rules the dependency builder
(``filterprune.engine.dependencies``) applies to ``call_function`` and ``call_method`` nodes
(channels at other dims: ``filterprune.engine.dims``). See that module for the channel model.
"""

from __future__ import annotations

import inspect
import itertools
import operator
import re

import torch
import torch.nn.functional as F
from torch import fx, nn

from filterprune.engine import ops
from filterprune.engine.nodes import (
    argument,
    cross_norm,
    entries,
    layout_part,
    merged_layout,
    node_shape,
    node_shapes,
    owner_of,
    scope_of,
)


class FunctionRules:
    """The builder's rules for operations other than layers, mixed into it: they give a node's
    output a layout (or None: not understood, so the builder blocks its inputs) and use the
    builder's union-find (``join``, ``block``, ``fresh``, ``stop``, ``use``, ``new_space``,
    ``cut``)."""

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
            if dim % len(shape) != 1 or None in parts:
                return None
            return merged_layout(sum(parts, ()))
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
        channels = entries(source)
        if isinstance(module, nn.LayerNorm):
            fits = tuple(module.normalized_shape) == (channels,) and self.dim == len(shape) - 1
        elif isinstance(module, nn.GroupNorm):
            per = channels // module.num_groups
            fits = self.dim == 1 and all(s[1] % per == 0 and s[2] == 1 and self.whole(s)
                                         for s in source)
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
        channels = entries(source)
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
        """A split into k equal parts: the whole channels of one group give a new group of
        which the parts are copies (``DimRules.parts``); the parts of other layouts (a
        shuffled map's halves in a ShuffleNet block) keep as many entries each
        (``ChannelSpaces.balance``); the kept count is the new part size (``chunk`` computes it
        from the channels; ``split`` takes it from the one int attribute of the module running
        it that holds it, or else from the one that holds the k parts' total, as CSPNet's
        ``x.split(self.expand_chs // 2, dim=1)``; of several, the one its forward names, as
        Selective Kernel's ``torch.split(x, self.in_channels // self.num_paths, 1)`` beside an
        equal ``self.out_channels``; surgery rewrites it). Returns False where this does not
        apply."""
        if len(sizes) < 2 or len(set(sizes)) > 1:
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
        k, reason = len(sizes), f"its channels are split into {len(sizes)} equal parts " \
            f"{self.where(node)}"
        if entries(source) % k:
            return False
        if self.whole_group(source, k):
            self.pieces[node] = [self.parts(source, k, reason)] * k
        else:
            self.pieces[node] = [layout_part(source, i * sizes[0], (i + 1) * sizes[0])
                                 for i in range(k)]
            self.balance(self.pieces[node], reason)
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
        parts = [layout_part(source, end - size, end)
                 for size, end in zip(sizes, ends, strict=True)]
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
            if not self.cut(source, bound):
                return f"channels {start}:{channels.stop} of {width} are taken by " \
                       f"{self.describe(node)}, whose bound {bound} falls inside the features " \
                       "of one channel (after a channel shuffle): pruning cannot follow it"
            self.split_sizes.append((scope_of(node), name, [layout_part(source, 0, bound)]))
        return layout_part(source, start, min(stop, width))

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
