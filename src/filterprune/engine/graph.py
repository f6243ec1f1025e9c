"""The data model of channel dependencies, and the index arithmetic on it.

A :class:`DependencyGraph` (found by ``filterprune.engine.trace``) lists the
:class:`ChannelGroup` s of a model: channels pruned at the same indices, with the layers that
produce them (members), follow them (per-channel weights) and read them (consumers). A layer's
input is a *layout*: the :class:`Segment` s of channels it reads, in order. ``layout_index`` and
``input_weight`` turn a plan's kept indices into the kept entries of a layout and of a weight.
Li et al. 2017, §3.1 (what is removed with a filter).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from filterprune.engine.profile import Profile
from filterprune.errors import FilterpruneError

RESIDUAL_POLICIES = ("inner", "coupled")
TRACERS = ("auto", "fx", "record")


@dataclass
class Consumer:
    """A layer that reads the channels of a group on its input side.

    Attributes:
        name: qualified module name.
        kind: ``"conv"`` (input channels) or ``"linear"`` (input features after a flatten).
        features_per_channel: inputs per channel (H*W of a flattened feature map; 1 for a conv).
        offset: index of the group's first input (channel or feature) in the layer's input,
            non-zero after a concatenation.
    """

    name: str
    kind: str
    features_per_channel: int = 1
    offset: int = 0


@dataclass
class ChannelGroup:
    """Channels that are pruned at the same indices, with every layer that changes with them.

    Attributes:
        members: layers whose output channels these are (convs with groups=1 and Linears), in
            forward order; more than one when a residual addition or a gate joins them.
        out_channels: number of channels (C).
        followers: layers pruned at the same indices on their per-channel weights (BatchNorms,
            depthwise convs, per-channel PReLUs), in forward order.
        consumers: layers whose inputs read these channels.
        coupling: why the group has several members (the joining operation), or None.
        blocked: why the channels cannot be pruned at all, or None.
        chunks: the channels form this many equal runs, each keeping the same number of
            channels (grouped convs read or write them per group); 1 otherwise.
        runs: the sizes of the unequal parts a split or slice cuts the channels into
            (MixNet's ``torch.split(x, self.splits, 1)``, DPN's ``x[:, :self.num_1x1_c]``), or
            that members cover differently (the channels a shortcut is added to, and the
            others), each keeping at least one channel, in proportion; empty otherwise.
        approximate: why pruning these channels changes the model beyond the removed channels
            (LayerNorm/GroupNorm over them, weight standardisation), when ``exact=False`` let
            them be pruned; None for exact groups.
        covers: member -> the group channels its filters are, in filter order, as ranges
            (first channel, count), for members whose filters are not the group's channels
            in order: a conv whose k * C filters were joined with k copies of the C channels
            (a GhostNet shortcut conv added to ``cat([x, depthwise(x)])``: ``((0, C),) * k``),
            or whose filters are only partly joined with others (ReXNet's
            ``x[:, :in_chs] + shortcut``: the shortcut's conv covers ``((0, in_chs),)``; DPN's
            dual path: a conv covers the residual channels, then its own dense channels).
    """

    members: list[str]
    out_channels: int
    followers: list[str] = field(default_factory=list)
    consumers: list[Consumer] = field(default_factory=list)
    coupling: str | None = None
    blocked: str | None = None
    chunks: int = 1
    runs: tuple[int, ...] = ()
    approximate: str | None = None
    covers: dict[str, tuple[tuple[int, int], ...]] = field(default_factory=dict)
    _channels: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)
    _sources: list[tuple[str, int, int, int]] = field(default_factory=list, repr=False,
                                                      compare=False)

    def run_sizes(self) -> list[int]:
        """The sizes of the runs that keep channels each on their own (one run if none)."""
        return list(self.runs) or [self.out_channels // self.chunks] * self.chunks

    def per_run(self, keep: int) -> list[int]:
        """How many channels each run keeps when the group keeps ``keep``: ``keep // chunks``
        per equal run, ``keep * size // C`` per unequal run, at least one."""
        return [max(1, keep * size // self.out_channels) for size in self.run_sizes()]

    def ranges(self, name: str) -> tuple[tuple[int, int], ...]:
        """Member ``name``'s filters as group channel ranges (first channel, count)."""
        return self.covers.get(name, ((0, self.out_channels),))

    def filters(self, name: str) -> int:
        """The number of filters of member ``name``."""
        return sum(count for _, count in self.ranges(name))

    def channels(self, name: str) -> torch.Tensor:
        """The group channel of each filter of member ``name``, shape (filters,) int64."""
        if name not in self._channels:
            self._channels[name] = torch.cat([torch.arange(first, first + count)
                                              for first, count in self.ranges(name)])
        return self._channels[name]

    def layout(self, name: str) -> Layout:
        """Member ``name``'s output channels as segments of the group."""
        return tuple(Segment(self, count, 1, first) for first, count in self.ranges(name))

    def fold(self, name: str, scores: torch.Tensor) -> torch.Tensor:
        """Member ``name``'s scores (one per filter) -> (C,): the filters of a channel score
        together (0 for channels the member does not cover)."""
        total = torch.zeros(self.out_channels, dtype=scores.dtype, device=scores.device)
        return total.index_add_(0, self.channels(name).to(scores.device), scores)

    def tiled(self, name: str, kept: Sequence[int]) -> list[int]:
        """The kept filters of member ``name`` when the group keeps channels ``kept``."""
        if name not in self.covers:
            return list(kept)
        keep = torch.zeros(self.out_channels, dtype=torch.bool)
        keep[list(kept)] = True
        return keep[self.channels(name)].nonzero().flatten().tolist()

    def sources(self) -> list[tuple[str, int, int, int]]:
        """Where each channel is read from: runs (member, first filter, past its last filter,
        first channel) of the first member covering each channel."""
        if not self._sources:
            owner: list[tuple[str, int] | None] = [None] * self.out_channels
            for name in self.members:
                for f, c in enumerate(self.channels(name).tolist()):
                    owner[c] = owner[c] or (name, f)
            for c, (name, f) in enumerate(owner):
                last = self._sources[-1] if self._sources else None
                if last and last[0] == name and last[2] == f and last[3] + f - last[1] == c:
                    self._sources[-1] = (name, last[1], f + 1, last[3])
                else:
                    self._sources.append((name, f, f + 1, c))
        return self._sources

    def kept_channels(self, kept: Mapping[str, Sequence[int]]) -> list[int] | None:
        """The group's kept channels (sorted), from the sorted kept filters ``kept[member]``
        of its members; None if its first member is not listed (nothing removed). Each channel
        is read from the first member covering it (``check_plan`` checks the others agree)."""
        if self.members[0] not in kept:
            return None
        if not self.covers:
            return list(kept[self.members[0]])
        channels = []
        for name, lo, hi, channel in self.sources():
            indices = kept.get(name, range(lo, hi))
            a, b = bisect.bisect_left(indices, lo), bisect.bisect_left(indices, hi)
            channels += [channel + i - lo for i in indices[a:b]]
        return sorted(channels)


@dataclass
class Segment:
    """A run of channels in a layer's input or weight: ``channels`` channels of ``group`` (None
    for channels that are never pruned, such as the model input) from its channel ``start`` on
    (a part of a split or slice), each spread over ``features_per_channel`` consecutive entries
    (H*W after a flatten, else 1)."""

    group: ChannelGroup | None
    channels: int
    features_per_channel: int = 1
    start: int = 0

    @property
    def entries(self) -> int:
        """Its entries along the layer's channel dim: channels x features per channel."""
        return self.channels * self.features_per_channel


Layout = tuple[Segment, ...]


@dataclass
class DependencyGraph:
    """The channel groups of a model and the prunable convs under a residual policy.

    Attributes:
        layers: prunable conv name -> its group, in forward order (under ``residual``).
        not_prunable: conv name -> why it cannot be pruned (under ``residual``).
        groups: every group with at least one member, in forward order.
        inputs: conv or Linear name -> layout of its input channels (features for a Linear).
        followers: follower name -> layout of its per-channel weights.
        residual: the policy ``layers`` follows: ``"inner"`` or ``"coupled"``.
        split_sizes: (module, attribute, parts): the module's forward splits a feature map
            into ``parts`` (their layouts) at the sizes ``module.attribute`` holds: an int, the
            size of equal parts (Res2Net's ``torch.split(x, self.width, 1)``) or their total
            (CSPNet's ``x.split(self.expand_chs // 2, dim=1)``), or a list
            (MixNet's ``torch.split(x, self.splits, 1)``); a channel slice's bound is one part,
            the channels before it (DPN's ``x[:, :self.num_1x1_c]``); surgery sets it to the
            parts' kept channel counts.
        prune_linear: whether hidden Linear layers of heads are prunable layers (``trace``).
        exact: False when approximate groups may be pruned (``trace``).
        profile: MACs and output shapes of the model's conv and Linear layers on the example
            inputs ``trace`` ran (None for a graph built otherwise).
    """

    layers: dict[str, ChannelGroup]
    not_prunable: dict[str, str]
    groups: list[ChannelGroup] = field(default_factory=list)
    inputs: dict[str, Layout] = field(default_factory=dict)
    followers: dict[str, Layout] = field(default_factory=dict)
    residual: str = "inner"
    split_sizes: list[tuple[str, str, list[Layout]]] = field(default_factory=list)
    prune_linear: bool = False
    exact: bool = True
    profile: Profile | None = None

    def check_prunable(self, name: str) -> ChannelGroup:
        """Returns the group of ``name``, or raises FilterpruneError saying why it cannot be
        pruned under the graph's residual policy."""
        if name in self.layers:
            return self.layers[name]
        if name in self.not_prunable:
            raise FilterpruneError(f"layer '{name}' cannot be pruned: {self.not_prunable[name]}")
        raise FilterpruneError(f"unknown layer '{name}': not a conv layer of the model")

    def group_of(self, name: str) -> ChannelGroup:
        """The group whose member ``name`` is, whatever the policy.

        Raises:
            FilterpruneError: ``name`` is not a conv or Linear producing channels of the model.
        """
        for group in self.groups:
            if name in group.members:
                return group
        raise FilterpruneError(f"unknown layer '{name}': not a conv layer of the model")


def layout_index(layout: Layout, kept: Mapping[str, Sequence[int]]) -> torch.Tensor | None:
    """Indices of the entries of ``layout`` that remain when each group keeps the channels its
    members keep (``ChannelGroup.kept_channels``).

    Args:
        layout: the segments of a layer's input (or per-channel weights).
        kept: member layer name -> sorted kept filter indices (a plan's ``kept``).

    Returns:
        Kept entry indices, shape (n,) int64, in increasing order; None if nothing is removed.

    Example:
        >>> g = ChannelGroup(["a"], 3)
        >>> layout_index((Segment(None, 2), Segment(g, 3, 2)), {"a": [0, 2]}).tolist()
        [0, 1, 2, 3, 6, 7]
    """
    parts, offset, changed = [], 0, False  # (first entry, kept channels, features each)
    for segment in layout:
        group, start, f = segment.group, segment.start, segment.features_per_channel
        indices = None if group is None else group.kept_channels(kept)
        changed |= indices is not None
        if indices is None:
            channels = range(segment.channels)
        elif start == 0 and segment.channels == group.out_channels:
            channels = indices
        else:
            channels = [i - start for i in indices if start <= i < start + segment.channels]
        parts.append((offset, channels, f))
        offset += segment.channels * f
    if not changed:
        return None
    if all(f == 1 for _, _, f in parts):  # most layouts: one tensor made from a list
        entries = []
        for first, channels, _ in parts:
            entries += [first + c for c in channels] if first else channels
        return torch.tensor(entries, dtype=torch.long)
    return torch.cat([(first + torch.tensor(channels, dtype=torch.long)[:, None] * f
                       + torch.arange(f)).flatten() for first, channels, f in parts])


def input_weight(layer: nn.Conv2d | nn.Linear, index: torch.Tensor) -> torch.Tensor:
    """The weight of a conv or Linear restricted to the kept inputs ``index`` (see
    ``layout_index``); a grouped conv keeps in each conv group's rows the kernels of that
    group's kept input channels (the same number per group).

    Shapes: weight (C_out, C_in / groups, kH, kW) or (out, in) -> (C_out, len(index) / groups,
    kH, kW) or (out, len(index)).
    """
    weight, groups = layer.weight, getattr(layer, "groups", 1)
    if groups == 1:
        return weight.index_select(1, index.to(weight.device))
    local = index.view(groups, -1) - torch.arange(groups)[:, None] * (layer.in_channels // groups)
    rows = local.repeat_interleave(weight.shape[0] // groups, dim=0).to(weight.device)
    return weight.gather(1, rows[:, :, None, None].expand(-1, -1, *weight.shape[2:]))
