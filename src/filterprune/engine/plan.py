"""Pruning plans: which filters each layer keeps.

A plan is plain data (layer qualified name -> sorted kept output-channel indices). It is decided
here from scores and ratios, printed and reviewed, saved as JSON, and executed by
filterprune.engine.surgery. ``ratio`` always means the fraction of filters removed, in [0, 1).

Decisions are taken per channel group (filterprune.engine.graph): every member of a group (the
convs whose outputs a residual addition or a gate joins) keeps the same indices, and the plan
lists each member. A group's scores are the sum of its members' criterion scores (each member's
weight (C, ...) -> (C,)), or, with ``score_by``, the sum over the members it names: Li et al.
2017, §3.3 choose the indices of ResNet-34 pruned-C by the projection shortcut's L1 norms alone
(``score_by=["*.downsample.0"]``); a group with no member named (a stage whose shortcuts are all
identities) is scored by all its members. Members get one ratio: a ratio given to some members
applies to the whole group, and skipping a member skips the group.

Rounding rule (paper.md): a layer of n filters pruned at ratio r keeps
``max(1, floor(n * (1 - r)))`` filters, as the public reproductions of Li et al. 2017 do
(ratio 0.1 of 64 filters keeps 57). With ``round_to=m`` the kept count is then rounded to the
nearest multiple of m (at least m, at most n), which can make kernels faster. A group read or
written by grouped convs (``ChannelGroup.chunks`` = c > 1) keeps ``max(1, keep // c)`` channels
in each of its c runs, the highest-scoring of each run.
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from filterprune._io import atomic_write_text
from filterprune.engine.criteria import Criterion, get_criterion
from filterprune.engine.custom import rule_of
from filterprune.engine.graph import ChannelGroup, DependencyGraph, input_weight, layout_index
from filterprune.errors import FilterpruneError

STRATEGIES = ("independent", "greedy")
RatioSpec = float | Mapping[str, float]


@dataclass
class PruningPlan:
    """Kept filters per layer; layers that keep all their filters are left out.

    Attributes:
        kept: layer qualified name -> sorted kept output-channel indices.
        widths: layer qualified name -> original number of filters, for every layer in ``kept``.
        criterion: name of the criterion that scored the filters.
        strategy: ``"independent"`` or ``"greedy"`` (Li et al. 2017, §3.3).
        residual: the residual policy the layers were chosen under, ``"inner"`` or
            ``"coupled"`` (a record; applying a plan does not depend on it).
        approximate: layer -> why pruning it is approximate (``exact=False``): the pruned
            model is not the original with the removed channels zeroed.
    """

    kept: dict[str, list[int]] = field(default_factory=dict)
    widths: dict[str, int] = field(default_factory=dict)
    criterion: str = "l1"
    strategy: str = "independent"
    residual: str = "inner"
    approximate: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "criterion": self.criterion,
            "strategy": self.strategy,
            "residual": self.residual,
            "approximate": dict(self.approximate),
            "layers": {
                name: {"width": self.widths[name], "kept": kept} for name, kept in self.kept.items()
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> PruningPlan:
        """Builds a plan from ``to_dict`` output.

        Raises:
            FilterpruneError: if the data is not a valid plan (indices unsorted, repeated, out of
                range or empty).
        """
        try:
            layers = data["layers"]
            plan = cls(
                kept={name: [int(i) for i in v["kept"]] for name, v in layers.items()},
                widths={name: int(v["width"]) for name, v in layers.items()},
                criterion=str(data.get("criterion", "l1")),
                strategy=str(data.get("strategy", "independent")),
                residual=str(data.get("residual", "inner")),
                approximate={str(k): str(v) for k, v in data.get("approximate", {}).items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise FilterpruneError(f"malformed pruning plan: {e!r}") from e
        for name, kept in plan.kept.items():
            width = plan.widths[name]
            if not kept or kept != sorted(set(kept)) or kept[0] < 0 or kept[-1] >= width:
                raise FilterpruneError(
                    f"malformed pruning plan: kept indices of '{name}' must be sorted, unique, "
                    f"non-empty and in [0, {width})"
                )
        return plan

    def then(self, later: PruningPlan) -> PruningPlan:
        """The plan equal to applying ``self``, then ``later`` to the model ``self`` produced.

        ``later``'s indices refer to the already pruned layers; the result's refer to the original.
        """
        kept = {name: list(indices) for name, indices in self.kept.items()}
        widths = dict(self.widths)
        for name, indices in later.kept.items():
            if name in kept:
                kept[name] = [kept[name][i] for i in indices]
            else:
                kept[name], widths[name] = list(indices), later.widths[name]
        return PruningPlan(kept, widths, later.criterion, later.strategy, later.residual,
                           {**self.approximate, **later.approximate})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> PruningPlan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise FilterpruneError(f"malformed pruning plan JSON: {e}") from e
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        """Writes the plan as JSON, atomically (an interrupted write leaves no partial file)."""
        atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> PruningPlan:
        path = Path(path)
        if not path.is_file():
            raise FilterpruneError(f"pruning plan not found: {path}")
        return cls.from_json(path.read_text())

    def __str__(self) -> str:
        lines = [f"PruningPlan(criterion={self.criterion}, strategy={self.strategy}, "
                 f"residual={self.residual})"]
        width = max((len(n) for n in self.kept), default=5)
        lines.append(f"  {'layer':<{width}}  kept / filters  ratio")
        for name, kept in self.kept.items():
            n = self.widths[name]
            lines.append(f"  {name:<{width}}  {len(kept):>4} / {n:<7}  {1 - len(kept) / n:.2f}"
                         + ("  approximate" if name in self.approximate else ""))
        if self.approximate:
            lines.append(f"  approximate ({len(self.approximate)} layers): "
                         f"{next(iter(self.approximate.values()))}")
        return "\n".join(lines)


def kept_count(n: int, ratio: float, round_to: int = 1) -> int:
    """Number of filters a layer of ``n`` filters keeps at ``ratio`` (see the module docstring)."""
    keep = max(1, math.floor(n * (1 - ratio) + 1e-9))
    if round_to > 1:
        keep = min(n, max(round_to, round_to * round(keep / round_to)))
    return keep


def check_ratio(ratio: object, where: str) -> float:
    """Returns ``ratio`` as a float, or raises ValueError naming it if it is not in [0, 1)."""
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio < 1:
        raise FilterpruneError(f"ratio {ratio!r} for {where} is not a number in [0, 1)")
    return float(ratio)


def _match(graph: DependencyGraph, key: str) -> list[str]:
    """Prunable layers named or matched by ``key``; raises if it names nothing prunable."""
    if key in graph.layers:
        return [key]
    if key in graph.not_prunable:
        graph.check_prunable(key)
    matched = [name for name in graph.layers if fnmatch.fnmatchcase(name, key)]
    if not matched:
        blocked = [n for n in graph.not_prunable if fnmatch.fnmatchcase(n, key)]
        if blocked:
            graph.check_prunable(blocked[0])
        raise FilterpruneError(f"unknown layer or pattern '{key}': it matches no conv layer")
    return matched


def resolve_ratios(
    graph: DependencyGraph, ratio: RatioSpec, skip: Sequence[str] = ()
) -> dict[str, float]:
    """Ratio of every prunable layer, in forward order.

    Args:
        graph: the model's dependency graph.
        ratio: one value for every prunable layer, or a mapping from layer names or glob patterns
            (``layer1.*.conv1``) to ratios. An exact name wins over patterns; among patterns the
            last one that matches wins. Layers matched by nothing are not pruned.
        skip: names or patterns of layers left unpruned.

    Returns:
        Layer name -> ratio, for the layers with a ratio > 0; every member of a group gets the
        group's ratio (see the module docstring).

    Raises:
        ValueError (FilterpruneError): a ratio outside [0, 1), a name/pattern that matches no
            prunable layer (the message says why, e.g. a conv whose output is added to a shortcut
            under ``residual="inner"``), or different ratios for layers sharing their channels.
    """
    if isinstance(ratio, Mapping):
        ratios: dict[str, float] = {}
        exact: set[str] = set()
        for key, value in ratio.items():
            value = check_ratio(value, f"'{key}'")
            for name in _match(graph, key):
                if name not in exact:
                    ratios[name] = value
            if key in graph.layers:
                exact.add(key)
    else:
        value = check_ratio(ratio, "all layers")
        ratios = dict.fromkeys(graph.layers, value)
    skipped = {name for key in skip for name in _match(graph, key)}
    resolved = {}
    for name, group in graph.layers.items():
        value = group_ratio(group, ratios)
        if value > 0 and skipped.isdisjoint(group.members):
            resolved[name] = value
    return resolved


def group_ratio(group: ChannelGroup, ratios: Mapping[str, float]) -> float:
    """The ratio of ``group``: the one given to its members (0 if none is given).

    Raises:
        FilterpruneError: members given different ratios (the message names them).
    """
    given = {name: ratios[name] for name in group.members if name in ratios}
    if len(set(given.values())) > 1:
        listed = ", ".join(f"'{name}' = {value}" for name, value in given.items())
        raise FilterpruneError(
            f"layers sharing their output channels need one ratio, got {listed}"
        )
    return next(iter(given.values()), 0.0)


def select_filters(
    model: nn.Module,
    graph: DependencyGraph,
    ratios: Mapping[str, float],
    criterion: str | Criterion = "l1",
    strategy: str = "independent",
    round_to: int = 1,
    score_by: Sequence[str] = (),
    scores: Mapping[str, torch.Tensor] | None = None,
) -> PruningPlan:
    """Decides which filters each group keeps: the highest-scoring ones.

    Groups are decided in forward order; a group's scores are the sum of its members' scores
    (or of those ``score_by`` names) and every member keeps the same indices (see the module
    docstring).

    Args:
        model: the network whose weights are scored (not modified).
        graph: its dependency graph (``filterprune.engine.trace``); its prunable layers
            (under its residual policy) are the candidates.
        ratios: layer name -> ratio, as returned by ``resolve_ratios``; a group takes the ratio
            of any of its members.
        criterion: a name of ``filterprune.engine.criteria.CRITERIA`` (``"l1"``, ``"l2"``,
            ``"l1-largest"``, ``"random"``) or a callable weight (C_out, C_in, kH, kW) ->
            scores (C_out,).
        strategy: ``"independent"`` scores each layer's full weight; ``"greedy"`` leaves out the
            kernels that read feature maps already removed from the producing layer, deciding
            layers in forward order (Li et al. 2017, §3.3, Fig. 3).
        round_to: round kept counts to a multiple of this (1 = the paper's rule).
        score_by: names or glob patterns of the members that score their group (e.g. the 1x1
            projection shortcuts, §3.3 pruned-C); groups with no such member use all members.
        scores: precomputed scores (C_out,) per layer name, e.g. the activation criteria of
            ``filterprune.engine.activations``; they replace ``criterion`` (then only the
            plan's label) and ``strategy`` (no weights are scored) for the pruned groups.

    Returns:
        The plan. Ties between equal scores keep the lower index.

    Raises:
        FilterpruneError: unknown criterion or strategy, round_to < 1, members of a group
            given different ratios, a ``score_by`` entry that names no member of any group, or
            ``scores`` lacking a pruned layer or of the wrong length.
    """
    if strategy not in STRATEGIES:
        raise FilterpruneError(f"unknown strategy '{strategy}' (known: {', '.join(STRATEGIES)})")
    if round_to < 1:
        raise FilterpruneError(f"round_to must be >= 1, got {round_to}")
    score = None if scores is not None else get_criterion(criterion)
    modules = dict(model.named_modules())
    plan = PruningPlan(
        criterion=getattr(criterion, "__name__", "custom") if callable(criterion) else criterion,
        strategy=strategy,
        residual=graph.residual,
    )
    for key in score_by:
        if not any(fnmatch.fnmatchcase(name, key) for g in graph.groups for name in g.members):
            raise FilterpruneError(f"unknown layer or pattern '{key}' in score_by: it names no "
                                   "layer producing channels")

    def highest(group: ChannelGroup, keep: int) -> list[int]:
        return _top(group_scores(group, score_by, lambda name: (
            score(_weight(name, modules[name], graph, plan, strategy)) if score is not None
            else _given(scores, name, group.filters(name)))), keep, group)

    return decide_groups(model, graph, ratios, highest, plan, round_to)


def group_scores(
    group: ChannelGroup, score_by: Sequence[str], score: Callable[[str], torch.Tensor]
) -> torch.Tensor:
    """A group's channel scores (C,): the sum of its members' filter scores (``score(name)``,
    one per filter, folded onto the channels: ``ChannelGroup.fold``), or of the members
    ``score_by`` names on the channels they cover (all members' on the others)."""
    named = [n for n in group.members if any(fnmatch.fnmatchcase(n, key) for key in score_by)]
    total = sum(group.fold(n, score(n)) for n in named or group.members)
    covered = torch.zeros(group.out_channels, dtype=torch.bool)
    for name in named:
        covered[group.channels(name)] = True
    if named and not covered.all():
        others = sum(group.fold(n, score(n)) for n in group.members if n not in named)
        total = torch.where(covered.to(total.device), total, others)
    return total


Chooser = Callable[[ChannelGroup, int], Sequence[int]]


def decide_groups(
    model: nn.Module,
    graph: DependencyGraph,
    ratios: Mapping[str, float],
    choose: Chooser,
    plan: PruningPlan,
    round_to: int = 1,
) -> PruningPlan:
    """Fills ``plan`` group by group, in forward order, with the indices ``choose`` keeps.

    The common loop of every selection rule (``select_filters``, the clustering rule of
    ``filterprune.engine.cluster``): the kept count of each group follows from its ratio
    (``kept_count``), every member keeps the same indices, and the depthwise followers of pruned
    groups are listed too (``follower_convs``).

    Args:
        model: the network (not modified).
        graph: its dependency graph.
        ratios: layer name -> ratio, as returned by ``resolve_ratios``.
        choose: (group, number to keep) -> the kept indices (any order, no repeats).
        plan: the plan to fill (its criterion/strategy fields are the caller's record).
        round_to: round kept counts to a multiple of this.

    Returns:
        ``plan``, filled.
    """
    modules = dict(model.named_modules())
    groups = {id(group): group for group in graph.layers.values()}
    for group in groups.values():
        keep = kept_count(group.out_channels, group_ratio(group, ratios), round_to)
        if keep == group.out_channels:
            continue
        kept = sorted(int(i) for i in choose(group, keep))
        for name in group.members:
            if group.approximate:
                plan.approximate[name] = group.approximate
            plan.kept[name] = group.tiled(name, kept)
            plan.widths[name] = group.filters(name)
    for name, kept in follower_convs(graph, modules, plan.kept).items():
        plan.kept[name], plan.widths[name] = kept, modules[name].out_channels
    return plan


def _top(scores: torch.Tensor, keep: int, group: ChannelGroup) -> list[int]:
    """Sorted indices of the highest scores (ties keep the lower index): in each of the
    group's runs, as many as ``group.per_run(keep)`` says."""
    kept, start = [], 0
    for size, count in zip(group.run_sizes(), group.per_run(keep), strict=True):
        order = torch.sort(scores[start:start + size], descending=True, stable=True).indices
        kept += (order[:count] + start).tolist()
        start += size
    return sorted(kept)


def follower_convs(
    graph: DependencyGraph, modules: Mapping[str, nn.Module], kept: Mapping[str, Sequence[int]]
) -> dict[str, list[int]]:
    """Kept output channels of the depthwise convs whose channels follow pruned groups.

    They are not chosen (their channels follow their input), but their output channels change,
    so a plan lists them too.
    """
    follows = {}
    for name, layout in graph.followers.items():
        index = layout_index(layout, kept) if isinstance(modules.get(name), nn.Conv2d) else None
        if index is not None:
            follows[name] = index.tolist()
    return follows


def _given(scores: Mapping[str, torch.Tensor], name: str, channels: int) -> torch.Tensor:
    """The precomputed scores of layer ``name``, checked to be one per filter."""
    if name not in scores:
        raise FilterpruneError(f"no precomputed scores for layer '{name}'")
    given = torch.as_tensor(scores[name]).float()
    if given.shape != (channels,):
        raise FilterpruneError(
            f"precomputed scores of '{name}' have shape {tuple(given.shape)}, "
            f"expected ({channels},)"
        )
    return given


def _weight(
    name: str, module: nn.Module, graph: DependencyGraph, plan: PruningPlan, strategy: str
) -> torch.Tensor:
    """The weight to score; under greedy, without the inputs already removed (§3.3)."""
    index = None
    if strategy == "greedy" and rule_of(module) is None:
        index = layout_index(graph.inputs[name], plan.kept)
    return filter_weight(module) if index is None else input_weight(module, index)


def filter_weight(module: nn.Module) -> torch.Tensor:
    """The weight a criterion scores, filters first: ``module.weight``, or a registered
    layer's first output tensor (``filterprune.engine.custom``)."""
    rule = rule_of(module)
    if rule is None:
        return module.weight
    key, dim = next(iter(rule.outputs.items()))
    return dict(module.named_parameters(recurse=False))[key].movedim(dim, 0)
