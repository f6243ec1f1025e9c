"""How much of a model a pruning plan reached: the never-silent report of ``prune``.

A conv is *reached* when the plan changes its cost: its filters are removed (a member of a
pruned group), its per-channel weights shrink (a depthwise follower), or it reads fewer input
channels (a consumer). Shares are of the MACs of all conv layers (Conv1d/2d/3d and transposed
convs, and Linears applied to channels-last feature maps as pointwise convs, as in ConvNeXt),
per image, as ``filterprune.engine.profile`` counts them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from filterprune.engine.graph import ChannelGroup, DependencyGraph
from filterprune.engine.plan import PruningPlan, RatioSpec
from filterprune.engine.profile import Profile

#: ``prune`` warns (``strict=True``: raises) when the plan reaches less than this share of the
#: MACs of the convs it was asked to prune.
MIN_REACHED_SHARE = 0.5


@dataclass(frozen=True)
class BlockedLayer:
    """A conv the engine cannot prune: its name, its MACs per image and why (naming the
    module and operation that block it)."""

    name: str
    macs: int
    reason: str


@dataclass(frozen=True)
class Coverage:
    """What share of the model's conv MACs a plan reached, and what blocked the rest.

    Attributes:
        conv_macs: MACs per image of every conv layer of the model.
        requested_macs: MACs of the convs the ratio asked to prune (every conv not skipped for
            one ratio; the matched ones for a per-layer mapping), blocked ones included.
        reached_macs: MACs of the requested convs whose cost the plan changes.
        prunable_macs: MACs of the convs whose cost would change if every prunable group were
            pruned (the most any ratio can reach under this residual policy).
        blocked: every conv that cannot be pruned, in forward order, with its reason.
        approximate: the layers the plan prunes approximately (``exact=False``), with why.
    """

    conv_macs: int
    requested_macs: int
    reached_macs: int
    prunable_macs: int
    blocked: tuple[BlockedLayer, ...]
    approximate: tuple[tuple[str, str], ...] = ()

    @property
    def reached_share(self) -> float:
        """reached_macs / requested_macs (1.0 when nothing was requested)."""
        return self.reached_macs / self.requested_macs if self.requested_macs else 1.0

    @property
    def prunable_share(self) -> float:
        """prunable_macs / conv_macs (1.0 for a model without convs)."""
        return self.prunable_macs / self.conv_macs if self.conv_macs else 1.0

    @property
    def short(self) -> bool:
        """True when the plan reached less than ``MIN_REACHED_SHARE`` of the requested MACs."""
        return self.reached_share < MIN_REACHED_SHARE

    def describe(self, largest: int = 3) -> str:
        """One line: the shares, then the ``largest`` blocked convs by MACs with their reasons."""
        text = (f"pruning reached {self.reached_share:.0%} of the requested conv MACs; "
                f"{self.prunable_share:.0%} of the model's conv MACs are prunable")
        if self.blocked:
            worst = sorted(self.blocked, key=lambda b: -b.macs)[:largest]
            text += f"; {len(self.blocked)} conv(s) blocked, largest: " + "; ".join(
                f"'{b.name}' ({b.macs / self.conv_macs:.0%} of MACs): {b.reason}" for b in worst)
        if self.approximate:
            text += f"; {len(self.approximate)} layer(s) pruned approximately (exact=False): " \
                    f"{self.approximate[0][1]}"
        return text

    def to_dict(self) -> dict:
        return {
            "conv_macs": self.conv_macs, "requested_macs": self.requested_macs,
            "reached_macs": self.reached_macs, "prunable_macs": self.prunable_macs,
            "reached_share": self.reached_share, "prunable_share": self.prunable_share,
            "blocked": [vars(b) for b in self.blocked],
            "approximate": dict(self.approximate),
        }


def coverage(
    model: nn.Module,
    graph: DependencyGraph,
    plan: PruningPlan,
    costs: Profile,
    ratio: RatioSpec,
    skip: Sequence[str] = (),
) -> Coverage:
    """The coverage of ``plan`` (chosen from ``ratio`` and ``skip``) on ``model``.

    Args:
        model: the unpruned network.
        graph: its dependency graph (``trace``).
        plan: the plan chosen for it.
        costs: ``profile(model, example_inputs)``, for the MACs of each conv.
        ratio, skip: the request the plan was chosen for (see ``prune``).
    """
    macs = {layer.name: layer.macs for layer in costs.layers}
    convs = [name for name, m in model.named_modules()
             if (isinstance(m, nn.modules.conv._ConvNd) or name in graph.layers) and name in macs]
    requested = _requested(convs, ratio, skip)
    reached = _reached(graph, [g for g in graph.groups if g.members[0] in plan.kept])
    prunable = _reached(graph, list(graph.layers.values()))
    return Coverage(
        conv_macs=sum(macs[n] for n in convs),
        requested_macs=sum(macs[n] for n in requested),
        reached_macs=sum(macs[n] for n in requested if n in reached),
        prunable_macs=sum(macs[n] for n in convs if n in prunable),
        blocked=tuple(BlockedLayer(n, macs[n], graph.not_prunable[n])
                      for n in convs if n in graph.not_prunable),
        approximate=tuple(plan.approximate.items()),
    )


def _requested(convs: Sequence[str], ratio: RatioSpec, skip: Sequence[str]) -> list[str]:
    """The convs ``ratio`` gives a ratio > 0 to (prunable or not), less those ``skip`` names."""
    def matches(name: str, keys: Collection[str]) -> bool:
        return any(name == key or fnmatch.fnmatchcase(name, key) for key in keys)

    if isinstance(ratio, Mapping):
        wanted = [n for n in convs if matches(n, [k for k, v in ratio.items() if v > 0])]
    else:
        wanted = list(convs) if ratio > 0 else []
    return [n for n in wanted if not matches(n, skip)]


def _reached(graph: DependencyGraph, groups: Sequence[ChannelGroup]) -> set[str]:
    """Layers whose cost changes when the channels of ``groups`` shrink."""
    ids = {id(g) for g in groups}
    changed = {m for g in groups for m in g.members}
    for table in (graph.inputs, graph.followers):
        for name, layout in table.items():
            if any(s.group is not None and id(s.group) in ids for s in layout):
                changed.add(name)
    return changed
