"""Budgets, not ratios: per-layer ratios chosen so that the pruned model loses a target share of
its MACs, parameters or latency.

Two ways to choose (``allocate``; a third, ``"uniform"``, one ratio for every layer, is the
reference they are compared with):

- **Global ranking** (data-free; Torch-Pruning's global pruning is the peer): every prunable
  group's filters are scored by the criterion (a group's score is the sum over its members, or
  over those ``score_by`` names, as ``select_filters`` does), the scores are normalised per
  group by dividing by the group's mean score (Torch-Pruning's default ``normalizer="mean"``;
  ``"max"`` or None are the alternatives), and one threshold over all of them decides how many
  filters each group keeps. The threshold is found by binary search over the sorted scores so
  that the share removed is the nearest to the target.
- **Sensitivity-driven** (from ``filterprune.sensitivity``, Li et al. 2017, §3.2): each group's
  predicted loss at ratio r is its measured drop (baseline minus score of the model with that
  group alone pruned at r), linearly interpolated between the measured ratios (0 at r = 0) and
  made non-decreasing in r (a drop measured lower at a larger ratio is noise). Starting from the
  unpruned model, a greedy loop moves, at each step, the one group to the smaller width with
  the least predicted loss per unit of cost saved (over every larger candidate ratio of every
  group, so a flat stretch after a steep one is still seen), until the target share is
  removed; a move that would overshoot the target by more than one point is taken only when
  no other move is left. This is NNI's SensitivityPruner (which prunes the least sensitive
  layers first to a budget) with NetAdapt's (Yang et al., ECCV 2018) cost per step, and for
  latency HALP's (Shen et al., 2021) latency tables. Groups the result does not cover are left
  unpruned (listed in ``Budget.unmeasured``); ratios beyond the largest measured one are not
  tried.

The cost of each candidate plan (MACs, parameters, or latency from a table) is computed by
:mod:`filterprune.engine.costs`.

Every group keeps at least one filter, kept counts follow ``kept_count`` (``round_to``), and a
group read or written by grouped convs keeps the same number in each conv group.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import nn

from filterprune.engine.costs import CostModel, LatencyCosts, LatencyModel
from filterprune.engine.criteria import Criterion, get_criterion
from filterprune.engine.graph import ChannelGroup, DependencyGraph
from filterprune.engine.plan import filter_weight, group_scores, kept_count, resolve_ratios
from filterprune.engine.profile import Profile
from filterprune.errors import FilterpruneError

TARGETS = ("macs", "params", "latency")
METHODS = ("global", "sensitivity", "uniform")
NORMALIZERS = ("mean", "max", None)
#: The allocation aims within this share (one point) of the target.
TOLERANCE = 0.01
#: Ratio step of the sensitivity-driven candidates (between measured ratios, interpolated):
#: every kept count of a group of up to 256 filters, steps of width / 256 above.
RATIO_STEP = 1 / 256


class SensitivityCurves(Protocol):
    """What the allocation reads from a sensitivity result (``filterprune.SensitivityResult``
    has these): ``ratios`` in [0, 1), ``layers`` name -> score per ratio (higher is better),
    ``baseline`` the unpruned score, ``members`` name -> the members of a coupled group."""

    ratios: Sequence[float]
    layers: Mapping[str, Sequence[float]]
    baseline: float
    members: Mapping[str, Sequence[str]]


@dataclass
class Budget:
    """The per-layer ratios chosen for a target, and what they achieve.

    Attributes:
        target: ``"macs"``, ``"params"`` or ``"latency"``.
        share: the requested share of the unpruned model's cost to remove, in (0, 1).
        achieved: the share removed by the chosen ratios (for latency, predicted from the table).
        method: ``"global"`` (global ranking), ``"sensitivity"`` or ``"uniform"``.
        ratios: layer name -> ratio, every member of every pruned group.
        predicted_loss: with ``"sensitivity"``, the sum of the groups' interpolated drops of
            the metric (an additive prediction, not a measurement).
        reachable: the largest share any allocation could remove (skip list, one filter kept
            per group, for sensitivity the largest measured ratio).
        unmeasured: prunable layers left whole because the sensitivity result has no curve for
            their group.
    """

    target: str
    share: float
    achieved: float
    method: str
    ratios: dict[str, float] = field(default_factory=dict)
    predicted_loss: float | None = None
    reachable: float = 1.0
    unmeasured: list[str] = field(default_factory=list)

    @property
    def within(self) -> bool:
        """True when the achieved share is within one point of the target."""
        return abs(self.achieved - self.share) <= TOLERANCE + 1e-9

    def describe(self) -> str:
        """One line: the method, the target and what was achieved."""
        text = (f"{self.method} allocation removed {self.achieved:.1%} of the {self.target} "
                f"(target {self.share:.1%})")
        if not self.within:
            text += ": not within one point, the steps the layers' filter counts allow are coarse"
        if self.unmeasured:
            text += f"; {len(self.unmeasured)} layer(s) left whole (no sensitivity curve)"
        return text

    def to_dict(self) -> dict:
        return asdict(self)


def check_target(target: object) -> tuple[str, float]:
    """``{"macs": 0.5}`` -> ("macs", 0.5).

    Raises:
        FilterpruneError: not one entry, an unknown cost, or a share outside (0, 1).
    """
    if not isinstance(target, Mapping) or len(target) != 1:
        raise FilterpruneError(
            f"target must be one entry such as {{'macs': 0.5}} ({', '.join(TARGETS)}), "
            f"got {target!r}")
    (kind, share), = target.items()
    if kind not in TARGETS:
        raise FilterpruneError(f"unknown target '{kind}' (known: {', '.join(TARGETS)})")
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share < 1:
        raise FilterpruneError(f"target {kind}={share!r} is not a share in (0, 1)")
    return kind, float(share)


def allocate(
    model: nn.Module,
    graph: DependencyGraph,
    costs: Profile,
    target: Mapping[str, float],
    *,
    sensitivity: SensitivityCurves | None = None,
    latency: LatencyCosts | None = None,
    criterion: str | Criterion = "l1",
    score_by: Sequence[str] = (),
    skip: Sequence[str] = (),
    round_to: int = 1,
    normalize: str | None = "mean",
    method: str | None = None,
) -> Budget:
    """Per-layer ratios that remove ``target`` of the model's cost (see the module docstring).

    Args:
        model: the unpruned network (not modified).
        graph: its dependency graph (``trace``); its prunable layers are the candidates.
        costs: ``profile(model, example_inputs)``.
        target: one entry, ``{"macs": s}``, ``{"params": s}`` or ``{"latency": s}``, the share
            s in (0, 1) of the unpruned cost to remove.
        sensitivity: a sensitivity result of this model (``filterprune.sensitivity``, same
            residual policy): sensitivity-driven allocation; None: global ranking.
        latency: the latency table of this model on the target device; needed for a
            ``"latency"`` target.
        criterion: with global ranking, what scores the filters (``select_filters``).
        score_by: with global ranking, the members whose scores score a shared group.
        skip: names or patterns of layers left whole.
        round_to: kept counts are multiples of this (``kept_count``).
        normalize: with global ranking, per-group normalisation of the scores: ``"mean"``,
            ``"max"`` or None.
        method: ``"global"``, ``"sensitivity"`` or ``"uniform"`` (one ratio for every allowed
            layer, the one nearest the target: the reference the others are compared with);
            None: ``"sensitivity"`` when ``sensitivity`` is given, else ``"global"``.

    Returns:
        The :class:`Budget`: ratios per layer, achieved share (nearest to the target the
        model's granularity allows; ``Budget.within`` says if within one point).

    Raises:
        FilterpruneError: a malformed target or a share outside (0, 1); a latency target
            without a table; a target beyond the reachable share (the message gives it); a
            sensitivity result or latency table of another model (a layer it names is not a
            prunable layer of this one, or its group differs); an unknown normaliser.
    """
    kind, share = check_target(target)
    if normalize not in NORMALIZERS:
        raise FilterpruneError(f"unknown normalisation '{normalize}' (mean, max or None)")
    cost, free = _cost_model(model, graph, costs, kind, latency, skip)
    method = method or ("global" if sensitivity is None else "sensitivity")
    if method not in METHODS or (method == "sensitivity") != (sensitivity is not None):
        raise FilterpruneError(f"allocation method '{method}' ({', '.join(METHODS)}; "
                               "'sensitivity' exactly when a sensitivity result is given)")
    if method == "uniform":
        return _uniform(cost, free, kind, share, round_to)
    if method == "global":
        return _global(model, cost, free, kind, share, criterion, score_by, round_to, normalize)
    return _by_sensitivity(cost, free, kind, share, sensitivity, round_to)


def max_share(
    model: nn.Module,
    graph: DependencyGraph,
    costs: Profile,
    kind: str,
    *,
    latency: LatencyCosts | None = None,
    skip: Sequence[str] = (),
    round_to: int = 1,
    largest_ratio: float | None = None,
) -> float:
    """The largest share of the cost ``kind`` that an allocation can remove: every prunable
    layer not in ``skip`` pruned to one filter (global ranking, uniform) or, with
    ``largest_ratio``, at that ratio (the sensitivity-driven allocation tries no ratio beyond
    the largest measured one). Checks a target before any data is seen.

    Args:
        model, graph, costs, latency, skip, round_to: as in ``allocate``.
        kind: ``"macs"``, ``"params"`` or ``"latency"``.
        largest_ratio: in [0, 1]; None: one filter kept per group.

    Returns:
        The share in [0, 1) (for latency, predicted from the table).

    Raises:
        FilterpruneError: a latency target without a table, or a table of another model.
    """
    cost, free = _cost_model(model, graph, costs, kind, latency, skip)
    ratio = 1.0 if largest_ratio is None else largest_ratio
    kept = torch.tensor([_kept(g, ratio, round_to) if i in free else g.out_channels
                         for i, g in enumerate(cost.groups)])
    return 1 - float(cost(kept[:, None])[0]) / cost.total


def _cost_model(model, graph, costs, kind, latency, skip) -> tuple:
    """The cost model of ``kind`` and the indices of its groups that ``skip`` leaves free."""
    if kind == "latency" and latency is None:
        raise FilterpruneError("a latency target needs a latency table of the model on the "
                               "target device (filterprune.latency_table)")
    cost = LatencyModel(graph, latency) if kind == "latency" else CostModel(model, graph,
                                                                            costs, kind)
    allowed = {id(graph.layers[name]) for name in resolve_ratios(graph, 0.5, skip)}
    return cost, [i for i, g in enumerate(cost.groups) if id(g) in allowed]


def _kept(group: ChannelGroup, ratio: float, round_to: int) -> int:
    """What the plan keeps of ``group`` at ``ratio`` (``kept_count``, equal per conv group)."""
    keep = kept_count(group.out_channels, ratio, round_to)
    return max(1, keep // group.chunks) * group.chunks


def _budget(cost, kept: torch.Tensor, kind: str, share: float, method: str,
            reachable: float, **extra) -> Budget:
    ratios = {name: 1 - int(k) / g.out_channels
              for g, k in zip(cost.groups, kept.tolist(), strict=True)
              if k < g.out_channels for name in g.members}
    achieved = 1 - float(cost(kept[:, None])[0]) / cost.total
    return Budget(kind, share, achieved, method, ratios, reachable=reachable, **extra)


def _reachable(cost, smallest: torch.Tensor, kind: str, share: float, skip_note: str) -> float:
    """The largest removable share; raises if ``share`` is beyond it by more than a point."""
    reach = 1 - float(cost(smallest[:, None])[0]) / cost.total
    if share > reach + TOLERANCE:
        raise FilterpruneError(
            f"target {kind}={share:g} is unreachable: pruning every allowed layer as far as "
            f"{skip_note} removes at most {reach:.1%} of the {kind}")
    return reach


def _global(model, cost, free, kind, share, criterion, score_by, round_to, normalize) -> Budget:
    """Global ranking: one threshold over the per-group normalised scores."""
    score = get_criterion(criterion)
    modules = dict(model.named_modules())
    full = torch.tensor([g.out_channels for g in cost.groups])
    normalised = {}
    for i in free:
        group = cost.groups[i]
        s = group_scores(group, score_by,
                         lambda n: score(filter_weight(modules[n])).detach().double())
        scale = s.mean() if normalize == "mean" else s.max() if normalize == "max" else 1.0
        normalised[i] = torch.sort(s / scale if float(scale) > 0 else s).values

    def kept_at(threshold: float) -> torch.Tensor:
        kept = full.clone()
        for i, s in normalised.items():
            n = len(s) - int(torch.searchsorted(s, threshold))  # scores >= threshold
            kept[i] = _kept(cost.groups[i], 1 - n / len(s), round_to)
        return kept

    reach = _reachable(cost, kept_at(float("inf")), kind, share, "one filter kept per group")
    thresholds = torch.unique(torch.cat([*normalised.values(),
                                         torch.full((1,), -torch.inf, dtype=torch.float64)]))
    best = _nearest(cost, kept_at, thresholds.tolist() + [float("inf")], share)
    return _budget(cost, best, kind, share, "global", reach)


def _uniform(cost, free, kind, share, round_to) -> Budget:
    """One ratio for every allowed group (in steps of 1/1024), the nearest to the target."""
    def kept_at(ratio: float) -> torch.Tensor:
        return torch.tensor([_kept(g, ratio, round_to) if i in free else g.out_channels
                             for i, g in enumerate(cost.groups)])

    ratios = [step / 1024 for step in range(1024)]
    reach = _reachable(cost, kept_at(ratios[-1]), kind, share, "one filter kept per group")
    return _budget(cost, _nearest(cost, kept_at, ratios, share), kind, share, "uniform", reach)


def _nearest(cost, kept_at: Callable[[float], torch.Tensor], values: Sequence[float],
             share: float) -> torch.Tensor:
    """``kept_at(v)`` for the v of ``values`` (ascending; the share removed grows with v) whose
    share removed is nearest ``share``, by binary search."""
    def removed(v: float) -> float:
        return 1 - float(cost(kept_at(v)[:, None])[0]) / cost.total

    lo, hi = 0, len(values) - 1  # the first value removing at least the share (or the last)
    while lo < hi:
        mid = (lo + hi) // 2
        if removed(values[mid]) >= share - 1e-9:
            hi = mid
        else:
            lo = mid + 1
    best = min(values[max(0, lo - 1) : lo + 1], key=lambda v: abs(removed(v) - share))
    return kept_at(best)


def _curve_groups(cost, sensitivity: SensitivityCurves) -> dict[int, np.ndarray]:
    """Group index -> measured drops, checked to belong to this model."""
    index = {name: i for i, g in enumerate(cost.groups) for name in g.members}
    drops = {}
    for name, scores in sensitivity.layers.items():
        if name not in index:
            raise FilterpruneError(
                f"the sensitivity result has layer '{name}', not a prunable layer of this model "
                "(a result of another model, or of another residual policy?)")
        group = cost.groups[index[name]]
        recorded = list(sensitivity.members.get(name, [name]))
        if recorded != list(group.members):
            raise FilterpruneError(
                f"the sensitivity result's '{name}' stands for {recorded}, in this model its "
                f"channels are shared by {group.members} (another model or residual policy?)")
        if len(scores) != len(sensitivity.ratios):
            raise FilterpruneError(f"the sensitivity result's '{name}' has {len(scores)} "
                                   f"scores for {len(sensitivity.ratios)} ratios")
        drops[index[name]] = sensitivity.baseline - np.asarray(scores, dtype=float)
    return drops


def _by_sensitivity(cost, free, kind, share, sensitivity, round_to) -> Budget:
    """Greedy: the least predicted loss per unit of cost saved, until the target."""
    drops = _curve_groups(cost, sensitivity)
    order = np.argsort(sensitivity.ratios)
    measured = np.concatenate([[0.0], np.asarray(sensitivity.ratios, float)[order]])
    top = float(measured[-1])
    candidates: dict[int, list[tuple[int, float]]] = {}  # group -> (kept, loss), widest first
    for i in free:
        if i not in drops:
            continue
        group = cost.groups[i]
        curve = np.maximum.accumulate(np.maximum(np.concatenate([[0.0], drops[i][order]]), 0))
        if isinstance(cost, LatencyModel):
            counts = {w for w in cost.measured_widths(i)
                      if w == _kept(group, 1 - w / group.out_channels, round_to)}
        else:
            counts = {_kept(group, r, round_to) for r in np.arange(0, top + 1e-9, RATIO_STEP)}
        counts = {k for k in counts if 1 - k / group.out_channels <= top + 1e-9}
        counts.add(group.out_channels)
        candidates[i] = [(k, float(np.interp(1 - k / group.out_channels, measured, curve)))
                         for k in sorted(counts, reverse=True)]
    unmeasured = [n for i in free if i not in drops for n in cost.groups[i].members]
    kept = torch.tensor([g.out_channels for g in cost.groups])
    smallest = kept.clone()
    for i, options in candidates.items():
        smallest[i] = options[-1][0]
    reach = _reachable(cost, smallest, kind, share,
                       f"the largest measured ratio ({top:g}) of the layers with a curve")
    group = torch.tensor([i for i, options in candidates.items() for _ in options])
    count = torch.tensor([k for options in candidates.values() for k, _ in options])
    losses = np.array([c for options in candidates.values() for _, c in options])
    taken = dict.fromkeys(candidates, 0.0)  # group -> predicted loss of its current width
    loss, current = 0.0, cost.total
    while 1 - current / cost.total < share - 1e-9:
        open_ = (count < kept[group]).numpy()  # narrower than the group's current width
        if not open_.any():
            break
        rows, counts = group[open_], count[open_]
        trial = kept[:, None].repeat(1, len(rows))
        trial[rows, torch.arange(len(rows))] = counts
        after = cost(trial).numpy()
        saved = current - after
        extra = losses[open_] - np.array([taken[int(i)] for i in rows])
        useful = saved > 0
        pool = useful & (1 - after / cost.total <= share + TOLERANCE)
        pool = pool if pool.any() else useful
        if not pool.any():
            break
        best = int(np.argmin(np.where(pool, extra / np.where(useful, saved, 1), np.inf)))
        i = int(rows[best])
        kept[i], taken[i] = counts[best], taken[i] + float(extra[best])
        loss += float(extra[best])
        current = float(after[best])
    return _budget(cost, kept, kind, share, "sensitivity", reach, predicted_loss=loss,
                   unmeasured=unmeasured)

