"""Run infrastructure: a prepared session (data, loaders, device, model spec), the stage files of a
run directory, seeding, and opening or resuming a run.

Stages write their results into ``stages/<stage>.json`` as they finish; training writes
``stages/<stage>.state.safetensors`` after every epoch, and ``stages/sessions.json`` records how
long each session (each start or ``--resume``) of the run has worked. A resumed run reads finished
stages back and continues an unfinished one from its last epoch. Every stage seeds its random
number generators from the run's seed and its own name (``stage_seed``), so a resumed run reaches
the same weights as an uninterrupted one.
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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

import filterprune
from filterprune import distributed
from filterprune._io import atomic_write_text
from filterprune.checkpoint import ModelSpec, builder_arguments, load_model, load_weights
from filterprune.data import BatchLoader, ImageDataset, load_dataset, make_loaders, sample_images
from filterprune.data.imagefolder import IMAGE_FOLDER, load_image_folder
from filterprune.data.split import validation_split
from filterprune.data.stream import load_user_datasets
from filterprune.engine import DependencyGraph, trace
from filterprune.engine.criteria import Criterion, random_criterion
from filterprune.errors import FilterpruneError
from filterprune.pipeline.config import RunConfig, load_config
from filterprune.pipeline.results import pack_outcomes
from filterprune.training import ComputeSettings, TrainSettings, evaluate, train
from filterprune.training.calibrate import calibrate_compute, setting_name

Log = Callable[[str], None]
SESSIONS = "sessions.json"
AUTO = "auto"
COMPUTE = "compute"


TEST, VALIDATION = "test", "validation"


@dataclass
class Session:
    """Data, loaders and device of a run, prepared once from its config.

    Attributes:
        dataset: the dataset, less the validation images in its training split.
        validation_batches: the validation split (``data.validation`` of the training set), or
            None when ``data.validation`` is 0.
        compute: the compute setting of training and evaluation: the configured one, or with
            ``compute: auto`` float32 until ``choose_compute`` picks one.
    """

    config: RunConfig
    dataset: ImageDataset
    train_batches: BatchLoader
    test_batches: BatchLoader
    device: torch.device
    spec: ModelSpec
    progress: bool = True
    validation_batches: BatchLoader | None = None
    compute: ComputeSettings = field(default_factory=ComputeSettings)

    @property
    def choice_split(self) -> str:
        """The split choices are made on (sensitivity, criteria, plans): ``validation``, or
        ``test`` when no validation split is held out."""
        return TEST if self.validation_batches is None else VALIDATION

    def batches(self, split: str) -> BatchLoader:
        """The batches of ``split`` (``test`` or ``validation``)."""
        return self.test_batches if split == TEST else self.validation_batches

    def sample_images(self, count: int) -> Iterator[torch.Tensor]:
        """``count`` training images drawn at random (seeded by the run's seed), normalised, not
        augmented, in batches of ``data.eval_batch_size`` (``filterprune.data.sample_images``)."""
        return sample_images(self.dataset, count, self.config.data.eval_batch_size,
                             self.config.seed, self.device)

    def trace(self, model: nn.Module) -> DependencyGraph:
        """The channel groups of ``model`` (``filterprune.engine.trace`` on the run's example
        input) under the run's ``prune.residual``, ``prune.linear`` and ``prune.exact``, so that
        every stage and command analyses and prunes the same layers."""
        cfg = self.config.prune
        return trace(model, self.spec.example_input(), residual=cfg.residual,
                     prune_linear=cfg.linear, exact=cfg.exact)

    def criterion(self, stage: str) -> str | Criterion:
        """The filter criterion of stage ``stage``: ``prune.criterion``, where ``random`` draws
        from a generator seeded by the stage's seed (``stage_seed``), so it follows the run's
        seed."""
        name = self.config.prune.criterion
        return random_criterion(stage_seed(self.config.seed, stage)) if name == "random" else name

    def evaluate(self, model: nn.Module, split: str = TEST, *, per_image: bool = False) -> dict:
        """Top-1, top-5 and loss of ``model`` on ``split`` (``filterprune.training.evaluate``);
        with ``per_image``, also ``"correct"``: whether it got each image right, packed as the
        records keep it (``filterprune.pipeline.results.pack_outcomes``)."""
        metrics = evaluate(model, self.batches(split), self.device, self.compute,
                           per_image=per_image)
        if per_image:
            metrics["correct"] = pack_outcomes(metrics["correct"])
        return metrics

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
                     compute=self.compute, **hooks)


class Stages:
    """The stage files of a run directory: ``stages/<name>.json`` holds a finished stage's result,
    ``stages/<name>.state.safetensors`` the training state of an unfinished one, and
    ``stages/sessions.json`` when each session of the run started and how long it worked. A
    session records itself when it opens the run and after every stage; one that was killed is
    counted, when the next opens, up to its last write in ``stages/`` (an epoch's training
    state or a finished stage).

    Args:
        out_dir: the run directory (it exists).
    """

    def __init__(self, out_dir: Path) -> None:
        self.root = Path(out_dir) / "stages"
        self._start, self._started = time.perf_counter(), time.time()
        self._earlier = self._read_sessions()
        if self._earlier:  # the last session may have worked on after its last record
            last = self._earlier[-1]
            written = max((p.stat().st_mtime for p in self.root.iterdir()), default=0.0)
            last["elapsed_s"] = max(last["elapsed_s"], written - last["started"])

    def state(self, name: str) -> Path:
        return self.root / f"{name}.state.safetensors"

    def finished(self) -> list[str]:
        """Names of the finished stages, in the order they finished."""
        done = [p for p in self.root.glob("*.json") if p.name != SESSIONS]
        return [p.stem for p in sorted(done, key=lambda p: p.stat().st_mtime_ns)]

    def unfinished(self) -> list[str]:
        """Names of the stages that hold a training state (interrupted inside an epoch loop)."""
        return sorted(p.name.removesuffix(".state.safetensors")
                      for p in self.root.glob("*.state.safetensors"))

    def record_session(self) -> float:
        """Records this session's seconds (rank 0); returns those of every session of the run,
        this one included (the report's wall time)."""
        distributed.on_main(self._record_session)
        return sum(s["elapsed_s"] for s in self._earlier) + time.perf_counter() - self._start

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
            self._record_session()

        distributed.on_main(record)
        return result

    def _read_sessions(self) -> list[dict]:
        path = self.root / SESSIONS
        return json.loads(path.read_text())["sessions"] if path.is_file() else []

    def _record_session(self) -> None:
        this = {"started": self._started, "elapsed_s": time.perf_counter() - self._start}
        atomic_write_text(self.root / SESSIONS, json.dumps({"sessions": [*self._earlier, this]}))


def stage_seed(seed: int, stage: str) -> int:
    """The seed of one stage, derived from the run's seed and the stage's name."""
    return (seed * 1_000_003 + zlib.crc32(stage.encode())) % 2**63


def percent(ratio: float) -> str:
    """``0.5`` -> ``"50"``: the ratio as it appears in stage and file names."""
    return f"{round(ratio * 100):02d}"


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
    """Refuses to resume what is not a run, or a run under a different config than the one in
    ``out_dir/config.yaml``.

    Raises:
        FilterpruneError: ``out_dir`` holds no run (no ``config.yaml``), or the first key whose
            value differs.
    """
    saved_path = Path(out_dir) / "config.yaml"
    if not saved_path.is_file():
        raise FilterpruneError(f"nothing to resume: {out_dir} holds no run (no config.yaml)")
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


def open_run(out_dir: Path, config: RunConfig, resume: bool, log: Log) -> Stages:
    """Prepares a run directory: writes the resolved config and clears the stage files, or, with
    ``resume``, checks the config and logs the finished stages and where the run resumes.

    Call it once the run's inputs are checked (data found, device available, layers known): a
    run that fails before leaves ``out_dir`` as it found it.

    Raises:
        FilterpruneError: a resume of no run or under a different config (``check_resume``);
            ``out_dir`` cannot be created or written.
    """
    out_dir = Path(out_dir)
    if resume:
        check_resume(out_dir, config)

    def write() -> None:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out_dir / "config.yaml",
                              yaml.safe_dump(config.model_dump(), sort_keys=False))
            root = out_dir / "stages"
            if not resume and root.exists():
                shutil.rmtree(root)
            root.mkdir(exist_ok=True)
        except OSError as e:
            raise FilterpruneError(f"cannot write the run directory {out_dir}: "
                                   f"{e.strerror or e}") from None

    distributed.on_main(write)
    stages = Stages(out_dir)
    stages.record_session()  # a session killed before its first stage still counts
    if resume:
        done, open_ = stages.finished(), stages.unfinished()
        log(f"resuming {out_dir}: {len(done)} stage(s) finished"
            + (f" ({', '.join(done)})" if done else "")
            + (f"; continuing {', '.join(open_)} from its last epoch" if open_ else
               "; the next stage starts afresh"))
    return stages


def prepare(config: RunConfig, *, progress: bool = True) -> Session:
    """Loads the dataset, holds out the validation split (``data.validation``), builds loaders
    and the model spec (dataset-dependent arguments filled).

    With ``config.deterministic``, torch is restricted to deterministic algorithms.

    Raises:
        FilterpruneError: data not found or unreadable, a class with too few training images to
            hold some out (the message says how to turn the split off), or a bad device.
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
    validation_batches = None
    if config.data.validation:
        try:
            dataset, held_out = validation_split(dataset, config.data.validation, config.seed)
        except FilterpruneError as e:
            raise FilterpruneError(f"{e} (set data.validation: 0 to hold none out)") from None
        validation_batches = _loaders(config, held_out, device, config.train.batch_size)[1]
    train_batches, test_batches = _loaders(config, dataset, device, config.train.batch_size)
    shape = (dataset.in_channels, dataset.image_size, dataset.image_size)
    kwargs = builder_arguments(config.model.name, config.model.kwargs, shape,
                               dataset.num_classes)
    spec = ModelSpec(config.model.name, kwargs, (1, *shape))
    compute = ComputeSettings() if config.compute == AUTO else config.compute
    return Session(config, dataset, train_batches, test_batches, device, spec,
                   progress and distributed.is_main(), validation_batches, compute)


def environment(session: Session) -> dict:
    """Package and torch versions, device, seed, number of processes (torchrun) and compute
    setting, written next to every result."""
    return {
        "filterprune": filterprune.__version__, "torch": torch.__version__,
        "python": platform.python_version(), "device": str(session.device),
        "seed": session.config.seed, "processes": distributed.world_size(),
        "compute": setting_name(session.compute),
    }


def choose_compute(session: Session, model: nn.Module, stages: Stages, log: Log) -> dict | None:
    """With ``compute: auto``, picks the compute setting of the run once, before any training
    (stage ``compute``: a resumed run reuses the pick), and makes it ``session.compute``; logs
    the pick and why in one line. The calibration times a few training steps of copies of
    ``model`` on one training batch (``calibrate_compute``; ``model`` is not changed). Under
    torchrun rank 0 calibrates and every rank takes its pick.

    Returns:
        The calibration (``Calibration.to_dict()``), or None with explicit settings.
    """
    if session.config.compute != AUTO:
        return None
    finished = COMPUTE in stages.finished()

    def calibrate() -> dict:
        images, labels = next(iter(session.train_batches))
        return calibrate_compute(model, images, labels, session.device,
                                 budget_s=session.config.calibration_budget_s).to_dict()

    picked = stages.run(COMPUTE, lambda: distributed.on_main(calibrate))
    picked = distributed.gather_dicts({} if picked is None else {COMPUTE: picked})[COMPUTE]
    session.compute = ComputeSettings(**picked["settings"])
    log(picked["reason"] + (" (the pick of the run's first session)" if finished else ""))
    return picked


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
