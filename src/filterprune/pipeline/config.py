"""The run configuration: a YAML file, then ``--set key=value`` overrides, validated by pydantic.

Unknown keys, wrong types and out-of-range values are errors that name the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from filterprune.engine.graph import RESIDUAL_POLICIES
from filterprune.engine.plan import STRATEGIES, check_ratio
from filterprune.errors import FilterpruneError
from filterprune.pipeline.sensitivity import METHODS
from filterprune.training.loop import ComputeSettings, TrainSettings

SWEEP = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_ratios(ratios: list[float]) -> list[float]:
    return [check_ratio(r, "the sweep") for r in ratios]


class ModelConfig(_Strict):
    """Zoo model name and builder arguments; ``num_classes``, ``in_channels`` and ``input_size``
    are filled from the dataset unless given."""

    name: str = "scnnb"
    kwargs: dict[str, Any] = Field(default_factory=dict)


class DataConfig(_Strict):
    """Dataset name (``filterprune.data.list_datasets()``), where its files are, a training subset
    size (None = all images) and the evaluation batch size."""

    name: str = "fashion-mnist-sample"
    data_dir: str | None = None
    download: bool = False
    train_subset: int | None = Field(None, ge=1)
    eval_batch_size: int = Field(1000, ge=1)


class PruneConfig(_Strict):
    """One-shot pruning sweep: every prunable layer at each ratio, minus ``skip`` (patterns);
    ``residual`` is the residual policy (``filterprune.engine.graph.trace``)."""

    criterion: Literal["l1", "l2"] = "l1"
    strategy: Literal[STRATEGIES] = "independent"
    residual: Literal[RESIDUAL_POLICIES] = "inner"
    ratios: list[float] = Field(default_factory=lambda: list(SWEEP))
    skip: list[str] = Field(default_factory=list)
    round_to: int = Field(1, ge=1)

    _ratios = field_validator("ratios")(_check_ratios)


class SensitivityConfig(_Strict):
    """Each prunable layer pruned alone at each ratio, evaluated without retraining (Fig. 2b);
    ``method`` ``shared-prefix`` (no copies, fast) or ``copies`` (the reference, same numbers:
    filterprune.pipeline.sensitivity)."""

    enabled: bool = True
    method: Literal[METHODS] = "shared-prefix"
    ratios: list[float] = Field(default_factory=lambda: list(SWEEP))

    _ratios = field_validator("ratios")(_check_ratios)


def _retrain_default() -> TrainSettings:
    return TrainSettings(epochs=3, lr=0.01, schedule="cosine")


class RunConfig(_Strict):
    """Everything ``filterprune run`` does.

    Attributes:
        seed: seeds weights, data order and augmentation.
        device: ``auto`` (CUDA if available), ``cpu``, ``cuda``, ``cuda:1``...
        deterministic: restrict torch to deterministic algorithms (same seed, same weights).
        baseline: a model file to start from instead of training the baseline.
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
    compute: ComputeSettings = Field(default_factory=ComputeSettings)


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
    node[leaf] = yaml.safe_load(value)


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
        FilterpruneError: missing file, malformed YAML, or an invalid key.
    """
    path = Path(path)
    if not path.is_file():
        raise FilterpruneError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise FilterpruneError(f"malformed YAML in {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise FilterpruneError(f"config {path} must be a mapping of sections")
    return parse_config(data, overrides)
