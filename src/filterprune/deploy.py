"""Deployment metrics: measured latency, throughput, peak memory and model file size.

MACs predict speed only in part: memory traffic, kernel choice and per-layer overhead decide the
rest. These functions measure it. Latency is the wall time of one forward pass of a batch in
eval mode under ``torch.inference_mode`` (on CUDA synchronised). On a shared machine other
processes add time in bursts and the load drifts, so the models being compared are timed in
interleaved rounds (every model once per round, the order rotated), until each model's spread
(interquartile range / median over the rounds) is small or a time budget is spent
(``interleaved_timings``). Each latency is the median over the rounds with its IQR and a
distribution-free interval, and says whether it is ``reliable`` and why. Ratios between models
(speed-up, against the same widths built directly) are the median of the per-round ratios of
times taken next to each other, so they hold when the absolute times drift
(``Comparison.ratio``). Throughput is batch size / median latency.

Peak memory is the largest amount of tensor memory the forward pass holds at once beyond what was
allocated before it (activations; the weights and the input are not counted, see ``size_mb``):
on CUDA ``torch.cuda.max_memory_allocated`` minus the memory allocated before the pass (cuDNN
workspaces included); on CPU the bytes of the tensor storages the operators create, counted while
they are alive (a ``TorchDispatchMode`` sees every operator's outputs; a storage counts from its
creation until its last tensor is freed). This equals the peak torch's profiler reports with
``profile_memory=True`` for the zoo models, without the profiler's overhead and log lines; scratch
buffers a kernel allocates and frees inside itself (oneDNN) are not seen. The process's resident
size (``ru_maxrss``) is not used: it only ever grows and mixes in everything the process holds.
"""

from __future__ import annotations

import copy
import math
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from filterprune.engine.modes import eval_mode
from filterprune.errors import FilterpruneError
from filterprune.stats import Interval, median_interval


def peak_memory_mb(model: nn.Module, inputs: torch.Tensor) -> float:
    """Peak tensor memory of one forward pass beyond what was allocated before it, in MB (1e6
    bytes; see the module docstring for what is counted on CPU and CUDA)."""
    with eval_mode(model), torch.inference_mode():
        if inputs.device.type == "cuda":
            torch.cuda.synchronize(inputs.device)
            before = torch.cuda.memory_allocated(inputs.device)
            torch.cuda.reset_peak_memory_stats(inputs.device)
            model(inputs)
            torch.cuda.synchronize(inputs.device)
            return (torch.cuda.max_memory_allocated(inputs.device) - before) / 1e6
        held = [*model.parameters(), *model.buffers(), inputs]
        with _LiveStorages({t.untyped_storage().data_ptr() for t in held}) as live:
            model(inputs)
    return live.peak / 1e6


class _LiveStorages(TorchDispatchMode):
    """Counts the bytes of the storages created by operators while any tensor holds them."""

    def __init__(self, existing: set[int]) -> None:
        super().__init__()
        self.existing = existing
        self.holders: dict[int, int] = {}
        self.sizes: dict[int, int] = {}
        self.current = self.peak = 0

    def _release(self, key: int) -> None:
        self.holders[key] -= 1
        if not self.holders[key]:
            del self.holders[key]
            self.current -= self.sizes.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            if key in self.existing or key == 0:  # weights, inputs, their views; empty tensors
                continue
            if key not in self.holders:
                self.holders[key], self.sizes[key] = 0, storage.nbytes()
                self.current += self.sizes[key]
                self.peak = max(self.peak, self.current)
            self.holders[key] += 1
            weakref.finalize(tensor, self._release, key)
        return out


def file_size_mb(path: str | Path) -> float:
    """Size of a model file in MB (1e6 bytes)."""
    return Path(path).stat().st_size / 1e6


@dataclass(frozen=True)
class Comparison:
    """Interleaved timings of several models at one batch size (``interleaved_timings``).

    Attributes:
        batch_size: images per forward pass.
        samples: per model, one time per round, in seconds per forward pass.
        elapsed_s: wall time the rounds took, in seconds.
        max_spread: the spread (IQR / median) under which a figure counts as reliable.
        peak_memory_mb: per model, the activation peak (``peak_memory_mb``), if measured.
    """

    batch_size: int
    samples: dict[str, list[float]]
    elapsed_s: float
    max_spread: float
    peak_memory_mb: dict[str, float] = field(default_factory=dict)

    @property
    def rounds(self) -> int:
        """Rounds timed (every model once per round)."""
        return len(next(iter(self.samples.values())))

    def latency(self, name: str) -> dict:
        """The latency entry of model ``name``.

        Returns:
            ``{"latency_ms"`` (median over the rounds), ``"iqr_ms"``, ``"latency_low_ms"``,
            ``"latency_high_ms"`` (distribution-free interval of the median,
            ``filterprune.stats.median_interval``), ``"confidence"`` (its coverage),
            ``"spread"`` (IQR / median), ``"rounds"``, ``"images_per_s"`` (batch size / median),
            ``"reliable"`` (spread <= ``max_spread``), ``"reason"`` (one line saying why),
            and ``"peak_memory_mb"`` when measured ``}``.
        """
        values = self.samples[name]
        median, spread, interval = _summary(values)
        entry = {
            "latency_ms": median * 1e3, "iqr_ms": spread * median * 1e3,
            "latency_low_ms": interval.low * 1e3, "latency_high_ms": interval.high * 1e3,
            "confidence": interval.confidence, "spread": spread, "rounds": len(values),
            "images_per_s": self.batch_size / median,
            **self._verdict(spread, "IQR {:.0%} of the median"),
        }
        if name in self.peak_memory_mb:
            entry["peak_memory_mb"] = self.peak_memory_mb[name]
        return entry

    def ratio(self, numerator: str, denominator: str) -> dict:
        """Latency of ``numerator`` over that of ``denominator``, from the rounds' paired ratios
        (each round's two times divided, then their median): a slow drift of the machine's load
        touches both times of a round alike and cancels, where the ratio of two medians would not.

        Returns:
            ``{"ratio"`` (median of the per-round ratios), ``"low"``, ``"high"``,
            ``"confidence"`` (``filterprune.stats.median_interval``), ``"spread"`` (IQR /
            median of the per-round ratios), ``"rounds"``, ``"reliable"`` (the interval's width
            is at most ``max_spread`` of the ratio: many rounds make a ratio precise even on a
            busy machine), ``"reason"``\\ ``}``.
        """
        values = [a / b for a, b in zip(self.samples[numerator], self.samples[denominator],
                                        strict=True)]
        median, spread, interval = _summary(values)
        width = (interval.high - interval.low) / median
        return {"ratio": median, "low": interval.low, "high": interval.high,
                "confidence": interval.confidence, "spread": spread, "rounds": len(values),
                **self._verdict(width, f"{interval.confidence:.0%} interval "
                                       "{:.0%} of the ratio wide")}

    def _verdict(self, spread: float, what: str) -> dict:
        """``reliable`` and ``reason`` of a figure whose spread is ``spread``; ``what`` is the
        phrase with a ``{}`` for it."""
        where = f"{self.rounds} rounds in {self.elapsed_s:.2g} s"
        if self.rounds < 3:
            return {"reliable": False, "reason": f"only {where}: too few to judge the spread"}
        if spread <= self.max_spread:
            return {"reliable": True, "reason": f"{what.format(spread)} over {where}"}
        return {"reliable": False, "reason": f"{what.format(spread)} after {where} (limit "
                                             f"{self.max_spread:.0%}): machine busy, or each "
                                             "timing too short for this model "
                                             "(deploy.min_run_time_s)"}

    @property
    def reliable(self) -> bool:
        """Whether every model's latency is reliable."""
        return all(self.latency(name)["reliable"] for name in self.samples)


def _quartiles(values: Sequence[float]) -> tuple[float, float]:
    """Median and IQR / median of ``values``."""
    q1, median, q3 = torch.tensor(values, dtype=torch.float64).quantile(
        torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
    return median, (q3 - q1) / median


def _summary(values: Sequence[float]) -> tuple[float, float, Interval]:
    """Median, IQR / median and the median's interval of ``values``."""
    return *_quartiles(values), median_interval(values)


def interleaved_timings(
    calls: Mapping[str, Callable[[], object]],
    groups: Sequence[Sequence[str]] | None = None,
    *,
    batch_size: int = 1,
    budget_s: float = 10.0,
    max_spread: float = 0.1,
    min_rounds: int = 5,
    min_time_s: float = 0.02,
    timer: Callable[[], float] = time.perf_counter,
    sync: Callable[[], None] = lambda: None,
) -> Comparison:
    """Times ``calls`` in interleaved rounds until every one's spread is small or the budget is
    spent.

    Each call runs once to warm up and once more to size its timing: a timing repeats the call
    ``ceil(min_time_s / that time)`` times and divides. Then round after round times every call
    once, in the order of the groups rotated to start at the (k // 2)-th in rounds 2k and
    2k + 1, the whole order reversed in odd rounds: every call takes every position, every two
    calls are timed in both orders equally often (a position effect of a busy machine cancels in
    their ratio), and the calls of a group (e.g. a model and the same widths built directly) are
    timed next to each other. After
    ``min_rounds`` rounds it stops as soon as every call's IQR / median is at most ``max_spread``,
    or once ``budget_s`` seconds of rounds have passed.

    Args:
        calls: name -> a callable running one forward pass.
        groups: the names in groups timed side by side (default: each name alone, in order);
            every name exactly once.
        batch_size: images per call (for throughput).
        budget_s: seconds of rounds after which it stops whatever the spread (the rounds under
            way finish; at least ``min_rounds`` are run).
        max_spread: IQR / median under which a latency counts as reliable.
        min_rounds: least rounds (5 gives the median a 94% interval from the extremes).
        min_time_s: least seconds of one timing.
        timer: the clock, in seconds (tests pass a fake one).
        sync: waits for queued work (``torch.cuda.synchronize`` on CUDA).

    Returns:
        The ``Comparison``.

    Raises:
        FilterpruneError: ``groups`` does not hold every name of ``calls`` exactly once.
    """
    groups = [list(g) for g in groups] if groups is not None else [[name] for name in calls]
    if sorted(n for g in groups for n in g) != sorted(calls):
        raise FilterpruneError(f"groups {groups} must hold each of {sorted(calls)} exactly once")
    repeats = {}
    for name, call in calls.items():
        call()
        sync()
        start = timer()
        call()
        sync()
        repeats[name] = max(1, math.ceil(min_time_s / max(timer() - start, 1e-9)))
    samples: dict[str, list[float]] = {name: [] for name in calls}
    start = timer()
    rounds = 0
    while True:
        shift = rounds // 2 % len(groups)
        order = [name for group in groups[shift:] + groups[:shift] for name in group]
        for name in order[::-1] if rounds % 2 else order:
            sync()
            begin = timer()
            for _ in range(repeats[name]):
                calls[name]()
            sync()
            samples[name].append((timer() - begin) / repeats[name])
        rounds += 1
        if rounds < min_rounds:
            continue
        elapsed = timer() - start
        steady = all(_quartiles(v)[1] <= max_spread for v in samples.values())
        if steady or elapsed >= budget_s:
            return Comparison(batch_size, samples, elapsed, max_spread)


def measure(
    models: Mapping[str, nn.Module],
    input_shape: Sequence[int],
    batch_sizes: Sequence[int] = (1, 256),
    device: torch.device | str = "cpu",
    *,
    groups: Sequence[Sequence[str]] | None = None,
    budget_s: float = 10.0,
    max_spread: float = 0.1,
    min_rounds: int = 5,
    min_time_s: float = 0.02,
) -> dict[str, Comparison]:
    """Latency (interleaved, see ``interleaved_timings``), throughput and peak memory of the
    ``models`` at each batch size.

    Args:
        models: name -> network (moved to ``device``; run in eval mode under
            ``torch.inference_mode``, modes restored afterwards).
        input_shape: one image's shape (C, H, W) (a leading batch dimension is dropped if given
            as (1, C, H, W)).
        batch_sizes: the batch sizes to time, each in its own interleaved rounds.
        device: where to run.
        groups, budget_s, max_spread, min_rounds, min_time_s: as in ``interleaved_timings``
            (``budget_s`` per batch size).

    Returns:
        ``{str(batch_size): Comparison}``; ``.latency(name)`` and ``.ratio(a, b)`` give the
        entries.

    Example:
        >>> net = nn.Conv2d(1, 4, 3)
        >>> m = measure({"conv": net}, (1, 8, 8), batch_sizes=(1,), budget_s=0.01,
        ...             min_time_s=1e-3)
        >>> m["1"].latency("conv")["latency_ms"] > 0
        True
    """
    shape = tuple(input_shape)[-3:]
    device = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    for model in models.values():
        model.to(device)
    results = {}
    for batch in batch_sizes:
        inputs = torch.randn((batch, *shape), device=device)
        peaks = {name: peak_memory_mb(model, inputs) for name, model in models.items()}
        with ExitStack() as stack:
            for model in models.values():
                stack.enter_context(eval_mode(model))
            stack.enter_context(torch.inference_mode())
            calls = {name: partial(model, inputs) for name, model in models.items()}
            comparison = interleaved_timings(
                calls, groups, batch_size=batch, budget_s=budget_s, max_spread=max_spread,
                min_rounds=min_rounds, min_time_s=min_time_s, sync=sync)
        results[str(batch)] = replace(comparison, peak_memory_mb=peaks)
    return results


def rebuilt(model: nn.Module) -> nn.Module:
    """The same network built directly at its layer widths: every Conv2d, Linear and BatchNorm2d
    constructed anew with the shapes and the (effective) weights of the given one; the other
    modules copied with their parameters and buffers.

    A pruned model timed against it shows any cost surgery left behind (forward hooks,
    parametrizations or masks such as ``torch.nn.utils.prune``'s, strided weight views): the
    latency ratio should be 1.00. ``model`` is not modified.
    """
    fresh = _construct(model)
    if fresh is not None:
        return fresh.to(next(model.parameters()).device)
    clone = copy.copy(model)
    clone.__dict__ = dict(model.__dict__)
    clone._parameters = {k: None if p is None else nn.Parameter(p.detach().clone(), p.requires_grad)
                         for k, p in model._parameters.items()}
    clone._buffers = {k: None if b is None else b.clone() for k, b in model._buffers.items()}
    clone._modules = {k: None if c is None else rebuilt(c) for k, c in model._modules.items()}
    return clone


def _construct(module: nn.Module) -> nn.Module | None:
    """A new Conv2d / Linear / BatchNorm2d equal to ``module``, else None."""
    if isinstance(module, nn.Conv2d):
        fresh = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size,
                          module.stride, module.padding, module.dilation, module.groups,
                          module.bias is not None, module.padding_mode)
    elif isinstance(module, nn.Linear):
        fresh = nn.Linear(module.in_features, module.out_features, module.bias is not None)
    elif isinstance(module, nn.BatchNorm2d):
        fresh = nn.BatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
    else:
        return None
    with torch.no_grad():
        for name, tensor in [*fresh.named_parameters(), *fresh.named_buffers()]:
            tensor.copy_(getattr(module, name))
    fresh.train(module.training)
    return fresh
