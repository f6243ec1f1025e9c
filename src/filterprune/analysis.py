"""Sensitivity analysis for your own model, data and metric (Li et al. 2017, §3.2, Fig. 2b).

Each prunable layer (one per channel group under ``residual="coupled"``) is pruned alone at each
ratio and the pruned model is scored without retraining. The layers whose score falls fastest
are the sensitive ones, which the paper prunes less or skips.

Two ways to score:

- ``data=``: an iterable of (inputs, targets) batches, top-1 in %. For models torch.fx traces
  whole the analysis makes no copies: per batch the unpruned forward pass runs once and each
  (layer, ratio) reuses it up to the layer's consumers (``filterprune.engine.PrunedVariants``);
  otherwise each pruned copy is evaluated.
- ``evaluate=``: any callable ``nn.Module -> float``, higher is better (top-1, mAP, negative
  loss, ...), called on a pruned copy per (layer, ratio).

Example:
    >>> import torch, filterprune
    >>> from filterprune.models import create_model
    >>> net = create_model("scnnb", in_channels=1, input_size=8).eval()
    >>> data = [(torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,)))]
    >>> result = filterprune.sensitivity(net, torch.zeros(1, 1, 8, 8), data=data,
    ...                                  ratios=[0.25, 0.5])
    >>> list(result.layers), len(result.layers["features.0"])
    (['features.0', 'features.4'], 2)
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from rich.progress import Progress
from torch import nn

from filterprune._io import atomic_write_text
from filterprune.engine import (
    DependencyGraph,
    PrunedVariants,
    PruningPlan,
    apply_plan,
    select_filters,
    trace,
)
from filterprune.errors import FilterpruneError
from filterprune.training import loop
from filterprune.training.loop import Batches, ComputeSettings, topk_hits

DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
METHODS = ("auto", "shared-prefix", "copies")
SCHEMA = 1


@dataclass
class SensitivityResult:
    """Scores of the model with each layer pruned alone at each ratio (Fig. 2b).

    Attributes:
        ratios: fractions of filters removed, in [0, 1).
        layers: layer name -> score per ratio (a coupled group is named by its first member).
        baseline: score of the unpruned model.
        metric: what the scores are (``"top1"`` in %, or the name of the ``evaluate`` callable).
        members: layer name -> every member of its group, for groups of several layers.
        split: which data the scores come from (``"validation"``, ``"test"``), if known.
    """

    ratios: list[float]
    layers: dict[str, list[float]]
    baseline: float
    metric: str = "top1"
    members: dict[str, list[str]] = field(default_factory=dict)
    split: str | None = None

    def drops(self) -> dict[str, list[float]]:
        """Layer name -> baseline score minus the score at each ratio."""
        return {name: [self.baseline - s for s in scores] for name, scores in self.layers.items()}

    def most_sensitive(self, k: int = 3) -> list[str]:
        """The ``k`` layers that lose most, by the mean drop over the ratios (most first)."""
        mean = {name: float(np.mean(d)) for name, d in self.drops().items()}
        return sorted(mean, key=mean.get, reverse=True)[:k]

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping) -> SensitivityResult:
        """Raises:
            FilterpruneError: not a sensitivity result of this schema, or rows of the wrong
                length."""
        if data.get("schema") != SCHEMA:
            raise FilterpruneError(f"not a sensitivity result (schema {data.get('schema')!r})")
        fields = {k: data[k] for k in ("ratios", "layers", "baseline", "metric", "members",
                                       "split") if k in data}
        result = cls(**fields)
        if any(len(s) != len(result.ratios) for s in result.layers.values()):
            raise FilterpruneError("sensitivity result: a layer's scores do not match its ratios")
        return result

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> SensitivityResult:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> Path:
        """Writes the result as JSON, atomically."""
        return atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> SensitivityResult:
        """Raises:
            FilterpruneError: a missing or unreadable file, or not a sensitivity result."""
        try:
            return cls.from_json(Path(path).read_text())
        except (OSError, json.JSONDecodeError, TypeError) as e:
            raise FilterpruneError(f"cannot read sensitivity result {path}: {e}") from e

    def table(self) -> str:
        """Text table: layers x ratios, the scores."""
        width = max([len(n) for n in self.layers] + [5])
        lines = [f"{'layer':<{width}}" + "".join(f"{r:>8.0%}" for r in self.ratios)]
        lines += [f"{name:<{width}}" + "".join(f"{s:>8.2f}" for s in scores)
                  for name, scores in self.layers.items()]
        lines.append(f"baseline {self.metric}: {self.baseline:.2f}"
                     + (f" ({self.split} split)" if self.split else ""))
        return "\n".join(lines)

    def figure(self) -> Figure:
        """Score vs % of filters removed, one curve per layer pruned alone (Fig. 2b)."""
        fig = Figure(figsize=(7, 4.5))
        ax = fig.add_subplot()
        x = np.asarray(self.ratios, dtype=float) * 100
        n = len(self.layers)
        colors = ([f"C{i}" for i in range(n)] if n <= 10
                  else list(colormaps["viridis"](np.linspace(0, 0.95, n))))
        for (name, scores), color in zip(self.layers.items(), colors, strict=True):
            ax.plot(x, scores, marker="o", markersize=3, color=color, label=name)
        ax.axhline(self.baseline, color="black", linestyle="--", linewidth=1, label="baseline")
        ax.set_xlabel("filters pruned away (%)")
        ylabel = "top-1 accuracy (%)" if self.metric == "top1" else self.metric
        ax.set_ylabel(ylabel + (f", {self.split} split" if self.split else ""))
        ax.set_title("Sensitivity to pruning (each layer alone, no retraining)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8 if n < 8 else 7, ncol=1 if n < 8 else 2)
        fig.tight_layout()
        return fig

    def plot(self, path: str | Path) -> Path:
        """Saves :meth:`figure` (PNG, or any format matplotlib knows by the suffix)."""
        self.figure().savefig(path, dpi=120)
        return Path(path)


def sensitivity(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple,
    *,
    evaluate: Callable[[nn.Module], float] | None = None,
    data: Batches | None = None,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    layers: Sequence[str] | None = None,
    criterion: str = "l1",
    residual: str = "inner",
    ignore: Sequence[str] = (),
    tracer: str = "auto",
    method: str = "auto",
    device: torch.device | str | None = None,
    compute: ComputeSettings | None = None,
    progress: bool = False,
    split: str | None = None,
) -> SensitivityResult:
    """Prunes each layer alone at each ratio and scores the model without retraining.

    Args:
        model: the trained network; not modified.
        example_inputs: a tensor (e.g. (1, C, H, W)) or tuple the model accepts, for tracing.
        evaluate: ``nn.Module -> float``, higher is better; called once on ``model`` and once
            per (layer, ratio) on a pruned copy.
        data: instead of ``evaluate``: re-iterable (inputs (B, C, H, W), targets (B,)) batches;
            the score is top-1 in %.
        ratios: fractions of filters removed, each in [0, 1).
        layers: names or glob patterns of the layers to analyse (default: every prunable
            layer; under ``coupled``, one per channel group).
        criterion: how filters are chosen (``filterprune.engine.CRITERIA``; default L1 norm).
        residual: ``"inner"`` or ``"coupled"`` (``filterprune.engine.trace``).
        ignore: modules the engine leaves alone.
        tracer: ``"auto"``, ``"fx"`` or ``"record"`` (``filterprune.engine.trace``).
        method: with ``data``: ``"shared-prefix"`` (no copies; needs a model torch.fx traces
            whole), ``"copies"`` or ``"auto"`` (shared-prefix where it can).
        device: where to evaluate with ``data`` (default: the model's).
        compute: memory format / autocast of the forward passes with ``data``.
        progress: show a progress bar.
        split: which data this is (``"validation"``, ``"test"``), recorded in the result.

    Returns:
        The :class:`SensitivityResult`.

    Raises:
        FilterpruneError: neither or both of ``evaluate`` and ``data``; a ratio outside
            [0, 1); a layer or pattern that names no prunable layer (the reason is given);
            ``data`` that is a one-shot iterator or empty; an unknown method; ``evaluate`` not
            returning a number; see also ``filterprune.engine.trace``.
    """
    if (evaluate is None) == (data is None):
        raise FilterpruneError("sensitivity needs exactly one of evaluate= and data=")
    if method not in METHODS:
        raise FilterpruneError(f"unknown sensitivity method '{method}' ({', '.join(METHODS)})")
    bad = [r for r in ratios if not 0 <= r < 1]
    if bad or not ratios:
        raise FilterpruneError(f"sensitivity ratios must be in [0, 1), got {list(ratios)}")
    if data is not None and iter(data) is data:
        raise FilterpruneError("data must be re-iterable (a list or DataLoader, not a generator)")
    graph = trace(model, example_inputs, residual=residual, ignore=ignore, tracer=tracer)
    chosen = analysed_layers(graph, layers)
    plans = sensitivity_plans(model, graph, chosen, ratios, criterion)
    members = {name: list(graph.layers[name].members) for name in chosen
               if len(graph.layers[name].members) > 1}
    with Progress(disable=not progress, transient=True) as bar:
        if data is not None:
            device = torch.device(device) if device is not None else _device_of(model)
            batches = _OnDevice(data, device)
            baseline = evaluate_top1(model, batches, device, compute)
            if method == "auto":
                method = "shared-prefix" if PrunedVariants.supports(model) else "copies"
            if method == "shared-prefix":
                scores = top1_shared_prefix(model, graph, plans, batches, device, compute, bar)
            else:
                scores = top1_by_copies(
                    model, graph, plans,
                    lambda m: evaluate_top1(m, batches, device, compute), bar)
            metric = "top1"
        else:
            baseline = _score(evaluate, model)
            scores = top1_by_copies(model, graph, plans, lambda m: _score(evaluate, m), bar)
            metric = getattr(evaluate, "__name__", "score")
    return SensitivityResult(list(map(float, ratios)), scores, baseline, metric, members, split)


def analysed_layers(graph: DependencyGraph, patterns: Sequence[str] | None) -> list[str]:
    """The prunable layers to analyse, in forward order, one per channel group.

    Raises:
        FilterpruneError: a name or pattern that matches no prunable layer (with the reason
            when it names a layer that cannot be pruned).
    """
    first: dict[int, str] = {}
    for name, group in graph.layers.items():
        first.setdefault(id(group), name)
    if patterns is None:
        return list(first.values())
    chosen = []
    for pattern in patterns:
        matched = [n for n in graph.layers if fnmatch.fnmatchcase(n, pattern)]
        if not matched:
            if not any(c in pattern for c in "*?["):
                graph.check_prunable(pattern)  # says why an exact name cannot be pruned
            raise FilterpruneError(f"pattern '{pattern}' matches no prunable layer")
        chosen += [first[id(graph.layers[n])] for n in matched]
    return list(dict.fromkeys(c for c in first.values() if c in chosen))


def sensitivity_plans(
    model: nn.Module, graph: DependencyGraph, layers: Sequence[str], ratios: Sequence[float],
    criterion: str, scores: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, list[PruningPlan]]:
    """Per layer, the plan pruning it alone at each ratio (``select_filters`` with ``criterion``
    or precomputed ``scores``)."""
    return {name: [select_filters(model, graph, {name: r}, criterion, scores=scores)
                   for r in ratios]
            for name in layers}


def top1_by_copies(
    model: nn.Module, graph: DependencyGraph, plans: dict[str, list[PruningPlan]],
    score: Callable[[nn.Module], float], progress: Progress | None = None,
) -> dict[str, list[float]]:
    """``score`` of a copy of ``model`` pruned by each plan."""
    task = _task(progress, "sensitivity (pruned copies)", sum(map(len, plans.values())))
    result = {}
    for name, layer_plans in plans.items():
        result[name] = []
        for plan in layer_plans:
            result[name].append(score(apply_plan(model, plan, graph)))
            _advance(progress, task)
    return result


def top1_shared_prefix(
    model: nn.Module, graph: DependencyGraph, plans: dict[str, list[PruningPlan]],
    batches: Batches, device: torch.device | str = "cpu", compute: ComputeSettings | None = None,
    progress: Progress | None = None,
) -> dict[str, list[float]]:
    """Top-1 (%) of the model each plan prunes, without copies (see the module docstring).

    Args:
        model: the unpruned network (moved to ``device``; not modified).
        graph: its dependency graph.
        plans: layer name -> plans (``sensitivity_plans``).
        batches: (images (B, C, H, W), labels (B,)) on ``device``.
        device: where to evaluate.
        compute: memory format and autocast of the forward passes, as in ``evaluate``.
        progress: a progress bar to advance once per batch.

    Returns:
        Layer name -> top-1 % per plan, as ``evaluate`` counts it.

    Raises:
        FilterpruneError: plain torch.fx cannot trace the model (use ``top1_by_copies``), or
            no batch.
    """
    compute = compute or ComputeSettings()
    variants = PrunedVariants(compute.prepare(model, device), graph, plans)
    correct = {name: [0] * len(layer_plans) for name, layer_plans in plans.items()}
    seen = 0
    task = _task(progress, "sensitivity (shared prefix)", _length(batches))
    for images, labels in batches:
        with compute.autocast(device):
            outputs = variants(compute.batch(images))
        for name, number, logits in outputs:
            correct[name][number] += topk_hits(logits, labels)[:, 0].sum().item()
        seen += len(labels)
        _advance(progress, task)
    if not seen:
        raise FilterpruneError("sensitivity: the data holds no batch")
    return {name: [100.0 * c / seen for c in counts] for name, counts in correct.items()}


def evaluate_top1(model: nn.Module, batches: Batches, device: torch.device | str,
                  compute: ComputeSettings | None = None) -> float:
    """Top-1 (%) of ``model`` on ``batches``."""
    return loop.evaluate(model, batches, device, compute)["top1"]


class _OnDevice:
    """Re-iterable view of (inputs, targets) batches moved to ``device``."""

    def __init__(self, data: Iterable, device: torch.device) -> None:
        self.data, self.device = data, device

    def __len__(self) -> int:
        return len(self.data)

    def __iter__(self):
        for inputs, targets in self.data:
            yield inputs.to(self.device), targets.to(self.device)


def _device_of(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _score(evaluate: Callable[[nn.Module], float], model: nn.Module) -> float:
    value = evaluate(model)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise FilterpruneError(
            f"evaluate must return a number (higher is better), got {type(value).__name__}"
        )
    return float(value)


def _length(batches: Iterable) -> int | None:
    try:
        return len(batches)
    except TypeError:
        return None


def _task(progress: Progress | None, description: str, total: int | None):
    return None if progress is None else progress.add_task(description, total=total)


def _advance(progress: Progress | None, task) -> None:
    if progress is not None:
        progress.advance(task)
