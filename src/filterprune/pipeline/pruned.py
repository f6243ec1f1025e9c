"""What every pruned model of a run goes through: retraining, optionally distilled from the
baseline (Hinton et al. 2015), then profiling, evaluation and its model file, giving the result
row of the sweep (Li et al. 2017, §3.4, Table 1-4) and of the methods compared with it.
"""

from __future__ import annotations

import copy
from pathlib import Path

from torch import nn

from filterprune import distributed
from filterprune.checkpoint import ModelSpec, save_model
from filterprune.engine import PruningPlan, profile
from filterprune.pipeline.session import Log, Session
from filterprune.training.distill import distillation_loss


def with_plan(spec: ModelSpec, plan: PruningPlan) -> ModelSpec:
    """``spec`` with ``plan`` applied after the plan it already has."""
    spec = copy.copy(spec)
    spec.plan = plan if spec.plan is None else spec.plan.then(plan)
    return spec


def distill_hooks(session: Session, teacher: nn.Module, enabled: bool) -> dict:
    """The training hooks of a retraining that distills from ``teacher`` (a copy is used), with
    the run's ``distill`` settings; none when not ``enabled``."""
    if not enabled:
        return {}
    cfg = session.config.distill
    teacher = copy.deepcopy(teacher).to(session.device)
    return {"loss_fn": distillation_loss(teacher, cfg.temperature, cfg.alpha)}


def pruned_row(
    session: Session, model: nn.Module, plan: PruningPlan | None, stage: str,
    ratio: float | None, baseline: dict, before: dict, out_dir: Path, log: Log,
) -> dict:
    """Profiles, evaluates and saves (``<stage>.safetensors``) a retrained model; its result row.

    Args:
        model: the retrained model.
        plan: the plan that pruned it from the baseline (None: the baseline's architecture,
            e.g. after unstructured pruning).
        before: its evaluation right after pruning, before retraining.
    """
    cost = profile(model, session.spec.example_input())
    after = session.evaluate(model, per_image=True)
    spec = session.spec if plan is None else with_plan(session.spec, plan)
    distributed.on_main(lambda: save_model(out_dir / f"{stage}.safetensors", model, spec))
    log(f"{stage}: {cost.macs / 1e6:.2f}M MACs, top-1 {before['top1']:.2f}% -> "
        f"{after['top1']:.2f}% after retraining")
    return {
        "stage": stage, "ratio": ratio, "macs": cost.macs, "params": cost.params,
        "params_conv_linear": cost.params_conv_linear,
        "macs_reduction": 1 - cost.macs / baseline["macs"],
        "params_reduction": 1 - cost.params / baseline["params"],
        "top1_before": before["top1"], "top1_after": after["top1"],
        "top5_before": before["top5"], "top5_after": after["top5"], "correct": after["correct"],
        "retrain_epochs": session.config.retrain.epochs,
        "kept": {} if plan is None else {name: len(kept) for name, kept in plan.kept.items()},
    }
