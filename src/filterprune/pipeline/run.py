"""The main job: train (or load) a baseline, analyse sensitivity, prune one-shot at each ratio,
retrain, and report (Li et al. 2017, §3.2-§4).

Stages write their model files into the output directory as they finish (``baseline.safetensors``,
``pruned-50.safetensors``, ...) and their results into ``stages/<stage>.json``; training writes
``stages/<stage>.state.safetensors`` after every epoch. A resumed run reads finished stages back,
continues an unfinished one from its last epoch, and reaches the same weights as an uninterrupted
run: every stage seeds its random number generators from the run's seed and its own name.
"""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

import filterprune
from filterprune import distributed
from filterprune._io import atomic_write_text
from filterprune.checkpoint import (
    ModelSpec,
    builder_arguments,
    load_model,
    load_weights,
    save_model,
)
from filterprune.data import BatchLoader, ImageDataset, load_dataset, make_loaders, sample_images
from filterprune.data.imagefolder import IMAGE_FOLDER, load_image_folder
from filterprune.data.stream import load_user_datasets
from filterprune.engine import (
    Coverage,
    DependencyGraph,
    PrunedVariants,
    apply_plan,
    l1_norm,
    profile,
    resolve_ratios,
    select_filters,
    trace,
)
from filterprune.engine.coverage import coverage
from filterprune.errors import FilterpruneError, warn
from filterprune.paper import named_plan
from filterprune.pipeline.config import RunConfig, load_config
from filterprune.pipeline.deployment import deploy_stage
from filterprune.pipeline.methods import distill_hooks, pruned_row, run_methods
from filterprune.pipeline.report import write_report
from filterprune.pipeline.schedules import (
    percent,
    prune_iteratively,
    scratch_epochs,
    sensitivity_retrained,
    train_from_scratch,
)
from filterprune.pipeline.sensitivity import sensitivity_plans, top1_by_copies, top1_shared_prefix
from filterprune.training import TrainSettings, evaluate, train
from filterprune.training.loop import console

Log = Callable[[str], None]


@dataclass
class Session:
    """Data, loaders and device of a run, prepared once from its config."""

    config: RunConfig
    dataset: ImageDataset
    train_batches: BatchLoader
    test_batches: BatchLoader
    device: torch.device
    spec: ModelSpec
    progress: bool = True

    def sample_images(self, count: int) -> Iterator[torch.Tensor]:
        """``count`` training images drawn at random (seeded by the run's seed), normalised, not
        augmented, in batches of ``data.eval_batch_size`` (``filterprune.data.sample_images``)."""
        return sample_images(self.dataset, count, self.config.data.eval_batch_size,
                             self.config.seed, self.device)

    def evaluate(self, model: nn.Module) -> dict:
        return evaluate(model, self.test_batches, self.device, self.config.compute)

    def train(
        self, model: nn.Module, settings: TrainSettings, stage: str, state_path: Path,
        **hooks: Callable,
    ) -> list[dict]:
        """Trains ``model`` for one stage, resuming from ``state_path`` if it exists; ``hooks``
        (``loss_fn``, ``on_epoch_end``) are passed to ``filterprune.training.train``."""
        loader = self.train_batches
        if settings.batch_size != self.config.train.batch_size:
            loader = _loaders(self.config, self.dataset, self.device, settings.batch_size)[0]
        seed = stage_seed(self.config.seed, stage)
        torch.manual_seed(seed)
        loader.generator.manual_seed(seed)
        return train(model, loader, settings, self.device, description=stage,
                     progress=self.progress, state_path=state_path, rng=loader.generator,
                     compute=self.config.compute, **hooks)


class Stages:
    """The stage files of a run directory: ``stages/<name>.json`` holds a finished stage's result,
    ``stages/<name>.state.safetensors`` the training state of an unfinished one.

    Args:
        out_dir: the run directory.
        resume: keep the stage files found there; otherwise they are deleted first.
    """

    def __init__(self, out_dir: Path, resume: bool) -> None:
        self.root = Path(out_dir) / "stages"
        if not resume and self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)

    def state(self, name: str) -> Path:
        return self.root / f"{name}.state.safetensors"

    def run(self, name: str, compute: Callable[[], dict]) -> dict:
        """The result of stage ``name``: read back if finished, else computed and recorded
        (by rank 0 under torchrun; every rank computes it and waits for the record)."""
        done = self.root / f"{name}.json"
        finished = done.is_file()
        distributed.barrier()  # every rank looks before rank 0 can write
        if finished:
            return json.loads(done.read_text())
        result = compute()

        def record() -> None:
            atomic_write_text(done, json.dumps(result, indent=2))
            self.state(name).unlink(missing_ok=True)

        distributed.on_main(record)
        return result


def stage_seed(seed: int, stage: str) -> int:
    """The seed of one stage, derived from the run's seed and the stage's name."""
    return (seed * 1_000_003 + zlib.crc32(stage.encode())) % 2**63


def _loaders(
    config: RunConfig, dataset: ImageDataset, device: torch.device, batch_size: int
) -> tuple[BatchLoader, BatchLoader]:
    return make_loaders(dataset, batch_size, config.data.eval_batch_size, seed=config.seed,
                        device=device, train_subset=config.data.train_subset,
                        rank=distributed.rank(), world_size=distributed.world_size())


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else is checked to exist.

    Raises:
        FilterpruneError: an unknown device name or an unavailable CUDA device.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise FilterpruneError(f"unknown device '{name}'") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FilterpruneError(f"device '{name}' requested but CUDA is not available")
    if device == torch.device("cuda") and distributed.active():
        return torch.device("cuda", torch.cuda.current_device())  # torchrun's LOCAL_RANK
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_resume(out_dir: Path, config: RunConfig) -> None:
    """Refuses to resume a run under a different config than the one in ``out_dir/config.yaml``.

    Raises:
        FilterpruneError: naming the first key whose value differs.
    """
    saved_path = Path(out_dir) / "config.yaml"
    if not saved_path.is_file():
        return
    saved = _flatten(load_config(saved_path).model_dump())  # keys added since get defaults
    current = _flatten(config.model_dump())
    for key in sorted(saved.keys() | current.keys()):
        if saved.get(key) != current.get(key):
            raise FilterpruneError(
                f"cannot resume {out_dir}: config key '{key}' was {saved.get(key)!r}, "
                f"now {current.get(key)!r}"
            )


def _flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def open_run(out_dir: Path, config: RunConfig, resume: bool) -> Stages:
    """Prepares a run directory: checks a resume against its config, writes the resolved config.

    Raises:
        FilterpruneError: a resume under a different config (see ``check_resume``).
    """
    if resume:
        check_resume(out_dir, config)

    def write() -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "config.yaml",
                          yaml.safe_dump(config.model_dump(), sort_keys=False))
        Stages(out_dir, resume)  # clears the stage files unless resuming

    distributed.on_main(write)
    return Stages(out_dir, resume=True)


def prepare(config: RunConfig, *, progress: bool = True) -> Session:
    """Loads the dataset, builds loaders and the model spec (dataset-dependent arguments filled).

    With ``config.deterministic``, torch is restricted to deterministic algorithms.
    """
    seed_everything(config.seed)
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    device = resolve_device(config.device)
    if config.data.name == IMAGE_FOLDER:
        dataset = load_image_folder(config.data.data_dir, config.data.image_size)
    elif ":" in config.data.name:
        dataset = load_user_datasets(config.data.name)
    else:
        dataset = load_dataset(config.data.name, config.data.data_dir,
                               download=config.data.download)
    train_batches, test_batches = _loaders(config, dataset, device, config.train.batch_size)
    shape = (dataset.in_channels, dataset.image_size, dataset.image_size)
    kwargs = builder_arguments(config.model.name, config.model.kwargs, shape,
                               dataset.num_classes)
    spec = ModelSpec(config.model.name, kwargs, (1, *shape))
    return Session(config, dataset, train_batches, test_batches, device, spec,
                   progress and distributed.is_main())


def environment(session: Session) -> dict:
    """Package and torch versions, device, seed and number of processes (torchrun), written
    next to every result."""
    return {
        "filterprune": filterprune.__version__, "torch": torch.__version__,
        "python": platform.python_version(), "device": str(session.device),
        "seed": session.config.seed, "processes": distributed.world_size(),
    }


def load_checkpoint(session: Session, path: str | Path) -> nn.Module:
    """Loads a model file and makes it the session's model spec.

    A ``.pt`` / ``.pth`` state dict from another tool (read with ``torch.load(weights_only=True)``)
    is loaded into the configured zoo model.

    Raises:
        FilterpruneError: the file is unreadable, its weights do not fit the configured model, or
            its input shape does not fit the dataset.
    """
    if Path(path).suffix in (".pt", ".pth"):
        return load_weights(session.spec.build(), path)
    model, spec = load_model(path)
    if tuple(spec.input_shape[1:]) != tuple(session.spec.input_shape[1:]):
        raise FilterpruneError(
            f"{path} takes inputs of shape {tuple(spec.input_shape[1:])}, but "
            f"{session.dataset.name} images are {tuple(session.spec.input_shape[1:])}"
        )
    session.spec = spec
    return model


def initial_model(session: Session, log: Log) -> nn.Module:
    """The model to start from: ``config.baseline`` loaded, or a freshly initialised one."""
    config = session.config
    if config.baseline is not None:
        log(f"loaded baseline {config.baseline}")
        return load_checkpoint(session, config.baseline)
    torch.manual_seed(config.seed)
    model = session.spec.build()
    if config.model.weights is not None:
        log(f"loaded weights {config.model.weights}")
        load_weights(model, config.model.weights)
    return model


def baseline_stage(
    session: Session, model: nn.Module, stages: Stages, out_dir: Path, log: Log
) -> tuple[nn.Module, dict]:
    """Trains ``model`` (unless it was loaded) into ``baseline.safetensors``, once.

    Returns:
        The trained baseline and its metrics (read back if the stage had finished).
    """
    metrics = stages.run("baseline", lambda: _train_baseline(session, model, stages, out_dir, log))
    return load_checkpoint(session, out_dir / "baseline.safetensors"), metrics


def _train_baseline(
    session: Session, model: nn.Module, stages: Stages, out_dir: Path, log: Log
) -> dict:
    config = session.config
    history: list[dict] = []
    if config.baseline is None:
        log(f"training {config.model.name} on {session.dataset.name} for "
            f"{config.train.epochs} epochs")
        history = session.train(model, config.train, "baseline", stages.state("baseline"))
    distributed.on_main(lambda: save_model(out_dir / "baseline.safetensors", model, session.spec))
    cost = profile(model, session.spec.example_input())
    metrics = session.evaluate(model)
    log(f"baseline top-1 {metrics['top1']:.2f}%, {cost.macs / 1e6:.2f}M MACs, "
        f"{cost.params / 1e6:.3f}M params")
    return {
        **metrics, "macs": cost.macs, "params": cost.params,
        "params_conv_linear": cost.params_conv_linear,
        "epochs": len(history), "train_time_s": sum(h["time_s"] for h in history),
        "history": history,
    }


def prunable_share(session: Session, model: nn.Module, graph: DependencyGraph) -> Coverage:
    """The coverage of pruning every layer (minus ``prune.skip``) at ratio 0.5: what share of
    the conv MACs the sweep can reach, and the blocked convs with their reasons.

    Warns (FilterpruneWarning) under half; raises instead with ``prune.strict``.

    Raises:
        FilterpruneError: an unknown ``skip`` or ``score_by`` entry; with ``prune.strict``, a
            sweep reaching under half of the conv MACs.
    """
    cfg, example = session.config.prune, session.spec.example_input()
    probe = select_filters(model, graph, resolve_ratios(graph, 0.5, cfg.skip),
                           score_by=cfg.score_by)
    reach = coverage(model, graph, probe, profile(model, example), 0.5, cfg.skip)
    if reach.short:
        if cfg.strict:
            raise FilterpruneError(f"{reach.describe()} (prune.strict is set)")
        warn(reach.describe())
    return reach


def filter_norms(model: nn.Module, graph: DependencyGraph) -> dict[str, list[float]]:
    """Per prunable layer, filter L1 norms sorted descending, divided by the largest (Fig. 2a)."""
    modules = dict(model.named_modules())
    norms = {}
    for name in graph.layers:
        scores = l1_norm(modules[name].weight).sort(descending=True).values
        norms[name] = (scores / scores[0].clamp_min(1e-12)).tolist()
    return norms


def sensitivity(
    session: Session, model: nn.Module, graph: DependencyGraph, ratios: list[float], log: Log,
    criterion: str | None = None, scores: dict[str, torch.Tensor] | None = None,
) -> dict:
    """Each prunable layer pruned alone at each ratio, evaluated without retraining (Fig. 2b).

    ``criterion`` (default ``prune.criterion``) or precomputed ``scores`` choose the filters
    (``select_filters``); the criteria comparison (§4.5) runs this once per criterion. The
    ``shared-prefix`` method falls back to pruned copies for models torch.fx cannot trace.

    Returns:
        ``{"ratios": [...], "layers": {name: [top-1 % per ratio]}}``.
    """
    mine = list(graph.layers)[distributed.rank() :: distributed.world_size()]  # torchrun: a share
    plans = sensitivity_plans(model, graph, mine, ratios,
                              criterion or session.config.prune.criterion, scores)
    method = session.config.sensitivity.method
    if method == "shared-prefix" and not PrunedVariants.supports(model):
        log("sensitivity: torch.fx cannot trace the model whole; evaluating pruned copies")
        method = "copies"
    if method == "copies":
        top1 = top1_by_copies(model, graph, plans, session.evaluate)
    else:
        top1 = top1_shared_prefix(model, graph, plans, session.test_batches, session.device,
                                  session.config.compute)
    gathered = distributed.gather_dicts(top1)
    layers = {name: gathered[name] for name in graph.layers}
    for name, accuracies in layers.items():
        log(f"sensitivity {name}: " + " ".join(f"{a:.1f}" for a in accuracies))
    return {"ratios": list(ratios), "layers": layers}


def _silent(message: str) -> None:
    """The log of ranks other than 0."""


def pruned_stage(point: float | str) -> str:
    """Name of the stage (and model file) of pruning at a ratio (``pruned-50``) or by a named
    plan (its name)."""
    return point if isinstance(point, str) else f"pruned-{percent(point)}"


def pruning_points(config: RunConfig) -> list[float | str]:
    """The pruning points of a run: its named plans, then each ratio."""
    return [*config.prune.plans, *config.prune.ratios]


def prune_and_retrain(
    session: Session, model: nn.Module, graph: DependencyGraph, point: float | str,
    baseline: dict, stages: Stages, out_dir: Path, log: Log,
) -> dict:
    """Pruning of every prunable layer at a ratio or by a named plan of the paper
    (``filterprune.paper``; with its own residual policy), one-shot or iterative
    (``prune.schedule``), then retraining (§3.4)."""
    stage = pruned_stage(point)
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
        plan = select_filters(model, graph, ratios, cfg.criterion, cfg.strategy, cfg.round_to,
                              score_by)
        pruned = apply_plan(model, plan, graph)
    before = session.evaluate(pruned)
    session.train(pruned, session.config.retrain, stage, stages.state(stage),
                  **distill_hooks(session, model, session.config.distill.sweep))
    row = pruned_row(session, pruned, plan, stage, None if isinstance(point, str) else point,
                     baseline, before, out_dir, log)
    return {**row, "plan": point if isinstance(point, str) else None, "schedule": cfg.schedule}


def scratch_controls(
    session: Session, pruning: list[dict], baseline: dict, stages: Stages, out_dir: Path, log: Log
) -> list[dict]:
    """The ``scratch`` controls of every pruned model: its architecture trained from random
    initialisation (``filterprune.pipeline.schedules.train_from_scratch``), one stage each."""
    rows = []
    for row in pruning:
        spec = load_model(out_dir / f"{row['stage']}.safetensors")[1]
        for kind in session.config.scratch:
            stage = f"scratch-{kind}-{row['plan'] or percent(row['ratio'])}"
            epochs = scratch_epochs(kind, session.config.train.epochs, baseline["macs"],
                                    row["macs"])
            result = stages.run(stage, lambda s=stage, e=epochs, p=spec: train_from_scratch(
                session, p, e, s, stage_seed(session.config.seed, s), stages, out_dir, log))
            rows.append({"ratio": row["ratio"], "plan": row["plan"], "pruned": row["stage"],
                         "kind": kind, **result})
    return rows


def run_pipeline(
    config: RunConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    log: Log = console.print,
) -> dict:
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
        The results dict (as in ``results.json``).

    Raises:
        FilterpruneError: bad data location, model name, layer name/pattern or device, or a
            resume under a different config.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    log = log if distributed.is_main() else _silent
    stages = open_run(out_dir, config, resume)
    session = prepare(config, progress=progress)
    model = initial_model(session, log)
    graph = trace(model, session.spec.example_input(), residual=config.prune.residual,
                  prune_linear=config.prune.linear, exact=config.prune.exact)
    reach = prunable_share(session, model, graph)  # checks skip and score_by before training
    model, baseline = baseline_stage(session, model, stages, out_dir, log)
    results = {
        "model": session.spec.name,
        "dataset": {"name": session.dataset.name,
                    "train_size": config.data.train_subset or len(session.dataset.train_labels),
                    "test_size": len(session.dataset.test_labels),
                    "num_classes": session.dataset.num_classes},
        "criterion": config.prune.criterion,
        "strategy": config.prune.strategy,
        "residual": config.prune.residual,
        "environment": environment(session),
        "coverage": reach.to_dict(),
        "baseline": baseline,
        "filter_norms": filter_norms(model, graph),
        "sensitivity": (
            stages.run("sensitivity", lambda: sensitivity_retrained(
                session, model, graph, config.sensitivity.ratios, stages, log)
                if config.sensitivity.retrain_epochs else sensitivity(
                session, model, graph, config.sensitivity.ratios, log))
            if config.sensitivity.enabled else None
        ),
        "pruning": [
            stages.run(pruned_stage(p), lambda p=p: prune_and_retrain(
                session, model, graph, p, baseline, stages, out_dir, log))
            for p in pruning_points(config)
        ],
    }
    results["methods"] = run_methods(session, model, graph, baseline, stages, out_dir, log)
    if config.scratch:
        results["scratch"] = scratch_controls(session, results["pruning"], baseline, stages,
                                              out_dir, log)
    results["deploy"] = deploy_stage(session, results, stages, out_dir, log)
    results["wall_time_s"] = time.perf_counter() - start

    def write() -> None:
        atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2))
        write_report(results, out_dir)

    distributed.on_main(write)
    log(f"report written to {out_dir / 'report.md'} ({results['wall_time_s']:.0f} s)")
    return results
