"""Similarity-based filter selection: filters that cluster together are redundant, keep one each.

Each channel group's filters are described by vectors (their weights, or their feature maps on
a batch of images the caller computes and passes in: the engine stays data-free), clustered by
average-linkage agglomerative clustering on cosine distance (SciPy) into exactly as many clusters
as the group keeps filters (per group of a grouped conv, as filterprune.engine.plan keeps equal
counts there), and each cluster keeps its member of largest L1 norm (the filter of
Li et al. 2017, §3.1, among filters that compute nearly the same thing). Sources: the
similarity-based and clustering filter pruning family (e.g. Ayinde & Zurada, "Building efficient
ConvNets using redundant feature pruning", 2018; Ding et al., "Centripetal SGD", CVPR 2019).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from scipy.cluster.hierarchy import cut_tree, linkage
from torch import nn

from filterprune.engine.graph import ChannelGroup, DependencyGraph
from filterprune.engine.plan import PruningPlan, decide_groups
from filterprune.errors import FilterpruneError


def cluster_representatives(descriptors: torch.Tensor, keep: int) -> list[int]:
    """Clusters filters into ``keep`` clusters and returns one index per cluster.

    Args:
        descriptors: one vector per filter, shape (C, D).
        keep: number of clusters (= filters kept), in [1, C].

    Returns:
        ``keep`` sorted indices: in each cluster, the filter of largest L1 norm (lowest index
        on ties).

    Example:
        >>> d = torch.tensor([[1.0, 0.0], [2.0, 0.1], [0.0, 1.0], [0.1, 3.0]])
        >>> cluster_representatives(d, 2)
        [1, 3]
    """
    vectors = descriptors.detach().double().flatten(1)
    if not 1 <= keep <= len(vectors):
        raise FilterpruneError(f"cannot keep {keep} of {len(vectors)} filters")
    norms = vectors.abs().sum(dim=1).numpy()
    if keep == len(vectors):
        return list(range(keep))
    unit = torch.nn.functional.normalize(vectors, dim=1).numpy()  # euclidean on unit = cosine
    labels = cut_tree(linkage(unit, method="average"), n_clusters=keep)[:, 0]
    kept = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        kept.append(int(members[np.argmax(norms[members])]))
    return sorted(kept)


def select_by_clustering(
    model: nn.Module,
    graph: DependencyGraph,
    ratios: Mapping[str, float],
    features: Mapping[str, torch.Tensor] | None = None,
    round_to: int = 1,
) -> PruningPlan:
    """Keeps one filter per cluster of similar filters in every pruned group.

    Args:
        model: the network whose weights describe the filters (not modified).
        graph: its dependency graph (``filterprune.engine.trace``).
        ratios: layer name -> ratio, as returned by ``resolve_ratios``.
        features: if given, layer name -> feature-map descriptors (C_out, D) of every member of
            every pruned group (e.g. its outputs on N images, (N, C_out, H, W) moved to
            (C_out, N*H*W)); else each filter is described by its weight (C_in*kH*kW values).
            A group's descriptors are its members' side by side.
        round_to: round kept counts to a multiple of this.

    Returns:
        The plan (criterion ``"cluster-weights"`` or ``"cluster-features"``).

    Raises:
        FilterpruneError: a pruned member missing from ``features``, or descriptors whose first
            dimension is not the layer's number of filters.
    """
    modules = dict(model.named_modules())

    def describe(name: str, channels: int) -> torch.Tensor:
        if features is None:
            return modules[name].weight.detach().flatten(1)
        if name not in features:
            raise FilterpruneError(f"no feature maps given for layer '{name}'")
        if features[name].shape[0] != channels:
            raise FilterpruneError(
                f"feature descriptors of '{name}' have {features[name].shape[0]} rows, "
                f"the layer has {channels} filters"
            )
        return features[name].detach().flatten(1)

    def representatives(group: ChannelGroup, keep: int) -> list[int]:
        """Clusters each run of a group that grouped convs read or write on its own."""
        blocks = []  # per range of a member's filters, its descriptors at their channels
        for name in group.members:
            rows = describe(name, group.filters(name)).float().cpu()
            offset = 0
            for first, count in group.ranges(name):
                block = rows.new_zeros(group.out_channels, rows.shape[1])
                block[first:first + count] = rows[offset:offset + count]
                blocks.append(block)
                offset += count
        descriptors = torch.cat(blocks, dim=1)
        starts = [sum(group.run_sizes()[:i]) for i in range(len(group.run_sizes()))]
        return [start + i for start, size, count in
                zip(starts, group.run_sizes(), group.per_run(keep), strict=True)
                for i in cluster_representatives(descriptors[start:start + size], count)]

    plan = PruningPlan(criterion="cluster-" + ("weights" if features is None else "features"),
                       residual=graph.residual)
    return decide_groups(model, graph, ratios, representatives, plan, round_to)
