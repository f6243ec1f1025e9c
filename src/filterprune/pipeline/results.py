"""The results of ``filterprune run`` as typed records: what ``results.json`` holds.

``results.json`` is written from a :class:`RunResults` (``RunResults.save``) and read back
through it (``RunResults.load``) by the report, the comparison section, ``paper-table
--results``, the CLI's run table and the tests. It carries ``schema_version``; a file without it
(written before the schema existed) or of another version is refused with one line naming the
version found, and the run that wrote it can be resumed to rewrite it (``filterprune run
... --resume``; its finished stages are read back, not recomputed).

Accuracies are top-1 / top-5 in % on the test set (``TopIntervals.split`` says which images a
figure comes from); every top-1 of a model carries its 95% interval and every drop its paired
interval (``TopIntervals``, filled by ``with_intervals`` from the per-image outcomes each model
record keeps, ``pack_outcomes``); ``macs`` are multiply-accumulates per image
(FLOPs = 2 x MACs); reductions are fractions in [0, 1] of the baseline's count.
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from filterprune._io import atomic_write_text
from filterprune.engine.coverage import BlockedLayer, Coverage
from filterprune.errors import FilterpruneError
from filterprune.stats import Interval

SCHEMA_VERSION = 2


def pack_outcomes(correct: torch.Tensor) -> str:
    """Per-image outcomes as the records keep them: bool (N,) -> base64 of the packed bits
    (N / 8 bytes; 1,000 test images take 168 characters)."""
    bits = np.packbits(correct.bool().cpu().numpy())
    return base64.b64encode(bits.tobytes()).decode("ascii")


def unpack_outcomes(text: str, n: int) -> torch.Tensor:
    """The bool (N,) tensor that ``pack_outcomes`` packed, ``n`` = N.

    Raises:
        FilterpruneError: ``text`` is not base64 or holds fewer than ``n`` bits.
    """
    try:
        bits = np.frombuffer(base64.b64decode(text, validate=True), dtype=np.uint8)
    except ValueError as e:
        raise FilterpruneError(f"malformed per-image outcomes: {e}") from None
    if len(bits) * 8 < n:
        raise FilterpruneError(f"per-image outcomes of {len(bits) * 8} images, need {n}")
    return torch.from_numpy(np.unpackbits(bits)[:n].astype(bool))


@dataclass
class TopIntervals:
    """The 95% intervals of one model's top-1 (filterprune.stats).

    Attributes:
        split: the images the top-1 comes from (``test``).
        n: how many images.
        top1: Wilson interval of the top-1 (%).
        top1_before: of a pruned model, its top-1 before retraining.
        drop: the drop (points; positive = accuracy lost) from the baseline, paired on the
            per-image outcomes when both records keep them, else unpaired (``method`` says).
        drop_vs_retrained: the drop from the baseline retrained as long as the pruned models
            (the ``baseline-retrained`` control), paired likewise.
    """

    split: str
    n: int
    top1: Interval
    top1_before: Interval | None = None
    drop: Interval | None = None
    drop_vs_retrained: Interval | None = None

    @classmethod
    def from_dict(cls, data: dict) -> TopIntervals:
        fields = {k: None if v is None else Interval(**v) for k, v in data.items()
                  if k not in ("split", "n")}
        return cls(split=data["split"], n=data["n"], **fields)


def _record(cls: type, data: dict):
    """``cls(**data)`` with its ``intervals`` read back as ``TopIntervals``."""
    intervals = data.get("intervals")
    return cls(**{**data, "intervals": None if intervals is None
                  else TopIntervals.from_dict(intervals)})


@dataclass
class Baseline:
    """The unpruned model: accuracy, cost, and its training (``epochs`` 0 when loaded).

    Attributes:
        correct: whether it got each test image right (``pack_outcomes``; None in records
            written before they were kept).
        intervals: its top-1 interval (``with_intervals``).
    """

    top1: float
    top5: float | None
    loss: float
    macs: int
    params: int
    params_conv_linear: int
    epochs: int
    train_time_s: float
    history: list[dict] = field(default_factory=list)
    correct: str | None = None
    intervals: TopIntervals | None = None


@dataclass
class PrunedRow:
    """One pruned and retrained model (Li et al. 2017, §3.4): a ratio of every prunable layer
    (``ratio``; ``plan`` None) or a named plan of the paper (``plan``; ``ratio`` None).

    Attributes:
        stage: its stage and model file name (``pruned-50``).
        kept: layer name -> number of filters kept (empty: the baseline's architecture).
        residual: the residual policy it was pruned under (a named plan's own).
        correct: whether it got each test image right after retraining (``pack_outcomes``).
        intervals: of its top-1 before and after retraining and of its drops.
    """

    stage: str
    ratio: float | None
    macs: int
    params: int
    params_conv_linear: int
    macs_reduction: float
    params_reduction: float
    top1_before: float
    top1_after: float
    top5_before: float | None
    top5_after: float | None
    retrain_epochs: int
    kept: dict[str, int]
    plan: str | None = None
    schedule: str = "one-shot"
    residual: str | None = None
    correct: str | None = None
    intervals: TopIntervals | None = None

    @property
    def label(self) -> str:
        """Its ratio (``0.5``) or its named plan."""
        return self.plan or f"{self.ratio:g}"


@dataclass
class MethodRow(PrunedRow):
    """A row of a method compared with the sweep (filterprune.pipeline.methods).

    Attributes:
        zeroed_conv_weights: ``unstructured``: the fraction of conv weights set to zero.
    """

    method: str = ""
    kind: str = ""
    distill: bool = False
    zeroed_conv_weights: float | None = None


@dataclass
class ScratchRow:
    """A pruned architecture trained from random initialisation (Liu et al. 2019)."""

    ratio: float | None
    plan: str | None
    pruned: str
    kind: str
    epochs: int
    top1: float
    top5: float | None
    loss: float
    train_time_s: float
    correct: str | None = None
    intervals: TopIntervals | None = None


@dataclass
class RetrainedBaseline:
    """The control for extra training: the baseline retrained with the ``retrain`` settings of
    the pruned models (stage ``baseline-retrained``), so that what retraining alone gains is
    not credited to pruning.

    Attributes:
        epochs: retraining epochs (``retrain.epochs``).
        correct: whether it got each test image right (``pack_outcomes``).
    """

    top1: float
    top5: float | None
    loss: float
    epochs: int
    train_time_s: float
    correct: str | None = None
    intervals: TopIntervals | None = None


@dataclass
class SeedRepeat:
    """The baseline and the pruning sweep repeated with another seed (``seeds``: weights, data
    order and augmentation; the data splits stay those of the run's seed). Its stages and
    model files carry the suffix ``-seed<seed>``.

    Attributes:
        seed: the seed.
        baseline: its baseline.
        pruning: its pruned rows, in the order of the run's.
    """

    seed: int
    baseline: Baseline
    pruning: list[PrunedRow]

    @classmethod
    def from_dict(cls, data: dict) -> SeedRepeat:
        return cls(data["seed"], _record(Baseline, data["baseline"]),
                   [_record(PrunedRow, row) for row in data["pruning"]])


@dataclass
class SensitivityTable:
    """Top-1 (%) per analysed layer (one per channel group) and ratio (Fig. 2b, 2c).

    Attributes:
        members: group name -> its members, for groups of several layers.
        retrain_epochs: epochs of retraining before evaluation (0: none, Fig. 2b).
        split: the images it is measured on: ``validation`` (held out of the training set), or
            ``test`` when the run held none out.
        baseline_top1: the baseline's top-1 on that split (None: not recorded; the report then
            compares with the test top-1).
    """

    ratios: list[float]
    layers: dict[str, list[float]]
    members: dict[str, list[str]] = field(default_factory=dict)
    retrain_epochs: int = 0
    split: str = "test"
    baseline_top1: float | None = None


@dataclass
class DatasetInfo:
    """The dataset: its name, the training images used (``data.train_subset`` or all, less the
    validation split), the test images, the number of classes and the validation images held
    out of the training set (0: none; choices were then made on the test split)."""

    name: str
    train_size: int
    test_size: int
    num_classes: int
    validation_size: int = 0


@dataclass
class Environment:
    """Versions, device, seed, number of processes (torchrun) and compute setting (its name,
    ``filterprune.training.calibrate.setting_name``) of the run."""

    filterprune: str
    torch: str
    python: str
    device: str
    seed: int
    processes: int
    compute: str = "float32"


@dataclass
class RunResults:
    """Everything ``filterprune run`` measured (``results.json``).

    Attributes:
        baseline_retrained: the control for extra training, or None when it was not run.
        calibration: how ``compute: auto`` picked the compute setting
            (``filterprune.training.calibrate.Calibration.to_dict``), or None with explicit
            settings.
        repeats: the baseline and sweep repeated with the other seeds (``seeds`` > 1).
        deploy: the deployment measurements (filterprune.pipeline.deployment), or None when
            ``deploy.enabled`` is false; kept as that stage's dict.
        wall_time_s: seconds worked by every session of the run (a resumed run counts all).
    """

    model: str | None
    dataset: DatasetInfo
    criterion: str
    strategy: str
    residual: str
    environment: Environment
    coverage: Coverage
    baseline: Baseline
    filter_norms: dict[str, list[float]]
    sensitivity: SensitivityTable | None
    pruning: list[PrunedRow]
    methods: dict[str, list[MethodRow]] = field(default_factory=dict)
    scratch: list[ScratchRow] = field(default_factory=list)
    deploy: dict | None = None
    wall_time_s: float = 0.0
    baseline_retrained: RetrainedBaseline | None = None
    calibration: dict | None = None
    repeats: list[SeedRepeat] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION
    targets: Targets | None = None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["coverage"] = self.coverage.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> RunResults:
        """Raises:
            FilterpruneError: no or another ``schema_version``, or a record missing a field or
                holding an unknown one."""
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise FilterpruneError(
                f"results of schema version {version!r}, this filterprune reads version "
                f"{SCHEMA_VERSION} (rerun, or resume the run to rewrite results.json)")
        try:
            sensitivity = data.get("sensitivity")
            return cls(
                model=data["model"], dataset=DatasetInfo(**data["dataset"]),
                criterion=data["criterion"], strategy=data["strategy"],
                residual=data["residual"], environment=Environment(**data["environment"]),
                coverage=coverage_from_dict(data["coverage"]),
                baseline=_record(Baseline, data["baseline"]), filter_norms=data["filter_norms"],
                sensitivity=None if sensitivity is None else SensitivityTable(**sensitivity),
                pruning=[_record(PrunedRow, row) for row in data["pruning"]],
                methods={name: [_record(MethodRow, row) for row in rows]
                         for name, rows in data.get("methods", {}).items()},
                scratch=[_record(ScratchRow, row) for row in data.get("scratch", [])],
                deploy=data.get("deploy"), wall_time_s=data["wall_time_s"],
                baseline_retrained=None if data.get("baseline_retrained") is None
                else _record(RetrainedBaseline, data["baseline_retrained"]),
                calibration=data.get("calibration"),
                repeats=[SeedRepeat.from_dict(r) for r in data.get("repeats", [])],
                targets=None if data.get("targets") is None else Targets.from_dict(
                    data["targets"]),
            )
        except (KeyError, TypeError) as e:
            raise FilterpruneError(f"malformed results: {e}") from None

    def save(self, path: str | Path) -> Path:
        """Writes ``results.json``, atomically."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> RunResults:
        """Raises:
            FilterpruneError: a missing or unreadable file, or results this version cannot read
                (see ``from_dict``)."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise FilterpruneError(f"cannot read results file {path}: {e}") from None
        if not isinstance(data, dict):
            raise FilterpruneError(f"results file {path} does not hold a JSON object")
        try:
            return cls.from_dict(data)
        except FilterpruneError as e:
            raise FilterpruneError(f"{path}: {e}") from None


def coverage_from_dict(data: dict) -> Coverage:
    """The ``Coverage`` that ``Coverage.to_dict`` wrote (the shares are recomputed)."""
    return Coverage(data["conv_macs"], data["requested_macs"], data["reached_macs"],
                    data["prunable_macs"], tuple(BlockedLayer(**b) for b in data["blocked"]))



@dataclass
class TargetRow(PrunedRow):
    """A model pruned to a target share of the baseline's cost (filterprune.pipeline.targets)
    and retrained like the sweep; ``ratio`` and ``plan`` are None.

    Attributes:
        target: the share of the baseline's ``cost`` to remove, in (0, 1).
        way: how the per-layer ratios were chosen: ``uniform``, ``global`` or ``sensitivity``.
        cost: ``macs``, ``params`` or ``latency``.
        budget: the allocation (``filterprune.engine.Budget.to_dict``): the ratio of every
            pruned layer, the ``achieved`` share (for latency, predicted from the table), the
            ``reachable`` share and, from sensitivity, the ``predicted_loss``.
    """

    target: float = 0.0
    way: str = ""
    cost: str = "macs"
    budget: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``50% global``."""
        return f"{self.target:.0%} {self.way}"


@dataclass
class Targets:
    """The target shares of a run, each reached every way side by side.

    Attributes:
        cost: ``macs``, ``params`` or ``latency``.
        shares: the target shares, as configured (``prune.targets``).
        ways: the ways of choosing that ran.
        skipped: way -> why it did not run (e.g. ``sensitivity`` when the analysis is off).
        latency_table: with a latency cost, the table measured on the run's device
            (``filterprune.LatencyTable.to_dict``).
        rows: one per target and way.
    """

    cost: str
    shares: list[float]
    ways: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    latency_table: dict | None = None
    rows: list[TargetRow] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict) -> Targets:
        return cls(**{**data, "rows": [TargetRow(**row) for row in data["rows"]]})
