"""The run configuration: a YAML file, then ``--set key=value`` overrides, validated by pydantic.

Unknown keys, wrong types and out-of-range values are errors that name the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from filterprune.engine.criteria import CRITERIA
from filterprune.engine.graph import RESIDUAL_POLICIES
from filterprune.engine.plan import STRATEGIES, check_ratio
from filterprune.errors import FilterpruneError
from filterprune.paper import named_plan
from filterprune.pipeline.sensitivity import METHODS
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
    keeps them as they are): safetensors, or a ``.pt``/``.pth`` state dict."""

    name: str = "scnnb"
    kwargs: dict[str, Any] = Field(default_factory=dict)
    weights: str | None = None


class DataConfig(_Strict):
    """Dataset name (``filterprune.data.list_datasets()``, ``imagefolder`` for an
    ImageNet-style folder ``data_dir`` with ``train/<class>/`` and ``val/<class>/``, or
    ``package.module:callable`` returning the user's own (train, test) datasets), where its
    files are, a training subset size (None = all images), the evaluation batch size, and the
    side in pixels image folders are resized and centre-cropped to (``image_size``)."""

    name: str = "fashion-mnist-sample"
    data_dir: str | None = None
    download: bool = False
    train_subset: int | None = Field(None, ge=1)
    eval_batch_size: int = Field(1000, ge=1)
    image_size: int = Field(224, ge=1)


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
    linear: bool = False
    exact: bool = True

    _ratios = field_validator("ratios")(_check_ratios)

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
    reference, same numbers: filterprune.pipeline.sensitivity)."""

    enabled: bool = True
    method: Literal[METHODS] = "shared-prefix"
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
    side by side in one stage: ``rounds`` interleaved rounds (the fastest kept), each timing
    every batch size for at least ``min_run_time_s`` seconds."""

    enabled: bool = True
    batch_sizes: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [1, 64],
                                                           min_length=1)
    min_run_time_s: float = Field(0.2, gt=0)
    rounds: int = Field(3, ge=1)


def _retrain_default() -> TrainSettings:
    return TrainSettings(epochs=3, lr=0.01, schedule="cosine")


class RunConfig(_Strict):
    """Everything ``filterprune run`` does.

    Attributes:
        seed: seeds weights, data order and augmentation.
        device: ``auto`` (CUDA if available), ``cpu``, ``cuda``, ``cuda:1``...
        deterministic: restrict torch to deterministic algorithms (same seed, same weights).
        baseline: a model file to start from instead of training the baseline.
        methods: pruning methods compared with the one-shot L1 sweep (default: none, the sweep
            alone).
        distill: distillation settings of the methods with ``distill: true``.
        deploy: deployment metrics (latency, throughput, memory, file size).
        scratch: from-scratch controls trained for every pruned model: ``E`` (the baseline's
            epochs) and/or ``B`` (the baseline's compute), Liu et al. 2019.
        compute: memory format, bf16 autocast and torch.compile of training and evaluation
            (all off by default).
    """

    seed: int = 0
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
    compute: ComputeSettings = Field(default_factory=ComputeSettings)
    methods: list[MethodConfig] = Field(default_factory=list)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    deploy: DeployConfig = Field(default_factory=DeployConfig)

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
    data = dict(data)
    for assignment in overrides:
        _set(data, assignment)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "config"
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
