"""The named pruning configurations of Li et al. 2017 (Table 1) and the table itself.

A named plan is ordinary pruning configuration: ratios per layer name or glob pattern, a skip
list, a residual policy (and, for pruned-C, the members that score a shared group), for one zoo
model. The paper numbers conv layers from 1 in forward order (§4.2; in the CIFAR ResNets the stem
is layer 1 and block k's convs are layers 2k and 2k + 1; projection shortcuts are not numbered):
:func:`paper_layer_ids` computes that numbering from the module names, and the plans below are
written with the paper's ids where the paper uses them.

The figures the paper reports (test error, MACs - the paper's "FLOP" - and parameters) are kept
beside each plan, so that :func:`paper_table` prints the paper's numbers next to the ones the tool
computes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from filterprune.engine import (
    DependencyGraph,
    PruningPlan,
    apply_plan,
    profile,
    resolve_ratios,
    select_filters,
    trace,
)
from filterprune.engine.criteria import Criterion
from filterprune.errors import FilterpruneError
from filterprune.models import create_model
from filterprune.pipeline.results import RunResults


@dataclass(frozen=True)
class Reported:
    """Figures of one row of Li et al. 2017, Table 1, as printed there.

    Attributes:
        error: top-1 test error, %.
        macs: multiply-accumulates per image (the paper's "FLOP").
        params: parameters (the paper's table: conv and linear weights and biases).
        scratch_error: test error of the pruned architecture trained from scratch, % (if given).
    """

    error: float
    macs: float
    params: float
    scratch_error: float | None = None


@dataclass(frozen=True)
class Baseline:
    """A model of Table 1 with the input it is measured on.

    Attributes:
        model: zoo model name.
        dataset: the paper's dataset (a label).
        num_classes: classes of that dataset.
        input_size: image height = width, pixels.
        reported: the paper's figures for the unpruned model.
    """

    model: str
    dataset: str
    num_classes: int
    input_size: int
    reported: Reported

    def build(self) -> nn.Module:
        return create_model(self.model, num_classes=self.num_classes)

    def example_input(self) -> torch.Tensor:
        return torch.zeros(1, 3, self.input_size, self.input_size)


@dataclass(frozen=True)
class NamedPlan:
    """A pruning configuration of Li et al. 2017.

    Attributes:
        name: e.g. ``"resnet56-pruned-B"``.
        model: the zoo model it applies to.
        ratios: layer name, glob pattern or paper layer id (int) -> fraction of filters removed.
        skip: paper layer ids left unpruned.
        residual: ``"inner"`` or ``"coupled"`` (``filterprune.engine.graph.trace``).
        score_by: members whose scores choose a shared group's filters (pruned-C).
        description: the paper's wording, with its section.
        reported: the paper's figures for the pruned model.
    """

    name: str
    model: str
    ratios: Mapping[str | int, float]
    skip: tuple[int, ...] = ()
    residual: str = "inner"
    score_by: tuple[str, ...] = ()
    description: str = ""
    reported: Reported | None = field(default=None, compare=False)

    def resolve(self, model: nn.Module) -> tuple[dict[str, float], list[str]]:
        """The ratios by layer name or pattern and the skip list by layer name, for ``model``
        (an instance of ``self.model``).

        Raises:
            FilterpruneError: a paper layer id the model does not have.
        """
        names = {number: name for name, number in paper_layer_ids(model).items()}

        def name_of(key: str | int) -> str:
            if isinstance(key, str):
                return key
            if key not in names:
                raise FilterpruneError(f"{self.name}: {self.model} has no layer {key}")
            return names[key]

        return ({name_of(k): r for k, r in self.ratios.items()}, [name_of(k) for k in self.skip])

    def plan(
        self,
        model: nn.Module,
        example_inputs: torch.Tensor,
        criterion: str | Criterion = "l1",
        strategy: str = "independent",
        round_to: int = 1,
    ) -> tuple[PruningPlan, DependencyGraph]:
        """Chooses the filters of ``model`` under this configuration (the other arguments are
        those of ``filterprune.engine.select_filters``).

        Returns:
            The plan and the dependency graph of ``model`` under this plan's residual policy.
        """
        graph, ratios = self.resolve_on(model, example_inputs)
        plan = select_filters(model, graph, ratios, criterion, strategy, round_to, self.score_by)
        return plan, graph

    def resolve_on(
        self, model: nn.Module, example_inputs: torch.Tensor
    ) -> tuple[DependencyGraph, dict[str, float]]:
        """The dependency graph of ``model`` under this plan's residual policy and the ratio of
        each layer it prunes (``filterprune.engine.resolve_ratios``)."""
        graph = trace(model, example_inputs, residual=self.residual)
        return graph, resolve_ratios(graph, *self.resolve(model))


def paper_layer_ids(model: nn.Module) -> dict[str, int]:
    """The paper's numbering of conv layers: from 1 in forward (definition) order, projection
    shortcuts (modules under a ``downsample``) not numbered (Li et al. 2017, §4.2, §4.4).

    Returns:
        Conv layer name -> id, e.g. ``{"conv1": 1, "layer1.0.conv1": 2, ...}`` for a CIFAR ResNet.

    Example:
        >>> ids = paper_layer_ids(create_model("resnet56"))
        >>> ids["layer1.7.conv1"], ids["layer3.8.conv2"]
        (16, 55)
    """
    convs = [name for name, m in model.named_modules()
             if isinstance(m, nn.Conv2d) and "downsample" not in name.split(".")]
    return {name: number for number, name in enumerate(convs, start=1)}


def _stage_first_convs(stages: Mapping[int, float]) -> dict[str, float]:
    return {f"layer{stage}.*.conv1": ratio for stage, ratio in stages.items()}


BASELINES = {
    b.model: b for b in (
        Baseline("vgg16", "CIFAR-10", 10, 32, Reported(6.75, 3.13e8, 1.5e7)),
        Baseline("resnet56", "CIFAR-10", 10, 32, Reported(6.96, 1.25e8, 8.5e5)),
        Baseline("resnet110", "CIFAR-10", 10, 32, Reported(6.47, 2.53e8, 1.72e6)),
        Baseline("resnet34", "ImageNet", 1000, 224, Reported(26.77, 3.64e9, 2.16e7)),
    )
}

NAMED_PLANS = {
    p.name: p for p in (
        NamedPlan(
            "vgg16-pruned-A", "vgg16", {1: 0.5, **{i: 0.5 for i in range(8, 14)}},
            description="50% of the filters of conv 1 and of convs 8 to 13 (§4.1)",
            reported=Reported(6.60, 2.06e8, 5.4e6, scratch_error=6.88),
        ),
        NamedPlan(
            "resnet56-pruned-A", "resnet56", _stage_first_convs({1: 0.1, 2: 0.1, 3: 0.1}),
            skip=(16, 20, 38, 54),
            description="10% of the first conv of every block, except layers 16, 20, 38 and 54 "
                        "(§4.2)",
            reported=Reported(6.90, 1.12e8, 7.7e5),
        ),
        NamedPlan(
            "resnet56-pruned-B", "resnet56", _stage_first_convs({1: 0.6, 2: 0.3, 3: 0.1}),
            skip=(16, 18, 20, 34, 38, 54),
            description="first convs of stages 1, 2, 3 at 60%, 30%, 10%; skip layers 16, 18, 20, "
                        "34, 38, 54 (§4.2)",
            reported=Reported(6.94, 9.09e7, 7.3e5, scratch_error=8.69),
        ),
        NamedPlan(
            "resnet110-pruned-A", "resnet110", _stage_first_convs({1: 0.5}), skip=(36,),
            description="first convs of stage 1 at 50%, stages 2 and 3 untouched; skip layer 36 "
                        "(§4.2)",
            reported=Reported(6.45, 2.13e8, 1.68e6),
        ),
        NamedPlan(
            "resnet110-pruned-B", "resnet110", _stage_first_convs({1: 0.5, 2: 0.4, 3: 0.3}),
            skip=(36, 38, 74),
            description="first convs of stages 1, 2, 3 at 50%, 40%, 30%; skip layers 36, 38, 74 "
                        "(§4.2)",
            reported=Reported(6.70, 1.55e8, 1.16e6, scratch_error=7.06),
        ),
        NamedPlan(
            "resnet34-pruned-A", "resnet34", _stage_first_convs({1: 0.3, 2: 0.3, 3: 0.3}),
            skip=(2, 8, 14, 16, 26, 28, 30, 32),
            description="first convs of the blocks of stages 1, 2, 3 at 30%, stage 4 untouched; "
                        "skip layers 2, 8, 14, 16, 26, 28, 30, 32 (§4.4)",
            reported=Reported(27.44, 3.08e9, 1.99e7),
        ),
        NamedPlan(
            "resnet34-pruned-B", "resnet34", _stage_first_convs({1: 0.5, 2: 0.6, 3: 0.4}),
            skip=(2, 8, 14, 16, 26, 28, 30, 32),
            description="first convs of the blocks of stages 1, 2, 3 at 50%, 60%, 40%, stage 4 "
                        "untouched; skip layers 2, 8, 14, 16, 26, 28, 30, 32 (§4.4)",
            reported=Reported(27.83, 2.76e9, 1.93e7),
        ),
        NamedPlan(
            "resnet34-pruned-C", "resnet34", {"layer3.*.conv2": 0.2}, residual="coupled",
            score_by=("layer3.0.downsample.0",),
            description="the second conv of every block of stage 3 with the shortcut feature "
                        "maps it is added to, 20%, chosen by the projection shortcut's L1 norms "
                        "(§4.4)",
            reported=Reported(27.52, 3.37e9, 2.01e7),
        ),
    )
}


def named_plan(name: str) -> NamedPlan:
    """The named plan ``name``.

    Raises:
        FilterpruneError: an unknown name (the message lists the known ones).
    """
    if name not in NAMED_PLANS:
        raise FilterpruneError(
            f"unknown named plan '{name}' (known: {', '.join(NAMED_PLANS)})"
        )
    return NAMED_PLANS[name]


def paper_table(results: Sequence[str | Path] = ()) -> list[dict]:
    """Li et al. 2017, Table 1, computed by the tool: every model and named plan with its MACs,
    parameters and their reductions, beside the figures the paper reports.

    Args:
        results: ``results.json`` files of ``filterprune run``; a baseline's top-1 fills its
            model's row, a named plan's top-1 after retraining (and from scratch, where run)
            fills that plan's row.

    Returns:
        One dict per row: ``name``, ``model``, ``macs``, ``macs_reduction``, ``params``,
        ``params_conv_linear``, ``params_reduction`` (of ``params_conv_linear``, the paper's
        convention), ``error`` and ``scratch_error`` (%, from ``results``, else None) and
        ``reported`` (the paper's figures).

    Raises:
        FilterpruneError: an unreadable results file, or one of another schema version.
    """
    measured = _errors(results)
    rows = []
    for baseline in BASELINES.values():
        model, example = baseline.build(), baseline.example_input()
        base = profile(model, example)
        rows.append(_row(baseline.model, baseline.model, base, base, baseline.reported,
                         measured.get(baseline.model, {})))
        for plan in NAMED_PLANS.values():
            if plan.model == baseline.model:
                pruned = apply_plan(model, *plan.plan(model, example))
                rows.append(_row(plan.name, plan.model, profile(pruned, example), base,
                                 plan.reported, measured.get(plan.name, {})))
    return rows


def _row(name, model, cost, base, reported, measured) -> dict:
    return {
        "name": name, "model": model, "macs": cost.macs, "params": cost.params,
        "params_conv_linear": cost.params_conv_linear,
        "macs_reduction": 1 - cost.macs / base.macs,
        "params_reduction": 1 - cost.params_conv_linear / base.params_conv_linear,
        "error": measured.get("error"), "scratch_error": measured.get("scratch_error"),
        "reported": vars(reported),
    }


def _errors(paths: Sequence[str | Path]) -> dict[str, dict]:
    """Row name -> {"error": %, "scratch_error": %} from ``filterprune run`` results files
    (read through ``filterprune.pipeline.results.RunResults``)."""
    errors: dict[str, dict] = {}
    for path in paths:
        results = RunResults.load(path)
        errors.setdefault(results.model, {})["error"] = 100 - results.baseline.top1
        for point in results.pruning:
            if point.plan:
                errors.setdefault(point.plan, {})["error"] = 100 - point.top1_after
        for control in results.scratch:
            if control.plan and control.kind == "E":  # the paper's scratch-train
                errors.setdefault(control.plan, {})["scratch_error"] = 100 - control.top1
    return errors
