"""Reading fx nodes for the dependency builder (``filterprune.engine.dependencies``): their
output shapes, arguments, scopes and the parameters they read; and the layout arithmetic shared by
its rules (a layout is a tuple of ``(space, channels, features per channel, start)`` segments)."""

from __future__ import annotations

from torch import fx, nn
from torch.fx.passes.shape_prop import TensorMetadata


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


def layout_part(layout: tuple, lo: int, hi: int) -> tuple:
    """The segments of entries ``lo`` to ``hi`` of a layout (a channel with f features per
    channel spans f entries); a channel cut by a bound gives a segment of one channel with the
    features of it that lie inside (e.g. ``chunk`` of a shuffled map).

    Example:
        >>> layout_part(((7, 3, 4, 0),), 6, 12)  # space 7: 3 channels of 4 entries
        ((7, 1, 2, 1), (7, 1, 4, 2))
    """
    part, offset = [], 0
    for space, channels, f, start in layout:
        a, b = max(lo, offset) - offset, min(hi, offset + channels * f) - offset
        offset += channels * f
        if a >= b:
            continue
        head, tail = -(-a // f), b // f  # the whole channels inside: head to tail
        if a % f:  # the part of a cut channel after a bound
            part.append((space, 1, min(b, head * f) - a, start + a // f))
        if head < tail:
            part.append((space, tail - head, f, start + head))
        if b % f and tail >= head:  # the part of a cut channel before a bound
            part.append((space, 1, b - tail * f, start + tail))
    return tuple(part)


def entries(layout: tuple) -> int:
    """The number of entries of a layout along its dim (channels times features per channel)."""
    return sum(channels * f for _, channels, f, _ in layout)


def merged_layout(layout: tuple) -> tuple:
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
