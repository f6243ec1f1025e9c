"""High-level pruning: trace, resolve ratios, score, plan and cut in one call."""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

import torch
from torch import nn

from filterprune.engine.budget import Budget, SensitivityCurves, allocate
from filterprune.engine.costs import LatencyCosts
from filterprune.engine.coverage import Coverage, coverage
from filterprune.engine.criteria import Criterion
from filterprune.engine.dependencies import trace
from filterprune.engine.graph import DependencyGraph
from filterprune.engine.plan import PruningPlan, RatioSpec, resolve_ratios, select_filters
from filterprune.engine.surgery import apply_plan
from filterprune.errors import FilterpruneError, warn


@dataclass
class PlanResult:
    """What ``plan_pruning`` returns.

    Attributes:
        plan: kept output-channel indices of every conv or Linear whose output channels change
            (every member of a pruned group; its followers and consumers change with it).
        graph: the dependency graph of the unpruned model.
        coverage: the share of the requested conv MACs the plan reached, and every conv that
            could not be pruned with its reason.
        budget: with ``target``, the chosen per-layer ratios and the achieved share; else None.
    """

    plan: PruningPlan
    graph: DependencyGraph
    coverage: Coverage
    budget: Budget | None


@dataclass
class PruneResult(PlanResult):
    """What ``prune`` returns: a PlanResult and ``model``, the pruned network (a new module;
    the input model is unchanged)."""

    model: nn.Module


P = ParamSpec("P")
R = TypeVar("R")


def _without_gc(function: Callable[P, R]) -> Callable[P, R]:
    """Runs ``function`` with Python's cyclic garbage collector paused (restored afterwards):
    tracing makes thousands of short-lived objects, and each collection they trigger scans
    every object of the process (torch and timm make it hundreds of thousands): 5-13% of
    the time of ``prune`` on small timm models. The garbage is collected afterwards."""

    @functools.wraps(function)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        paused = gc.isenabled()
        gc.disable()
        try:
            return function(*args, **kwargs)
        finally:
            if paused:
                gc.enable()

    return run


@_without_gc
def plan_pruning(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple,
    *,
    ratio: RatioSpec | None = None,
    target: Mapping[str, float] | None = None,
    sensitivity: SensitivityCurves | None = None,
    latency: LatencyCosts | None = None,
    criterion: str | Criterion = "l1",
    strategy: str = "independent",
    skip: Sequence[str] = (),
    round_to: int = 1,
    residual: str = "inner",
    ignore: Sequence[str] = (),
    score_by: Sequence[str] = (),
    tracer: str = "auto",
    strict: bool = False,
    prune_linear: bool = False,
    exact: bool = True,
) -> PlanResult:
    """Decides which filters to remove without touching the model (review the plan, then
    ``apply_plan``).

    Arguments, warnings and errors are those of ``prune``.
    """
    if (ratio is None) == (target is None):
        raise FilterpruneError("give exactly one of ratio= and target=")
    if target is None and (sensitivity is not None or latency is not None):
        raise FilterpruneError("sensitivity= and latency= choose ratios for a target=; "
                               "they cannot be combined with ratio=")
    graph = trace(model, example_inputs, residual=residual, ignore=ignore, tracer=tracer,
                  prune_linear=prune_linear, exact=exact)
    costs = graph.profile
    budget = None
    if target is not None:
        budget = allocate(model, graph, costs, target, sensitivity=sensitivity, latency=latency,
                          criterion=criterion, score_by=score_by, skip=skip, round_to=round_to)
        if not budget.within or budget.unmeasured:
            warn(budget.describe())
        ratio = budget.ratios
    ratios = resolve_ratios(graph, ratio, skip)
    plan = select_filters(model, graph, ratios, criterion, strategy, round_to, score_by)
    reach = coverage(model, graph, plan, costs, ratio, skip)
    if reach.short:
        if strict:
            raise FilterpruneError(reach.describe())
        warn(reach.describe())
    return PlanResult(plan, graph, reach, budget)


@_without_gc
def prune(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple,
    *,
    ratio: RatioSpec | None = None,
    target: Mapping[str, float] | None = None,
    sensitivity: SensitivityCurves | None = None,
    latency: LatencyCosts | None = None,
    criterion: str | Criterion = "l1",
    strategy: str = "independent",
    skip: Sequence[str] = (),
    round_to: int = 1,
    residual: str = "inner",
    ignore: Sequence[str] = (),
    score_by: Sequence[str] = (),
    tracer: str = "auto",
    strict: bool = False,
    prune_linear: bool = False,
    exact: bool = True,
) -> PruneResult:
    """Removes the lowest-scoring filters of every prunable conv (Li et al. 2017, §3).

    Works on any ``nn.Module`` built from standard layers (traced by torch.fx, or recorded from
    one forward pass on ``example_inputs`` where fx cannot trace it): the channel
    dependencies (BatchNorms, residual additions, projection shortcuts, concatenations,
    depthwise convs, squeeze-and-excitation gates, flatten into Linear) are found by
    ``filterprune.engine.trace``; grouped convs keep equal counts per conv group.

    Args:
        model: the trained network; left unchanged.
        example_inputs: a tensor such as ``torch.zeros(1, 3, 32, 32)`` (or a tuple of inputs) that
            ``model`` accepts; it fixes the feature-map sizes at flatten points.
        ratio: fraction of filters removed, in [0, 1): one float for all prunable convs, or a dict
            from layer names or glob patterns (``"layer1.*.conv1"``) to ratios.
        target: instead of ``ratio``: the share of the model's cost to remove, one entry
            ``{"macs": s}``, ``{"params": s}`` or ``{"latency": s}`` with s in (0, 1); the
            per-layer ratios are chosen by ``filterprune.engine.budget.allocate`` (global
            ranking, or from ``sensitivity``) and recorded in ``.budget``.
        sensitivity: with ``target``: a ``filterprune.SensitivityResult`` of this model (same
            residual policy); the ratios then follow its curves (least predicted loss).
        latency: with a ``"latency"`` target: the model's ``filterprune.LatencyTable`` on the
            device it will run on.
        criterion: ``"l1"`` (§3.1), ``"l2"`` (Appendix 6.1) or a callable
            weight (C_out, C_in, kH, kW) -> scores (C_out,).
        strategy: ``"independent"`` or ``"greedy"`` (§3.3).
        skip: names or patterns of layers to leave unpruned.
        round_to: round kept filter counts to a multiple of this (1 = floor(n * (1 - ratio))).
        residual: ``"inner"`` prunes only convs whose channels no other layer shares (not
            those added to a shortcut: the paper's CIFAR ResNet scheme); ``"coupled"`` also
            prunes the channels shared through residual additions and gates, every member at
            the same indices chosen by the sum of their scores (§3.3, ResNet-34 pruned-C).
        ignore: names or glob patterns of modules to leave untouched (the tracer does not enter
            them; the channels they read or write are not pruned).
        score_by: names or patterns of the group members whose scores choose a shared group's
            indices, e.g. ``["*.downsample.0"]``: the projection shortcuts' L1 norms, as in
            ResNet-34 pruned-C (§3.3); by default the sum over all members.
        tracer: ``"auto"``, ``"fx"`` or ``"record"`` (see ``filterprune.engine.trace``).
        strict: raise instead of warning when the plan reaches less than half of the MACs of
            the convs it was asked to prune.
        prune_linear: prune the hidden Linear layers of classifier heads too (VGG, AlexNet),
            never the one giving the model output; off by default (the paper prunes convs).
        exact: with False, also prune through LayerNorm / GroupNorm over channels and
            weight-standardised convs, which changes the model beyond the removed channels:
            such layers are listed in ``plan.approximate`` and ``coverage.approximate``.

    Returns:
        A PruneResult with ``.model`` (smaller and dense), ``.plan``, ``.coverage`` (the
        share of the requested conv MACs reached; every blocked conv with its reason) and
        ``.budget`` (with ``target``: the chosen ratios and the share achieved).

    Warns:
        FilterpruneWarning: the plan reached less than half of the requested conv MACs (the
            message gives the shares and the largest blocked convs with their reasons); a
            target missed by more than one point (the model's granularity), or layers left
            whole because the sensitivity result has no curve for them.

    Raises:
        ValueError (FilterpruneError): a ratio outside [0, 1) (the message names it), an unknown
            layer name or pattern, a layer that cannot be pruned (the message names the module
            and the operation), an unknown criterion, strategy or residual policy, or a model
            that fails on ``example_inputs``; with ``strict=True``, a plan that reached less
            than half of the requested conv MACs; both or neither of ``ratio`` and ``target``;
            a target outside (0, 1) or beyond what the skip list leaves reachable (the
            message gives the maximum); a sensitivity result or latency table of another model.

    Example:
        >>> from filterprune.models import create_model
        >>> net = create_model("scnnb", in_channels=1)
        >>> result = prune(net, torch.zeros(1, 1, 28, 28), ratio=0.5)
        >>> result.model.features[0].out_channels
        16
        >>> halved = prune(net, torch.zeros(1, 1, 28, 28), target={"macs": 0.5})
        >>> round(halved.budget.achieved, 2)
        0.5
    """
    planned = plan_pruning(
        model, example_inputs, ratio=ratio, target=target, sensitivity=sensitivity,
        latency=latency, criterion=criterion, strategy=strategy, skip=skip,
        round_to=round_to, residual=residual, ignore=ignore, score_by=score_by, tracer=tracer,
        strict=strict, prune_linear=prune_linear, exact=exact,
    )
    return PruneResult(planned.plan, planned.graph, planned.coverage, planned.budget,
                       apply_plan(model, planned.plan, planned.graph))
