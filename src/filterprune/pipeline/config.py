"""The run configuration: a YAML file, then ``--set key=value`` overrides, validated by pydantic.

Unknown keys, wrong types and out-of-range values are errors that name the key.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from filterprune.engine.budget import TARGETS
from filterprune.engine.criteria import CRITERIA
from filterprune.engine.graph import RESIDUAL_POLICIES
from filterprune.engine.plan import STRATEGIES, check_ratio
from filterprune.errors import FilterpruneError
from filterprune.models._external import pretrained_arguments
from filterprune.paper import named_plan
from filterprune.training.loop import ComputeSettings, TrainSettings

SWEEP = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_ratios(ratios: list[float]) -> list[float]:
    return [check_ratio(r, "the sweep") for r in ratios]


class ModelConfig(_Strict):
    """The model: a zoo name, ``timm:NAME``, ``torchvision:NAME`` or ``package.module:callable``
    (an importable builder), its builder arguments (``num_classes``, ``in_channels`` / timm's
    ``in_chans`` and ``input_size`` are filled from the dataset where the builder takes them,
    unless given), and ``weights`` loaded before the baseline is trained (``train.epochs: 0``
    keeps them as they are): safetensors, or a ``.pt``/``.pth`` state dict. ``pretrained``
    starts a ``timm:`` or ``torchvision:`` model from its hub's pretrained weights
    (``filterprune.checkpoint.build_model``; downloaded, so the hub must be reachable; not
    recorded in the model files, which carry their own weights)."""

    name: str = "scnnb"
    kwargs: dict[str, Any] = Field(default_factory=dict)
    weights: str | None = None
    pretrained: bool = False

    @model_validator(mode="after")
    def _pretrained_needs_a_hub(self) -> ModelConfig:
        if self.pretrained:
            try:
                pretrained_arguments(self.name)
            except FilterpruneError as e:
                raise ValueError(str(e)) from None
        return self


class DataConfig(_Strict):
    """Dataset name (``filterprune.data.list_datasets()``, ``imagefolder`` for an
    ImageNet-style folder ``data_dir`` with ``train/<class>/`` and ``val/<class>/``, or
    ``package.module:callable`` returning the user's own (train, test) datasets), where its
    files are, a training subset size (None = all images), the evaluation batch size, and the
    side in pixels image folders are resized and centre-cropped to (``image_size``).

    ``validation``: the share of each class of the training set held out (seeded by ``seed``,
    ``filterprune.data.split.validation_split``) as the validation split, on which the
    sensitivity analysis and every choice are made; the test split gives only the reported
    accuracies. 0 holds nothing out: the sensitivity is then measured on the test split (the
    report says so)."""

    name: str = "fashion-mnist-sample"
    data_dir: str | None = None
    download: bool = False
    train_subset: int | None = Field(None, ge=1)
    eval_batch_size: int = Field(1000, ge=1)
    image_size: int = Field(224, ge=1)
    validation: float = Field(0.1, ge=0, lt=1)


class PruneConfig(_Strict):
    """Pruning sweep: every prunable layer at each ratio, minus ``skip`` (patterns);
    ``residual`` is the residual policy (``filterprune.engine.trace``); ``score_by`` names
    the members that score a shared group (``filterprune.engine.plan.select_filters``).
    ``plans`` names configurations of the paper (``filterprune.paper.NAMED_PLANS``, each with its
    own ratios, skip list and residual policy), each pruned as one more point; giving them makes
    the sweep empty unless ``ratios`` is given too.

    ``schedule``: ``one-shot`` prunes all layers at once, then retrains; ``iterative`` prunes
    one layer (channel group) at a time in forward order, retraining ``iterative_epochs``
    epochs after each, then retrains as one-shot does (Li et al. 2017, §3.4).

    ``strict``: fail before training when pruning every layer would reach under half of the
    conv MACs (by default a warning; the report says the share either way).

    ``targets``: shares in (0, 1) of the baseline's ``target_cost`` (``macs``, ``params`` or
    ``latency``, the last from a latency table measured on the run's device) to remove, each
    reached three ways side by side: one ratio for all layers, global ranking, and from the
    sensitivity analysis (filterprune.pipeline.targets).

    ``linear``: also prune the hidden Linear layers of classifier heads (never the output one).
    ``exact``: false also prunes through LayerNorm/GroupNorm over channels and weight-
    standardised convs, marking those layers approximate in the plan.
    """

    criterion: Literal[tuple(CRITERIA)] = "l1"
    strategy: Literal[STRATEGIES] = "independent"
    residual: Literal[RESIDUAL_POLICIES] = "inner"
    ratios: list[float] = Field(default_factory=lambda: list(SWEEP))
    skip: list[str] = Field(default_factory=list)
    round_to: int = Field(1, ge=1)
    score_by: list[str] = Field(default_factory=list)
    plans: list[str] = Field(default_factory=list)
    schedule: Literal["one-shot", "iterative"] = "one-shot"
    iterative_epochs: int = Field(1, ge=0)
    strict: bool = False
    targets: list[float] = Field(default_factory=list)
    target_cost: Literal[TARGETS] = "macs"
    linear: bool = False
    exact: bool = True

    _ratios = field_validator("ratios")(_check_ratios)

    @field_validator("targets")
    @classmethod
    def _shares(cls, targets: list[float]) -> list[float]:
        for share in targets:
            if not 0 < share < 1:
                raise ValueError(f"target {share:g} is not a share in (0, 1) of the cost to "
                                 "remove")
        names = [round(share * 100) for share in targets]
        if len(set(names)) < len(names):
            raise ValueError(f"targets {targets} repeat a whole percent (stage names use it)")
        return targets

    @field_validator("plans")
    @classmethod
    def _known_plans(cls, names: list[str]) -> list[str]:
        for name in names:
            named_plan(name)
        return names

    @model_validator(mode="after")
    def _plans_replace_the_sweep(self) -> PruneConfig:
        if self.plans and "ratios" not in self.model_fields_set:
            self.ratios = []
        return self


class SensitivityConfig(_Strict):
    """Each prunable layer pruned alone at each ratio, evaluated without retraining (Fig. 2b),
    or after ``retrain_epochs`` epochs of retraining with the ``retrain`` settings (Fig. 2c).
    Without retraining, ``method`` ``shared-prefix`` (no copies, fast) or ``copies`` (the
    reference, same numbers: filterprune.analysis)."""

    enabled: bool = True
    method: Literal["shared-prefix", "copies"] = "shared-prefix"
    ratios: list[float] = Field(default_factory=lambda: list(SWEEP))
    retrain_epochs: int = Field(0, ge=0)

    _ratios = field_validator("ratios")(_check_ratios)


class MethodConfig(_Strict):
    """One pruning method compared with the one-shot L1 sweep at every ratio of ``prune.ratios``
    (filterprune.pipeline.methods). Its stages and model files are named ``<name>-<ratio %>``.

    Attributes:
        name: label in the report and stage names (letters, digits, ``-``, ``_``).
        kind: ``l1`` one-shot by ``prune.criterion`` (Li et al. 2017); ``sfp`` Soft Filter
            Pruning (He et al. 2018); ``unstructured`` per-weight magnitude pruning of the convs
            (torch.nn.utils.prune) at the fraction of conv weights the filter-pruned model
            removes; ``cluster`` one filter kept per cluster of similar filters.
        distill: retrain with knowledge distillation from the baseline (``distill`` section).
        scope: ``unstructured``: ``local`` (each conv at the fraction) or ``global`` (one
            threshold over all convs).
        describe: ``cluster``: filters described by their ``weights`` or their ``features``
            (output maps on ``calibration_images`` training images).
        online: ``cluster``: re-cluster and zero the redundant filters after every retraining
            epoch (as SFP does with norms), removing them at the end; else cluster once, offline.
        calibration_images: ``cluster`` with ``features``: number of training images (drawn at
            random, seeded by ``seed``) whose feature maps describe the filters.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    kind: Literal["l1", "sfp", "unstructured", "cluster"]
    distill: bool = False
    scope: Literal["local", "global"] = "local"
    describe: Literal["weights", "features"] = "weights"
    online: bool = False
    calibration_images: int = Field(32, ge=1)


class DistillConfig(_Strict):
    """Knowledge distillation from the baseline while retraining (filterprune.training.distill):
    temperature T, the weight ``alpha`` of the soft term, and whether the one-shot sweep's
    retraining distills too (``sweep``; methods choose with their own ``distill``)."""

    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.9, ge=0, le=1)
    sweep: bool = False


class DeployConfig(_Strict):
    """Deployment metrics of the baseline and every pruned model (filterprune.deploy), measured
    side by side in one stage: interleaved rounds, at least ``rounds`` of them, each timing every
    model (and the same widths built directly) for at least ``min_run_time_s`` seconds, until
    every latency's IQR / median is at most ``max_spread`` or ``budget_s`` seconds are spent
    (per batch size); a latency or ratio whose spread stays above ``max_spread`` is marked
    unreliable."""

    enabled: bool = True
    batch_sizes: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [1, 64],
                                                           min_length=1)
    min_run_time_s: float = Field(0.02, gt=0)
    rounds: int = Field(5, ge=1)
    budget_s: float = Field(20.0, gt=0)
    max_spread: float = Field(0.1, gt=0)


def _retrain_default() -> TrainSettings:
    return TrainSettings(epochs=3, lr=0.01, schedule="cosine")


class RunConfig(_Strict):
    """Everything ``filterprune run`` does.

    Attributes:
        seed: seeds weights, data order and augmentation.
        seeds: how many seeds the baseline and the pruning sweep are run with: ``seed`` (the
            whole run) and, beyond 1, ``seed + 1`` ... ``seed + seeds - 1`` (baseline and sweep
            only; the report gives each row's mean and spread over the seeds).
        device: ``auto`` (CUDA if available), ``cpu``, ``cuda``, ``cuda:1``...
        deterministic: restrict torch to deterministic algorithms (same seed, same weights).
        baseline: a model file to start from instead of training the baseline.
        methods: pruning methods compared with the one-shot L1 sweep (default: none, the sweep
            alone).
        distill: distillation settings of the methods with ``distill: true``.
        deploy: deployment metrics (latency, throughput, memory, file size).
        scratch: from-scratch controls trained for every pruned model: ``E`` (the baseline's
            epochs) and/or ``B`` (the baseline's compute), Liu et al. 2019.
        compute: ``auto`` (the default): the fastest correct setting for the model and device,
            picked once per run from a short measured calibration
            (``filterprune.training.calibrate.calibrate_compute``, at most
            ``calibration_budget_s`` seconds of timed rounds); or explicit settings of memory
            format, bf16 autocast and torch.compile for training and evaluation.
        baseline_retrained: the control for extra training: when ``retrain.epochs`` > 0, the
            baseline is also retrained with the ``retrain`` settings (stage
            ``baseline-retrained``) and every pruned row's drop is given against it too, so that
            gains from the extra epochs are not credited to pruning.
    """

    seed: int = 0
    seeds: int = Field(1, ge=1)
    device: str = "auto"
    deterministic: bool = False
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainSettings = Field(default_factory=TrainSettings)
    retrain: TrainSettings = Field(default_factory=_retrain_default)
    prune: PruneConfig = Field(default_factory=PruneConfig)
    sensitivity: SensitivityConfig = Field(default_factory=SensitivityConfig)
    baseline: str | None = None
    scratch: list[Literal["E", "B"]] = Field(default_factory=list)
    compute: ComputeSettings | Literal["auto"] = Field("auto", union_mode="left_to_right")
    calibration_budget_s: float = Field(5.0, gt=0)
    methods: list[MethodConfig] = Field(default_factory=list)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    deploy: DeployConfig = Field(default_factory=DeployConfig)
    baseline_retrained: bool = True

    @field_validator("compute", mode="before")
    @classmethod
    def _auto_or_settings(cls, value: Any) -> Any:
        if isinstance(value, str) and value != "auto":
            raise ValueError(f"'{value}' is neither 'auto' nor a mapping of settings "
                             "(channels_last, bf16, compile)")
        return value

    @field_validator("methods")
    @classmethod
    def _unique_names(cls, methods: list[MethodConfig]) -> list[MethodConfig]:
        names = [m.name for m in methods]
        repeated = sorted({n for n in names if names.count(n) > 1} | ({"pruned"} & set(names)))
        if repeated:
            raise ValueError(f"method names must be unique and not 'pruned': {repeated}")
        return methods

    @model_validator(mode="after")
    def _plan_fits_the_model(self) -> RunConfig:
        for name in self.prune.plans:
            if named_plan(name).model != self.model.name:
                raise ValueError(f"prune.plans: '{name}' is for model {named_plan(name).model}, "
                                 f"not {self.model.name}")
        return self


def _set(data: dict, assignment: str) -> None:
    key, sep, value = assignment.partition("=")
    if not sep or not key:
        raise FilterpruneError(f"override '{assignment}' is not of the form key.path=value")
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise FilterpruneError(f"override '{assignment}': '{part}' is not a section")
    try:
        node[leaf] = yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise FilterpruneError(
            f"override '{assignment}': the value is not valid YAML ({str(e).splitlines()[0]}); "
            "quote it, e.g. --set 'prune.skip=[features.0]'"
        ) from None


def parse_config(data: dict, overrides: list[str] = ()) -> RunConfig:
    """Validates ``data`` with ``overrides`` (``"train.epochs=3"``) applied.

    Raises:
        FilterpruneError: one line naming the first invalid key.
    """
    data = copy.deepcopy(data)  # the overrides set nested keys; the caller's dicts stay as given
    for assignment in overrides:
        _set(data, assignment)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        # keys are snake_case: a capitalised or literal[...] part names a member of a union
        where = ".".join(str(p) for p in err["loc"]
                         if not str(p)[:1].isupper() and not str(p).startswith("literal[")
                         ) or "config"
        raise FilterpruneError(f"invalid config: {where}: {err['msg']}") from None


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Reads a YAML config file and validates it (see ``parse_config``).

    Raises:
        FilterpruneError: missing file, a directory, malformed YAML, or an invalid key.
    """
    path = Path(path)
    if path.is_dir():
        raise FilterpruneError(f"config {path} is a directory, not a YAML file")
    if not path.is_file():
        raise FilterpruneError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise FilterpruneError(f"malformed YAML in {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise FilterpruneError(f"config {path} must be a mapping of sections")
    return parse_config(data, overrides)
