"""The cost of a candidate plan: MACs, parameters or latency with each prunable group at a kept
count, for many candidate plans at once (used by :mod:`filterprune.engine.budget`).

Costs are those of the whole candidate plan, not a per-layer sum: pruning a group shrinks its
members' outputs, its followers (BatchNorm, depthwise convs) and the inputs of its consumers,
so a conv's MACs scale by (kept outputs / outputs) x (kept inputs / inputs) (a depthwise conv
by its kept channels only; a layer reading part of a split or repeated channels, by the kept
channels of the parts it reads, as the plan keeps them per part). ``CostModel`` evaluates this
from one profile of the unpruned model; it equals ``filterprune.engine.profile`` of the pruned
model (MACs of conv and linear layers, every learnable parameter) and evaluates thousands of
candidate plans per second.
Latency is predicted from a measured per-group table (``filterprune.latency_table``): the
model's latency minus, per group, its table entry at full width minus the entry at the chosen
width (linear between measured widths). The savings of groups are added up, as NetAdapt's and
HALP's lookup tables do; the predicted share is an estimate, say so when it is used.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np
import torch
from torch import nn

from filterprune.engine.graph import ChannelGroup, DependencyGraph, Layout
from filterprune.engine.profile import Profile
from filterprune.errors import FilterpruneError


class LatencyCosts(Protocol):
    """What the latency target reads from a latency table (``filterprune.LatencyTable``):
    ``model_ms`` the unpruned model's latency, ``layers`` group name (first member) -> width ->
    latency in ms of the group's layers and consumers at that width."""

    model_ms: float
    layers: Mapping[str, Mapping[int, float]]


class CostModel:
    """Cost of the model with each prunable group at a kept count (see the module docstring).

    Args:
        model: the unpruned network (for its parameters).
        graph: its dependency graph.
        costs: ``profile(model, example_inputs)``.
        kind: ``"macs"`` or ``"params"``.

    Attributes:
        groups: the prunable groups, in forward order; ``kept`` rows follow this order.
        total: the unpruned cost.
    """

    def __init__(self, model: nn.Module, graph: DependencyGraph, costs: Profile, kind: str):
        self.groups = prunable_groups(graph)
        self._index = {id(g): i for i, g in enumerate(self.groups)}
        member = {name: g for g in graph.groups for name in g.members}
        terms: list[tuple[float, Layout | None, Layout | None]] = []
        if kind == "macs":
            for layer in costs.layers:
                terms.append(self._term(layer.macs, layer.name, graph, member))
        else:
            for name, module in model.named_modules():
                for pname, p in module.named_parameters(recurse=False):
                    if not p.requires_grad:
                        continue
                    base, out_layout, in_layout = self._term(p.numel(), name, graph, member)
                    terms.append((base, out_layout, None if pname == "bias" else in_layout))
        # Variables: the kept share of each run of each group (``ChannelGroup.run_sizes``), as
        # the plan keeps ``per_run(keep)`` channels in each.
        self._runs = [(i, size) for i, g in enumerate(self.groups) for size in g.run_sizes()]
        self._first: dict[int, int] = {}  # group -> its first run
        for j, (i, _) in enumerate(self._runs):
            self._first.setdefault(i, j)
        n = len(self._runs)
        self._base = torch.tensor([t[0] for t in terms], dtype=torch.float64)
        self._out = [self._linear(t[1], n) for t in terms]
        self._in = [self._linear(t[2], n) for t in terms]
        self._out_c = torch.tensor([c for c, _ in self._out], dtype=torch.float64)
        self._in_c = torch.tensor([c for c, _ in self._in], dtype=torch.float64)
        self._out_m = torch.stack([m for _, m in self._out]) if terms else torch.zeros(0, n)
        self._in_m = torch.stack([m for _, m in self._in]) if terms else torch.zeros(0, n)
        self.widths = torch.tensor([g.out_channels for g in self.groups], dtype=torch.float64)
        self._group_of = torch.tensor([i for i, _ in self._runs], dtype=torch.long)
        self._sizes = torch.tensor([size for _, size in self._runs], dtype=torch.float64)
        self.total = float(self._base.sum())

    @staticmethod
    def _term(base: float, name: str, graph: DependencyGraph,
              member: Mapping[str, ChannelGroup]) -> tuple[float, Layout | None, Layout | None]:
        """A cost that scales with a layer's kept outputs and inputs (a follower: its own
        channels only)."""
        if name in graph.followers:
            return base, graph.followers[name], None
        group = member.get(name)
        out_layout = None if group is None else group.layout(name)
        return base, out_layout, graph.inputs.get(name)

    def _linear(self, layout: Layout | None, n: int) -> tuple[float, torch.Tensor]:
        """The kept fraction of ``layout`` as constant + coefficients . (kept / size of each
        run); a segment covering part of a group (a split) reads the runs it overlaps."""
        coefficients = torch.zeros(n, dtype=torch.float64)
        if layout is None:
            return 1.0, coefficients
        total = sum(s.entries for s in layout)
        constant = 0.0
        for s in layout:
            share = s.entries / total
            i = None if s.group is None else self._index.get(id(s.group))
            if i is None:
                constant += share
                continue
            channel = torch.arange(s.channels) + s.start  # in the group's channel order
            ends = torch.tensor(s.group.run_sizes()).cumsum(0)
            runs = torch.bucketize(channel, ends, right=True)
            overlap = torch.bincount(runs, minlength=len(ends)).to(torch.float64)
            first = self._first[i]
            coefficients[first:first + len(ends)] += share * overlap / s.channels
        return constant, coefficients

    def __call__(self, kept: torch.Tensor) -> torch.Tensor:
        """Cost of each column of ``kept`` (groups, K) kept counts -> (K,)."""
        per_run = torch.div(kept.to(torch.float64)[self._group_of] * self._sizes[:, None],
                            self.widths[self._group_of][:, None], rounding_mode="floor")
        x = per_run.clamp(min=1) / self._sizes[:, None]
        out = self._out_c[:, None] + self._out_m @ x
        inp = self._in_c[:, None] + self._in_m @ x
        return self._base @ (out * inp)


class LatencyModel:
    """Predicted latency (ms) with each prunable group at a kept count, from a latency table
    (see the module docstring); a group missing from the table is taken to cost nothing.

    Raises:
        FilterpruneError: a table entry naming no prunable group of the model, or measured for
            another width (the table is from another model).
    """

    def __init__(self, graph: DependencyGraph, table: LatencyCosts):
        self.groups = prunable_groups(graph)
        by_name = {name: g for g in self.groups for name in g.members}
        self._curves: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for name, entries in table.layers.items():
            group = by_name.get(name)
            if group is None:
                raise FilterpruneError(f"the latency table names '{name}', not a prunable "
                                       "layer of this model (a table of another model?)")
            widths = np.array(sorted(int(w) for w in entries), dtype=float)
            if widths[-1] != group.out_channels:
                raise FilterpruneError(
                    f"the latency table measured '{name}' up to {int(widths[-1])} filters, the "
                    f"model has {group.out_channels} (a table of another model?)")
            ms = np.array([entries[w] for w in sorted(entries, key=int)], dtype=float)
            self._curves[self.groups.index(group)] = (widths, ms)
        self.total = float(table.model_ms)

    def measured_widths(self, i: int) -> list[int]:
        """The widths the table measured for group ``i`` (all widths when it has none)."""
        if i not in self._curves:
            return list(range(1, self.groups[i].out_channels + 1))
        return [int(w) for w in self._curves[i][0]]

    def __call__(self, kept: torch.Tensor) -> torch.Tensor:
        saved = np.zeros(kept.shape[1])
        counts = kept.numpy()
        for i, (widths, ms) in self._curves.items():
            saved += ms[-1] - np.interp(counts[i], widths, ms)
        return torch.as_tensor(self.total - saved)


def prunable_groups(graph: DependencyGraph) -> list[ChannelGroup]:
    """The distinct groups of ``graph.layers``, in forward order."""
    return list({id(g): g for g in graph.layers.values()}.values())
