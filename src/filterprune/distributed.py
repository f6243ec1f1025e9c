"""Multi-process training: ``torchrun --nproc_per_node N -m filterprune train|finetune|run ...``.

When torchrun's environment says ``WORLD_SIZE`` > 1, the command line joins the process group
(gloo for CPU tensors, NCCL for CUDA ones), each process (rank) takes a disjoint share of every
training epoch, the model trains under DistributedDataParallel (gradients averaged over the
ranks), and only rank 0 logs and writes files; the others wait for it at the end of each stage.
Without torchrun every function here is a no-op for a single process.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from filterprune.errors import FilterpruneError

T = TypeVar("T")


def active() -> bool:
    """Whether this process is one of several (the process group is initialised)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank, 0 when single."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """Number of processes, 1 when single."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Whether this process logs and writes files (rank 0)."""
    return rank() == 0


def init_from_env() -> bool:
    """Joins the process group torchrun describes (``WORLD_SIZE`` > 1 in the environment);
    on a machine with CUDA, selects the GPU ``LOCAL_RANK``. Does nothing otherwise, or if the
    group is already initialised.

    Returns:
        Whether it joined (then call ``shutdown`` when done).

    Raises:
        FilterpruneError: the process group cannot be initialised.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "cpu:gloo,cuda:nccl"
    try:
        dist.init_process_group(backend)
    except (RuntimeError, ValueError) as e:
        raise FilterpruneError(f"cannot join the process group: {e}") from e
    return True


def shutdown() -> None:
    """Leaves the process group ``init_from_env`` joined."""
    dist.destroy_process_group()


def barrier() -> None:
    """Waits until every rank gets here."""
    if active():
        dist.barrier()


def on_main(write: Callable[[], T]) -> T | None:
    """Runs ``write`` on rank 0 only, then lets every rank go on once it is done."""
    result = write() if is_main() else None
    barrier()
    return result


def gather_dicts(part: dict) -> dict:
    """The union of every rank's ``part`` (rank order), on every rank."""
    if not active():
        return part
    parts: list[dict] = [{}] * world_size()
    dist.all_gather_object(parts, part)
    return {key: value for p in parts for key, value in p.items()}


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` under DistributedDataParallel when several ranks train, else itself."""
    if not active():
        return model
    ids = [device] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def synchronize(model: nn.Module) -> None:
    """Gives every rank rank 0's buffers (BatchNorm statistics drift apart: each rank updates
    them on its own batches), then checks that every rank holds the same weights.

    Raises:
        FilterpruneError: the ranks' parameters differ.
    """
    if not active():
        return
    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)
    digest = 0
    for tensor in model.state_dict().values():
        digest = zlib.crc32(tensor.detach().cpu().contiguous().numpy().tobytes(), digest)
    digests = [0] * world_size()
    dist.all_gather_object(digests, digest)
    if len(set(digests)) > 1:
        raise FilterpruneError("the ranks' model weights differ after training")
