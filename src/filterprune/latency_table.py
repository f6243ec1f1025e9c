"""Measured latency of each prunable group against its width, on the device at hand: the lookup
table of latency targets (NetAdapt, Yang et al. ECCV 2018, §3; HALP, Shen et al. 2021, §3.2).

MACs predict speed only in part: a channel count that fits the SIMD width or the tensor cores
often runs faster than a slightly smaller one. For each prunable group and each width (the
multiples of ``step``, the widths the ratios 0.1, ..., 0.9 keep, and the full width, each a
multiple of the group's conv-group count), the model is pruned to that width in that group alone
(``select_filters`` + ``apply_plan``), and the layers whose shapes change -- the group's members,
its followers (BatchNorms, depthwise convs) and its consumers -- are timed one by one on a random
input of their real shape, every width of a group in the same interleaved rounds
(``filterprune.deploy.interleaved_timings``: warm-up, rounds until the spread is small or the
budget is spent, median and interquartile range), so that a drift of the machine's load touches
all widths alike. A group's entry is the sum over those layers. An entry whose interquartile
range exceeds ``NOISY_SHARE`` of its median is flagged noisy.

The table is plain data with its conditions (device, threads, batch, input shape, timing
length, torch version) and a JSON round trip; ``filterprune.prune(..., target={"latency": s},
latency=table)`` reads ``model_ms`` and ``layers``.

Example:
    >>> import torch
    >>> from filterprune.models import create_model
    >>> net = create_model("scnnb", in_channels=1, input_size=8)
    >>> table = latency_table(net, torch.zeros(1, 1, 8, 8), min_run_time_s=0.001, budget_s=0.01)
    >>> sorted(table.layers["features.0"])[-1]  # the full width is always measured
    32
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch import nn

from filterprune._io import atomic_write_text
from filterprune.deploy import Comparison, interleaved_timings
from filterprune.engine import apply_plan, kept_count, select_filters, trace
from filterprune.engine.costs import prunable_groups
from filterprune.engine.modes import as_tuple, eval_mode
from filterprune.engine.plan import resolve_ratios
from filterprune.errors import FilterpruneError

SCHEMA = 1
#: An entry is noisy when its interquartile range exceeds this share of its median.
NOISY_SHARE = 0.1
RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class LatencyTable:
    """Latency (ms) of each prunable group's layers against the group's width.

    Attributes:
        layers: group name (its first member) -> width -> ms (median).
        iqr_ms: the same keys -> interquartile range, ms.
        model_ms: latency of the whole unpruned model on the same input, ms (median).
        model_iqr_ms: its interquartile range, ms.
        device: where it was measured (``"cpu"``, ``"cuda:0 (NVIDIA H100 ...)"``).
        threads: ``torch.get_num_threads()`` during the measurement.
        input_shape: the example input's shape (batch first).
        min_run_time_s: least time spent timing each entry, s.
        torch_version: torch's version.
    """

    layers: dict[str, dict[int, float]]
    iqr_ms: dict[str, dict[int, float]]
    model_ms: float
    model_iqr_ms: float
    device: str
    threads: int
    input_shape: list[int]
    min_run_time_s: float
    torch_version: str = field(default_factory=lambda: torch.__version__)

    def noisy(self) -> list[tuple[str, int]]:
        """(group, width) of the entries whose IQR exceeds ``NOISY_SHARE`` of their median."""
        return [(name, w) for name, row in self.layers.items() for w, ms in row.items()
                if self.iqr_ms[name][w] > NOISY_SHARE * ms]

    def describe(self) -> str:
        """One line: conditions, size and the noisy entries."""
        noisy = self.noisy()
        return (f"latency table: {len(self.layers)} group(s), model {self.model_ms:.3f} ms on "
                f"{self.device}, {self.threads} thread(s), input {tuple(self.input_shape)}"
                + (f"; {len(noisy)} noisy entr(ies) (IQR > {NOISY_SHARE:.0%} of the median)"
                   if noisy else ""))

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping) -> LatencyTable:
        """Raises:
            FilterpruneError: not a latency table of this schema, or malformed."""
        schema = data.get("schema") if isinstance(data, Mapping) else None
        if schema != SCHEMA:
            raise FilterpruneError(f"not a latency table (schema {schema!r})")
        try:
            rows = {key: {name: {int(w): float(v) for w, v in row.items()}
                          for name, row in data[key].items()} for key in ("layers", "iqr_ms")}
            return cls(rows["layers"], rows["iqr_ms"], float(data["model_ms"]),
                       float(data["model_iqr_ms"]), str(data["device"]), int(data["threads"]),
                       [int(n) for n in data["input_shape"]], float(data["min_run_time_s"]),
                       str(data["torch_version"]))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise FilterpruneError(f"malformed latency table: {e!r}") from e

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> LatencyTable:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise FilterpruneError(f"malformed latency table JSON: {e}") from e

    def save(self, path: str | Path) -> Path:
        """Writes the table as JSON, atomically."""
        return atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        """Raises:
            FilterpruneError: a missing file or not a latency table."""
        path = Path(path)
        if not path.is_file():
            raise FilterpruneError(f"latency table not found: {path}")
        return cls.from_json(path.read_text())


def latency_table(
    model: nn.Module,
    example_inputs: torch.Tensor,
    *,
    step: int = 8,
    ratios: Sequence[float] = RATIOS,
    skip: Sequence[str] = (),
    residual: str = "inner",
    ignore: Sequence[str] = (),
    tracer: str = "auto",
    min_run_time_s: float = 0.02,
    budget_s: float = 2.0,
) -> LatencyTable:
    """Measures the latency table of ``model`` (see the module docstring).

    Args:
        model: the network, on the device to measure (not modified).
        example_inputs: a batch (B, C, H, W) on the same device, the shape of deployment.
        step: measure the multiples of ``step`` (and the full width).
        ratios: also measure the widths these ratios keep (``kept_count``).
        skip: names or patterns of layers not measured (and left whole by the allocation).
        residual, ignore, tracer: as in ``filterprune.prune`` (use the same as for pruning).
        min_run_time_s: least time of one timing of a layer, s.
        budget_s: seconds of interleaved rounds per group (all its widths timed in turn) and
            for the whole model; fewer if every spread is under ``NOISY_SHARE`` sooner.

    Returns:
        The :class:`LatencyTable`.

    Raises:
        FilterpruneError: step < 1; see ``filterprune.engine.trace``.
    """
    if step < 1:
        raise FilterpruneError(f"step must be >= 1, got {step}")
    graph = trace(model, example_inputs, residual=residual, ignore=ignore, tracer=tracer)
    allowed = {id(graph.layers[name]) for name in resolve_ratios(graph, 0.5, skip)}
    shapes = _input_shapes(model, example_inputs)
    x = as_tuple(example_inputs)[0]
    table: dict[str, dict[int, float]] = {}
    spread: dict[str, dict[int, float]] = {}
    for group in prunable_groups(graph):
        if id(group) not in allowed:
            continue
        name, width = group.members[0], group.out_channels
        changed = [*group.members, *group.followers, *(c.name for c in group.consumers)]
        table[name], spread[name] = {}, {}
        widths = _widths(width, group.chunks, step, ratios)
        with ExitStack() as stack:
            calls = {}
            for w in widths:
                pruned = model if w == width else apply_plan(
                    model, select_filters(model, graph, {name: 1 - w / width}), graph)
                stack.enter_context(eval_mode(pruned))
                modules = dict(pruned.named_modules())
                calls |= {f"{w}/{n}": partial(modules[n], _random_input(modules[n], shapes[n], x))
                          for n in changed if n in shapes}
            timings = _time(calls, x.device, budget_s, min_run_time_s)
        for w in widths:
            entries = [timings.latency(f"{w}/{n}") for n in changed if n in shapes]
            table[name][w] = sum(e["latency_ms"] for e in entries)
            spread[name][w] = sum(e["iqr_ms"] for e in entries)
    with eval_mode(model):
        whole = _time({"model": partial(model, x)}, x.device, budget_s,
                      min_run_time_s).latency("model")
    model_ms, model_iqr = whole["latency_ms"], whole["iqr_ms"]
    device = str(x.device) + (f" ({torch.cuda.get_device_name(x.device)})"
                              if x.device.type == "cuda" else "")
    return LatencyTable(table, spread, model_ms, model_iqr, device, torch.get_num_threads(),
                        list(x.shape), min_run_time_s)


def _time(calls: Mapping[str, Callable[[], object]], device: torch.device, budget_s: float,
          min_time_s: float) -> Comparison:
    """``calls`` timed in interleaved rounds (``filterprune.deploy.interleaved_timings``) under
    ``torch.inference_mode``."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        return interleaved_timings(calls, budget_s=budget_s, max_spread=NOISY_SHARE,
                                   min_time_s=min_time_s, sync=sync)


def _widths(width: int, chunks: int, step: int, ratios: Sequence[float]) -> list[int]:
    """The widths to measure: multiples of ``step``, the kept counts of ``ratios``, the full
    width; each a multiple of ``chunks``."""
    widths = {*range(step, width + 1, step), width, *(kept_count(width, r) for r in ratios)}
    return sorted({max(1, w // chunks) * chunks for w in widths})


def _input_shapes(model: nn.Module, example_inputs: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Module name -> shape of its first input, from one forward pass of the unpruned model."""
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            if args and isinstance(args[0], torch.Tensor):
                shapes.setdefault(name, tuple(args[0].shape))

        return hook

    hooks = [m.register_forward_pre_hook(record(n)) for n, m in model.named_modules() if n]
    try:
        with eval_mode(model):
            model(*as_tuple(example_inputs))
    finally:
        for h in hooks:
            h.remove()
    return shapes


def _random_input(module: nn.Module, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A random input of ``shape`` with the channel (features) size ``module`` now reads."""
    if isinstance(module, nn.Linear):
        shape = (*shape[:-1], module.in_features)
    elif isinstance(module, nn.modules.conv._ConvNd):
        shape = (shape[0], module.in_channels, *shape[2:])
    else:  # BatchNorm, PReLU: per-channel weights
        channels = getattr(module, "num_features", None) or module.weight.shape[0]
        shape = (shape[0], channels, *shape[2:])
    return torch.randn(shape, device=like.device, dtype=like.dtype)
