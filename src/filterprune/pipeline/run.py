"""The main job: train (or load) a baseline, analyse sensitivity, prune one-shot at each ratio,
retrain, and report (Li et al. 2017, §3.2-§4).

Stages write their model files into the output directory as they finish (``baseline.safetensors``,
``pruned-50.safetensors``, ...) and their results into ``stages/<stage>.json``; training writes
``stages/<stage>.state.safetensors`` after every epoch. A resumed run reads finished stages back,
continues an unfinished one from its last epoch, and reaches the same weights as an uninterrupted
run: every stage seeds its random number generators from the run's seed and its own name
(filterprune.pipeline.session). Within one process the models pass from stage to stage in
memory; the files are read back only for the stages a resumed run had finished. Results are
typed records (filterprune.pipeline.results).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch
from torch import nn

from filterprune import distributed
from filterprune.checkpoint import ModelSpec, build_model, load_model, load_weights, save_model
from filterprune.engine import (
    Coverage,
    DependencyGraph,
    apply_plan,
    profile,
    resolve_ratios,
    select_filters,
)
from filterprune.engine.coverage import coverage
from filterprune.errors import FilterpruneError, warn
from filterprune.paper import named_plan
from filterprune.pipeline.accuracy import with_intervals
from filterprune.pipeline.analysis import filter_norms, sensitivity
from filterprune.pipeline.config import RunConfig
from filterprune.pipeline.deployment import deploy_stage
from filterprune.pipeline.methods import run_methods
from filterprune.pipeline.pruned import distill_hooks, pruned_row, with_plan
from filterprune.pipeline.report import write_report
from filterprune.pipeline.results import (
    Baseline,
    DatasetInfo,
    Environment,
    MethodRow,
    PrunedRow,
    RetrainedBaseline,
    RunResults,
    ScratchRow,
    SeedRepeat,
    SensitivityTable,
)
from filterprune.pipeline.schedules import (
    prune_iteratively,
    scratch_epochs,
    sensitivity_retrained,
    train_from_scratch,
)
from filterprune.pipeline.session import (
    Log,
    Session,
    Stages,
    choose_compute,
    environment,
    load_checkpoint,
    open_run,
    percent,
    prepare,
    stage_seed,
)
from filterprune.pipeline.targets import check_targets, latency_stage, run_targets
from filterprune.training.loop import console

RETRAINED = "baseline-retrained"


def initial_model(session: Session, log: Log) -> nn.Module:
    """The model to start from: ``config.baseline`` loaded, or a freshly initialised one (with
    ``model.pretrained``, its hub's pretrained weights), then ``model.weights`` loaded.

    Raises:
        FilterpruneError: an unreadable model or weights file, or pretrained weights whose hub
            cannot be reached.
    """
    config = session.config
    if config.baseline is not None:
        log(f"loaded baseline {config.baseline}")
        return load_checkpoint(session, config.baseline)
    torch.manual_seed(config.seed)
    if config.model.pretrained:
        model, _ = build_model(config.model.name, session.spec.kwargs,
                               input_shape=session.spec.input_shape[1:], pretrained=True)
        log(f"loaded the pretrained weights of {config.model.name} from its hub")
    else:
        model = session.spec.build()
    if config.model.weights is not None:
        log(f"loaded weights {config.model.weights}")
        load_weights(model, config.model.weights)
    return model


def baseline_stage(
    session: Session, model: nn.Module, stages: Stages, out_dir: Path, log: Log,
    stage: str = "baseline",
) -> tuple[nn.Module, dict]:
    """Trains ``model`` (unless it was loaded) into ``<stage>.safetensors``, once.

    Args:
        stage: the stage's name: ``baseline``, or ``baseline-seed<seed>`` for a repeat with
            another seed (``seed_repeats``).

    Returns:
        The trained baseline (kept in memory; read from its file when a resumed run had
        finished the stage) and its metrics.
    """
    trained = []

    def compute() -> dict:
        trained.append(model)
        return _train_baseline(session, model, stages, out_dir, log, stage)

    metrics = stages.run(stage, compute)
    if not trained:
        model = load_checkpoint(session, out_dir / f"{stage}.safetensors")
    return model, metrics


def _train_baseline(
    session: Session, model: nn.Module, stages: Stages, out_dir: Path, log: Log, stage: str
) -> dict:
    config = session.config
    history: list[dict] = []
    if config.baseline is None:
        log(f"training {config.model.name} on {session.dataset.name} for "
            f"{config.train.epochs} epochs (seed {config.seed})")
        history = session.train(model, config.train, stage, stages.state(stage))
    distributed.on_main(lambda: save_model(out_dir / f"{stage}.safetensors", model,
                                           session.spec))
    cost = profile(model, session.spec.example_input())
    metrics = session.evaluate(model, per_image=True)
    log(f"{stage} top-1 {metrics['top1']:.2f}%, {cost.macs / 1e6:.2f}M MACs, "
        f"{cost.params / 1e6:.3f}M params")
    return {
        **metrics, "macs": cost.macs, "params": cost.params,
        "params_conv_linear": cost.params_conv_linear,
        "epochs": len(history), "train_time_s": sum(h["time_s"] for h in history),
        "history": history,
    }


def retrained_baseline_stage(
    session: Session, model: nn.Module, stages: Stages, log: Log
) -> RetrainedBaseline | None:
    """The control for extra training (stage ``baseline-retrained``): a copy of the baseline
    ``model`` retrained with the ``retrain`` settings of the pruned models (without
    distillation), evaluated on the test split; None when ``baseline_retrained`` is off or
    ``retrain.epochs`` is 0. Its model is not saved."""
    config = session.config
    if not config.baseline_retrained or config.retrain.epochs == 0:
        return None

    def compute() -> dict:
        control = copy.deepcopy(model)
        history = session.train(control, config.retrain, RETRAINED, stages.state(RETRAINED))
        metrics = session.evaluate(control, per_image=True)
        log(f"{RETRAINED}: top-1 {metrics['top1']:.2f}% after {config.retrain.epochs} more "
            "epochs (the control for extra training)")
        return {**metrics, "epochs": config.retrain.epochs,
                "train_time_s": sum(h["time_s"] for h in history)}

    return RetrainedBaseline(**stages.run(RETRAINED, compute))


def sensitivity_stage(
    session: Session, model: nn.Module, graph: DependencyGraph, stages: Stages, log: Log
) -> dict:
    """The sensitivity of each layer pruned alone (Fig. 2b; Fig. 2c with
    ``sensitivity.retrain_epochs``) on the split choices are made on, with the baseline's top-1
    on that split (``SensitivityTable``)."""
    ratios = session.config.sensitivity.ratios
    split = session.choice_split
    if split == "test":
        log("sensitivity: data.validation is 0, so it is measured on the test split, which also "
            "gives the reported accuracies")
    table = (sensitivity_retrained(session, model, graph, ratios, stages, log)
             if session.config.sensitivity.retrain_epochs
             else sensitivity(session, model, graph, ratios, log))
    return {**table, "baseline_top1": session.evaluate(model, split)["top1"]}


def prunable_share(session: Session, model: nn.Module, graph: DependencyGraph) -> Coverage:
    """The coverage of pruning every layer (minus ``prune.skip``) at ratio 0.5: what share of
    the conv MACs the sweep can reach, and the blocked convs with their reasons.

    Warns (FilterpruneWarning) under half; raises instead with ``prune.strict``.

    Raises:
        FilterpruneError: an unknown ``skip`` or ``score_by`` entry; with ``prune.strict``, a
            sweep reaching under half of the conv MACs.
    """
    cfg = session.config.prune
    probe = select_filters(model, graph, resolve_ratios(graph, 0.5, cfg.skip),
                           score_by=cfg.score_by)
    reach = coverage(model, graph, probe, graph.profile, 0.5, cfg.skip)
    if reach.short:
        if cfg.strict:
            raise FilterpruneError(f"{reach.describe()} (prune.strict is set)")
        warn(reach.describe())
    return reach


def _silent(message: str) -> None:
    """The log of ranks other than 0."""


def pruned_stage(point: float | str, suffix: str = "") -> str:
    """Name of the stage (and model file) of pruning at a ratio (``pruned-50``) or by a named
    plan (its name), with ``suffix`` (a repeat's ``-seed<seed>``)."""
    return (point if isinstance(point, str) else f"pruned-{percent(point)}") + suffix


def pruning_points(config: RunConfig) -> list[float | str]:
    """The pruning points of a run: its named plans, then each ratio."""
    return [*config.prune.plans, *config.prune.ratios]


def prune_and_retrain(
    session: Session, model: nn.Module, graph: DependencyGraph, point: float | str,
    baseline: dict, stages: Stages, out_dir: Path, log: Log, specs: dict[str, ModelSpec],
    suffix: str = "",
) -> dict:
    """Pruning of every prunable layer at a ratio or by a named plan of the paper
    (``filterprune.paper``; with its own residual policy, recorded in the row), one-shot or
    iterative (``prune.schedule``), then retraining (§3.4). The pruned model's spec is added
    to ``specs`` under the stage's name (``pruned_stage(point, suffix)``)."""
    stage = pruned_stage(point, suffix)
    cfg = session.config.prune
    if isinstance(point, str):
        named = named_plan(point)
        graph, ratios = named.resolve_on(model, session.spec.example_input())
        score_by = named.score_by
    else:
        ratios, score_by = resolve_ratios(graph, point, cfg.skip), cfg.score_by
    if cfg.schedule == "iterative":
        plan, pruned = prune_iteratively(session, model, graph, ratios, score_by, stage, stages,
                                         log)
    else:
        plan = select_filters(model, graph, ratios, session.criterion(stage), cfg.strategy,
                              cfg.round_to, score_by)
        pruned = apply_plan(model, plan, graph)
    before = session.evaluate(pruned)
    session.train(pruned, session.config.retrain, stage, stages.state(stage),
                  **distill_hooks(session, model, session.config.distill.sweep))
    row = pruned_row(session, pruned, plan, stage, None if isinstance(point, str) else point,
                     baseline, before, out_dir, log)
    specs[stage] = with_plan(session.spec, plan)
    return {**row, "plan": point if isinstance(point, str) else None, "schedule": cfg.schedule,
            "residual": graph.residual}


def sweep(
    session: Session, model: nn.Module, graph: DependencyGraph, baseline: dict, stages: Stages,
    out_dir: Path, log: Log, specs: dict[str, ModelSpec], suffix: str = "",
) -> list[PrunedRow]:
    """Every pruning point of the run (``pruning_points``) pruned from the baseline ``model``
    and retrained, one stage each (``prune_and_retrain``; stage names end in ``suffix``)."""
    return [PrunedRow(**stages.run(pruned_stage(p, suffix), lambda p=p: prune_and_retrain(
        session, model, graph, p, baseline, stages, out_dir, log, specs, suffix)))
        for p in pruning_points(session.config)]


def seed_repeats(session: Session, stages: Stages, out_dir: Path, log: Log) -> list[SeedRepeat]:
    """The baseline and the sweep again with each further seed (``seeds`` > 1): ``seed + 1``
    ... ``seed + seeds - 1``, their stages and model files named with ``-seed<seed>``
    (resumable like the others). A baseline given as a file (``baseline``) is loaded for every
    seed, so that only the retraining varies."""
    config = session.config
    repeats = []
    for seed in range(config.seed + 1, config.seed + config.seeds):
        suffix = f"-seed{seed}"
        again = dataclasses.replace(session, config=config.model_copy(update={"seed": seed}))
        model = initial_model(again, log)
        graph = again.trace(model)
        model, baseline = baseline_stage(again, model, stages, out_dir, log, f"baseline{suffix}")
        repeats.append(SeedRepeat(seed, Baseline(**baseline), sweep(
            again, model, graph, baseline, stages, out_dir, log, {}, suffix)))
    return repeats


def scratch_controls(
    session: Session, pruning: list[PrunedRow], specs: dict[str, ModelSpec], baseline: dict,
    stages: Stages, out_dir: Path, log: Log,
) -> list[dict]:
    """The ``scratch`` controls of every pruned model: its architecture (from ``specs``, or its
    model file when a resumed run had finished its stage) trained from random initialisation
    (``filterprune.pipeline.schedules.train_from_scratch``), one stage each."""
    rows = []
    for row in pruning:
        spec = specs.get(row.stage) or load_model(out_dir / f"{row.stage}.safetensors")[1]
        for kind in session.config.scratch:
            stage = f"scratch-{kind}-{row.plan or percent(row.ratio)}"
            epochs = scratch_epochs(kind, session.config.train.epochs, baseline["macs"],
                                    row.macs)
            result = stages.run(stage, lambda s=stage, e=epochs, p=spec: train_from_scratch(
                session, p, e, s, stage_seed(session.config.seed, s), stages, out_dir, log))
            rows.append({"ratio": row.ratio, "plan": row.plan, "pruned": row.stage,
                         "kind": kind, **result})
    return rows


def run_pipeline(
    config: RunConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    log: Log = console.print,
) -> RunResults:
    """Runs the main job and writes ``report.md``, ``results.json``, ``config.yaml``, the plots and
    one model file per stage into ``out_dir``.

    Args:
        config: the validated run configuration.
        out_dir: the run directory (created).
        resume: continue the run found in ``out_dir`` (finished stages are not redone);
            otherwise its stage files are discarded.
        progress: show progress bars.
        log: receives one line per finished step.

    Returns:
        The results, as written to ``results.json``.

    Raises:
        FilterpruneError: bad data location, model name, layer name/pattern or device, or a
            resume under a different config.
    """
    out_dir = Path(out_dir)
    log = log if distributed.is_main() else _silent
    session = prepare(config, progress=progress)
    model = initial_model(session, log)
    graph = session.trace(model)
    reach = prunable_share(session, model, graph)  # checks skip and score_by before training
    check_targets(session, model, graph)
    stages = open_run(out_dir, config, resume, log)  # the inputs are checked: now write
    calibration = choose_compute(session, model, stages, log)
    latency = latency_stage(session, model, graph, stages, log)  # checks latency targets
    model, baseline = baseline_stage(session, model, stages, out_dir, log)
    specs: dict[str, ModelSpec] = {}
    sensitivity_result = None
    if config.sensitivity.enabled:
        sensitivity_result = SensitivityTable(**stages.run("sensitivity", lambda: sensitivity_stage(
            session, model, graph, stages, log)))
    control = retrained_baseline_stage(session, model, stages, log)
    pruning = sweep(session, model, graph, baseline, stages, out_dir, log, specs)
    repeats = seed_repeats(session, stages, out_dir, log)
    methods = {name: [MethodRow(**row) for row in rows] for name, rows in run_methods(
        session, model, graph, baseline, stages, out_dir, log).items()}
    scratch = [ScratchRow(**row) for row in scratch_controls(
        session, pruning, specs, baseline, stages, out_dir, log)] if config.scratch else []
    targets = run_targets(session, model, graph, baseline, sensitivity_result, latency, stages,
                          out_dir, log)
    measured = [row.stage for row in pruning] + [
        row.stage for rows in methods.values() for row in rows] + (
        [] if targets is None else [row.stage for row in targets.rows])
    deploy = deploy_stage(session, measured, stages, out_dir, log)
    results = with_intervals(RunResults(
        model=session.spec.name,
        dataset=DatasetInfo(
            session.dataset.name,
            config.data.train_subset or len(session.dataset.train_labels),
            len(session.dataset.test_labels), session.dataset.num_classes,
            0 if session.validation_batches is None else session.validation_batches.num_samples),
        criterion=config.prune.criterion, strategy=config.prune.strategy,
        residual=config.prune.residual, environment=Environment(**environment(session)),
        coverage=reach, baseline=Baseline(**baseline), filter_norms=filter_norms(model, graph),
        sensitivity=sensitivity_result, pruning=pruning, methods=methods, scratch=scratch,
        deploy=deploy, wall_time_s=stages.record_session(), baseline_retrained=control,
        calibration=calibration, repeats=repeats, targets=targets,
    ))

    def write() -> None:
        results.save(out_dir / "results.json")
        write_report(results, out_dir)

    distributed.on_main(write)
    log(f"report written to {out_dir / 'report.md'} ({results.wall_time_s:.0f} s over all "
        "sessions)")
    return results
