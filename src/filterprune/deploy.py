"""Deployment metrics: measured latency, throughput, peak memory and model file size.

MACs predict speed only in part: memory traffic, kernel choice and per-layer overhead decide the
rest. These functions measure it. Latency is the wall time of one forward pass of a batch in
eval mode under ``torch.inference_mode``, timed by ``torch.utils.benchmark`` (warm-up, then
blocks of runs for at least ``min_run_time_s``; on CUDA it synchronises), reported as the median
and the interquartile range of the blocks. Throughput is batch size / median latency.

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
import weakref
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils import benchmark
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from filterprune.engine.graph import eval_mode


def latency(
    model: nn.Module, inputs: torch.Tensor, min_run_time_s: float = 0.5
) -> tuple[float, float]:
    """Median and interquartile range, in ms, of one forward pass of ``inputs`` (see module doc).

    Args:
        model: the network, already on the inputs' device (run in eval mode, restored after).
        inputs: a batch (B, C, H, W).
        min_run_time_s: least total time spent timing, in seconds.

    Returns:
        ``(latency_ms, iqr_ms)``.
    """
    with eval_mode(model), torch.inference_mode():
        timer = benchmark.Timer(stmt="model(inputs)", globals={"model": model, "inputs": inputs},
                                num_threads=torch.get_num_threads())
        measurement = timer.blocked_autorange(min_run_time=min_run_time_s)
    return measurement.median * 1e3, measurement.iqr * 1e3


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


def measure(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_sizes: Sequence[int] = (1, 256),
    device: torch.device | str = "cpu",
    min_run_time_s: float = 0.5,
) -> dict:
    """Latency, throughput and peak memory of ``model`` at each batch size.

    Args:
        model: the network (moved to ``device``; mode restored afterwards).
        input_shape: one image's shape (C, H, W) (a leading batch dimension is dropped if given
            as (1, C, H, W)).
        batch_sizes: the batch sizes to time.
        device: where to run.
        min_run_time_s: least time spent timing each batch size, in seconds.

    Returns:
        ``{str(batch_size): {"latency_ms", "iqr_ms", "images_per_s", "peak_memory_mb"}}``.

    Example:
        >>> net = nn.Conv2d(1, 4, 3)
        >>> m = measure(net, (1, 8, 8), batch_sizes=(1,), min_run_time_s=0.01)
        >>> sorted(m["1"])
        ['images_per_s', 'iqr_ms', 'latency_ms', 'peak_memory_mb']
    """
    shape = tuple(input_shape)[-3:]
    model.to(device)
    results = {}
    for batch in batch_sizes:
        inputs = torch.randn((batch, *shape), device=device)
        median_ms, iqr_ms = latency(model, inputs, min_run_time_s)
        results[str(batch)] = {
            "latency_ms": median_ms, "iqr_ms": iqr_ms, "images_per_s": batch / (median_ms / 1e3),
            "peak_memory_mb": peak_memory_mb(model, inputs),
        }
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


def speedups(measured: dict, reference: dict) -> dict:
    """Reference latency / measured latency per batch size (above 1 = faster than reference), for
    two ``measure`` results."""
    return {batch: reference[batch]["latency_ms"] / row["latency_ms"]
            for batch, row in measured.items() if batch in reference}


def fastest_of(runs: Sequence[dict]) -> dict:
    """Merges repeated ``measure`` results of one model: per batch size, the row of the run with
    the lowest latency. Other processes on a shared machine only ever add time, so the fastest
    run is the best estimate of the model's own speed (its ``iqr_ms`` shows the spread within)."""
    return {batch: min((run[batch] for run in runs), key=lambda row: row["latency_ms"])
            for batch in runs[0]}
