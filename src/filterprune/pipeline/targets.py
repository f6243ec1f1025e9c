"""Budgets in the main job: each share of the baseline's cost in ``prune.targets`` removed three
ways side by side, from the same baseline, each pruned one-shot and retrained like the sweep
(issue 15):

- ``uniform``: one ratio for every prunable layer, the one nearest the target;
- ``global``: global ranking of the filters' scores normalised per layer (Torch-Pruning's global
  pruning, data-free);
- ``sensitivity``: the ratios with the least predicted loss from the run's sensitivity analysis
  (Li et al. 2017, §3.2: prune the insensitive layers more; NNI's SensitivityPruner with
  NetAdapt's cost per step). Skipped, with one log line, when the analysis is disabled.

The ratios are chosen by ``filterprune.engine.budget.allocate``; the cost (``prune.target_cost``)
is MACs, parameters, or latency predicted from a latency table (``filterprune.latency_table``)
measured once on the run's device as the stage ``latency-table``, before the baseline is trained
(timings depend on the layers' shapes, not on their weights), at the first of
``deploy.batch_sizes``, each group timed for at most ``deploy.budget_s`` seconds.

Stages are named ``target-<share %>-<way>`` (``target-50-global``) and write
``<stage>.safetensors``; their rows (``filterprune.pipeline.results.TargetRow``) record the
allocation (the ratio of every pruned layer, the achieved share), MACs, parameters and top-1
before and after retraining. A target no way can reach is refused before training.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from filterprune import distributed
from filterprune.analysis import SensitivityResult
from filterprune.engine import (
    DependencyGraph,
    Profile,
    allocate,
    apply_plan,
    max_share,
    resolve_ratios,
    select_filters,
)
from filterprune.engine.budget import TOLERANCE
from filterprune.errors import FilterpruneError
from filterprune.latency_table import LatencyTable, latency_table
from filterprune.pipeline.pruned import distill_hooks, pruned_row
from filterprune.pipeline.results import SensitivityTable, TargetRow, Targets
from filterprune.pipeline.session import Log, Session, Stages, percent

WAYS = ("uniform", "global", "sensitivity")
LATENCY_STAGE = "latency-table"


def target_stage(share: float, way: str) -> str:
    """Stage (and model file) name of a target reached one way: ``target-50-global``."""
    return f"target-{percent(share)}-{way}"


def check_targets(
    session: Session, model: nn.Module, graph: DependencyGraph,
    latency: LatencyTable | None = None,
) -> None:
    """Refuses the targets no way of choosing can reach, before any training: beyond what
    pruning every layer outside ``prune.skip`` to one filter removes, or, with the sensitivity
    analysis enabled, beyond what its largest ratio removes (that way tries no larger ratio).
    A latency target is checked once its table is given (``latency_stage``).

    Raises:
        FilterpruneError: the first unreachable target, with the largest reachable share.
    """
    cfg = session.config
    kind = cfg.prune.target_cost
    if not cfg.prune.targets or (kind == "latency" and latency is None):
        return
    costs = graph.profile  # counted while tracing: training changes no shape or count
    common = {"latency": latency, "skip": cfg.prune.skip, "round_to": cfg.prune.round_to}
    limits = [(max_share(model, graph, costs, kind, **common),
               "pruning every layer outside prune.skip down to one filter")]
    if cfg.sensitivity.enabled:
        top = max(cfg.sensitivity.ratios, default=0.0)
        limits.append((max_share(model, graph, costs, kind, largest_ratio=top, **common),
                       "the sensitivity-driven way, which prunes no layer beyond the largest "
                       f"of sensitivity.ratios ({top:g}),"))
    for share in cfg.prune.targets:
        for reach, how in limits:
            if share > reach + TOLERANCE:
                raise FilterpruneError(f"prune.targets: {share:g} of the {kind} is unreachable: "
                                       f"{how} removes at most {reach:.1%}")


def latency_stage(
    session: Session, model: nn.Module, graph: DependencyGraph, stages: Stages, log: Log
) -> LatencyTable | None:
    """With latency targets, the latency table of ``model`` on the run's device (stage
    ``latency-table``; ``model`` is not modified), then the targets checked against it
    (``check_targets``); None otherwise.

    Raises:
        FilterpruneError: a latency target beyond the reachable share.
    """
    cfg = session.config
    if not cfg.prune.targets or cfg.prune.target_cost != "latency":
        return None

    def measure() -> dict:
        net = copy.deepcopy(model).to(session.device)
        x = torch.zeros(cfg.deploy.batch_sizes[0], *session.spec.input_shape[1:],
                        device=session.device)
        return latency_table(net, x, skip=cfg.prune.skip, residual=cfg.prune.residual,
                             min_run_time_s=cfg.deploy.min_run_time_s,
                             budget_s=cfg.deploy.budget_s).to_dict()

    # under torchrun rank 0 alone measures (ranks timing at once would slow each other), and
    # every rank allocates from its table
    table = LatencyTable.from_dict(stages.run(LATENCY_STAGE, lambda: distributed.gather_dicts(
        distributed.on_main(measure) or {})))
    log(table.describe())
    check_targets(session, model, graph, table)
    return table


def run_targets(
    session: Session, model: nn.Module, graph: DependencyGraph, baseline: dict,
    sensitivity: SensitivityTable | None, latency: LatencyTable | None, stages: Stages,
    out_dir: Path, log: Log,
) -> Targets | None:
    """Every target reached every way (one stage each), or None without ``prune.targets``.

    Args:
        model: the trained baseline (not modified).
        baseline: its metrics (its test ``top1`` is the score the sensitivity drops are taken
            from only when the sensitivity table records no baseline of its own split).
        sensitivity: the run's sensitivity analysis; None skips the sensitivity-driven way.
        latency: the latency table, for a latency cost.
    """
    cfg = session.config
    if not cfg.prune.targets:
        return None
    ways, skipped, curves = list(WAYS), {}, None
    if sensitivity is None:
        ways.remove("sensitivity")
        skipped["sensitivity"] = ("the sensitivity analysis is disabled "
                                  "(sensitivity.enabled: false)")
        log(f"targets: the sensitivity-driven way is skipped: {skipped['sensitivity']}")
    else:
        # the drops are taken from the baseline's score on the sensitivity's own split
        base = (baseline["top1"] if sensitivity.baseline_top1 is None
                else sensitivity.baseline_top1)
        curves = SensitivityResult(sensitivity.ratios, sensitivity.layers, base,
                                   members=sensitivity.members, split=sensitivity.split)
    costs = graph.profile  # counted while tracing: training changes no shape or count
    rows = [TargetRow(**stages.run(target_stage(share, way), lambda s=share, w=way: (
        prune_to_target(session, model, graph, costs, s, w, curves, latency, baseline, stages,
                        out_dir, log))))
        for share in cfg.prune.targets for way in ways]
    return Targets(cfg.prune.target_cost, list(cfg.prune.targets), ways, skipped,
                   None if latency is None else latency.to_dict(), rows)


def prune_to_target(
    session: Session, model: nn.Module, graph: DependencyGraph, costs: Profile, share: float,
    way: str, sensitivity: SensitivityResult | None, latency: LatencyTable | None,
    baseline: dict, stages: Stages, out_dir: Path, log: Log,
) -> dict:
    """Prunes the baseline ``model`` (not modified) to remove ``share`` of its cost, the ratios
    chosen ``way``, then retrains with the sweep's settings (``retrain``; distilled when
    ``distill.sweep``).

    Args:
        costs: ``profile`` of ``model``.
        sensitivity: the curves of the ``sensitivity`` way (unused by the others).

    Returns:
        The row (see ``pruned_row``) with ``target``, ``way``, ``cost`` and ``budget``
        (``Budget.to_dict``).
    """
    stage = target_stage(share, way)
    cfg = session.config.prune
    criterion = session.criterion(stage)
    budget = allocate(model, graph, costs, {cfg.target_cost: share},
                      sensitivity=sensitivity if way == "sensitivity" else None, latency=latency,
                      criterion=criterion, score_by=cfg.score_by, skip=cfg.skip,
                      round_to=cfg.round_to, method=way)
    log(f"{stage}: {budget.describe()}")
    ratios = resolve_ratios(graph, budget.ratios, cfg.skip)
    plan = select_filters(model, graph, ratios, criterion, cfg.strategy, cfg.round_to,
                          cfg.score_by)
    pruned = apply_plan(model, plan, graph)
    before = session.evaluate(pruned)
    session.train(pruned, session.config.retrain, stage, stages.state(stage),
                  **distill_hooks(session, model, session.config.distill.sweep))
    row = pruned_row(session, pruned, plan, stage, None, baseline, before, out_dir, log)
    return {**row, "target": share, "way": way, "cost": cfg.target_cost,
            "budget": budget.to_dict()}
