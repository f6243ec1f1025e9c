"""Stages beyond the one-shot sweep: sensitivity with retraining (Li et al. 2017, Fig. 2c), the
iterative schedule (§3.4) and the from-scratch controls (scratch-E, scratch-B; Liu et al. 2019,
"Rethinking the Value of Network Pruning").

Every step goes through ``Stages.run`` with its own stage name, so an interrupted run resumes
after the last finished step (and inside a step from its last finished epoch).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from filterprune import distributed
from filterprune.analysis import analysed_layers
from filterprune.checkpoint import ModelSpec, load_model, save_model
from filterprune.engine import DependencyGraph, PruningPlan, apply_plan, select_filters
from filterprune.pipeline.pruned import with_plan
from filterprune.pipeline.session import Log, Session, Stages, percent


def sensitivity_retrained(
    session: Session, model: nn.Module, graph: DependencyGraph, ratios: list[float],
    stages: Stages, log: Log,
) -> dict:
    """Each prunable layer pruned alone at each ratio, retrained briefly, then evaluated on the
    split choices are made on (``Session.choice_split``) (Li et al. 2017, §3.2, Fig. 2c).

    Retraining uses the ``retrain`` settings for ``sensitivity.retrain_epochs`` epochs. Each
    (layer, ratio) is its own stage, ``sensitivity-<layer>-<percent>``; a channel group is
    analysed once, named by its first member.

    Returns:
        ``{"ratios": [...], "layers": {name: [top-1 % per ratio]}, "retrain_epochs": n,
        "split": the split}``.
    """
    config = session.config
    settings = config.retrain.model_copy(update={"epochs": config.sensitivity.retrain_epochs})

    def pruned_alone(name: str, ratio: float, stage: str) -> dict:
        plan = select_filters(model, graph, {name: ratio}, session.criterion(stage))
        pruned = apply_plan(model, plan, graph)
        session.train(pruned, settings, stage, stages.state(stage))
        return session.evaluate(pruned, session.choice_split)

    layers: dict[str, list[float]] = {}
    for name in analysed_layers(graph, None):  # one per channel group
        accuracies = []
        for ratio in ratios:
            stage = f"sensitivity-{name}-{percent(ratio)}"
            result = stages.run(stage, lambda n=name, r=ratio, s=stage: pruned_alone(n, r, s))
            accuracies.append(result["top1"])
        layers[name] = accuracies
        log(f"sensitivity {name} (retrained {settings.epochs} epochs): "
            + " ".join(f"{a:.1f}" for a in accuracies))
    return {"ratios": list(ratios), "layers": layers, "retrain_epochs": settings.epochs,
            "split": session.choice_split}


def prune_iteratively(
    session: Session, model: nn.Module, graph: DependencyGraph, ratios: dict[str, float],
    score_by: Sequence[str], stage: str, stages: Stages, log: Log,
) -> tuple[PruningPlan, nn.Module]:
    """Prunes one layer (channel group) at a time in forward order, retraining
    ``prune.iterative_epochs`` epochs with the ``retrain`` settings after each (§3.4).

    Each layer keeps as many filters as one-shot pruning would keep (its width is the original
    one when its turn comes). Step k is the stage ``<stage>-step<k>``; its model is saved as
    ``stages/<stage>-step<k>.safetensors``, which only a resumed run reads back (the next step
    takes the model from memory and traces it anew, its widths having changed).

    Args:
        session: the prepared run.
        model: the trained baseline (not modified).
        graph: its dependency graph.
        ratios: layer name -> ratio, as returned by ``resolve_ratios``.
        score_by: the members that score a shared group (``select_filters``).
        stage: the pruning stage's name (``pruned-50``).
        stages: the run's stage files.
        log: receives one line per step.

    Returns:
        The plan relative to ``model`` and the pruned, step-retrained model.
    """
    cfg = session.config.prune
    settings = session.config.retrain.model_copy(update={"epochs": cfg.iterative_epochs})
    groups = {id(graph.layers[name]): graph.layers[name] for name in ratios}.values()
    plan = PruningPlan(criterion=cfg.criterion, strategy=cfg.strategy, residual=graph.residual)
    current, current_graph = model, graph
    for k, group in enumerate(groups, 1):
        step = f"{stage}-step{k:02d}"
        path = stages.root / f"{step}.safetensors"
        stepped: list[nn.Module] = []

        def one_layer(group=group, step=step, path=path, done=plan, current=current,
                      current_graph=current_graph, stepped=stepped) -> dict:
            layer_ratios = {name: ratios[name] for name in group.members if name in ratios}
            step_plan = select_filters(current, current_graph, layer_ratios,
                                       session.criterion(step), cfg.strategy, cfg.round_to,
                                       score_by)
            pruned = apply_plan(current, step_plan, current_graph)
            session.train(pruned, settings, step, stages.state(step))
            total = done.then(step_plan)
            distributed.on_main(lambda: save_model(path, pruned, with_plan(session.spec, total)))
            metrics = session.evaluate(pruned)
            kept = group.kept_channels(step_plan.kept)
            keeps = group.out_channels if kept is None else len(kept)
            log(f"{step}: {', '.join(group.members)} keeps {keeps} / {group.out_channels}, "
                f"top-1 {metrics['top1']:.2f}% after {settings.epochs} epochs")
            stepped.append(pruned)
            return {"layers": list(group.members), "plan": total.to_dict(), **metrics}

        plan = PruningPlan.from_dict(stages.run(step, one_layer)["plan"])
        current = stepped[0] if stepped else load_model(path)[0]  # the file: a resumed step
        current_graph = session.trace(current)
    return plan, current


def scratch_epochs(kind: str, epochs: int, baseline_macs: int, pruned_macs: int) -> int:
    """Epochs of a from-scratch control (Liu et al. 2019).

    Args:
        kind: ``"E"``: the baseline's epochs; ``"B"``: the baseline's compute budget, the epochs
            scaled by baseline MACs / pruned MACs and rounded to the nearest integer.
        epochs: the baseline's training epochs.
        baseline_macs: MACs of the unpruned model.
        pruned_macs: MACs of the pruned model (> 0).

    Returns:
        The number of epochs.
    """
    if kind == "E":
        return epochs
    return round(epochs * baseline_macs / pruned_macs)


def train_from_scratch(
    session: Session, spec: ModelSpec, epochs: int, stage: str, seed: int, stages: Stages,
    out_dir: Path, log: Log,
) -> dict:
    """Trains the pruned architecture of ``spec`` from a random initialisation (the widths come
    from its plan; no weight is copied) with the ``train`` settings for ``epochs`` epochs, and
    saves it as ``<stage>.safetensors``.

    Args:
        session: the prepared run.
        spec: the pruned model's description (zoo name, arguments, plan).
        epochs: training epochs (``scratch_epochs``).
        stage: the stage's name, ``scratch-E-50``.
        seed: seeds the initialisation.
        stages: the run's stage files.
        out_dir: the run directory.
        log: receives one line.

    Returns:
        ``{"epochs", "top1", "top5", "loss", "correct", "train_time_s"}`` (``correct``: the
        per-image outcomes, ``Session.evaluate``).
    """
    torch.manual_seed(seed)
    model = spec.build()
    settings = session.config.train.model_copy(update={"epochs": epochs})
    history = session.train(model, settings, stage, stages.state(stage))
    distributed.on_main(lambda: save_model(out_dir / f"{stage}.safetensors", model, spec))
    metrics = session.evaluate(model, per_image=True)
    log(f"{stage}: trained from scratch {epochs} epochs, top-1 {metrics['top1']:.2f}%")
    return {"epochs": epochs, **metrics, "train_time_s": sum(h["time_s"] for h in history)}
