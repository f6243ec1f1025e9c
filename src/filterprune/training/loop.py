"""Training and evaluation: SGD with momentum and weight decay, step/cosine/constant schedules.

Used for the baseline (He et al. 2016 hyperparameters in the CIFAR configs) and for retraining
after pruning (Li et al. 2017, §4: a constant small learning rate).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from filterprune import distributed
from filterprune.errors import FilterpruneError
from filterprune.training.state import load_training_state, save_training_state

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
# (logits (B, K), images (B, C, H, W), labels (B,)) -> scalar loss; default: cross-entropy.
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# Progress bars and log lines share one stderr console, so they do not interleave; stdout is
# left to results (``--json``).
console = Console(stderr=True)


class TrainSettings(BaseModel):
    """Optimiser and schedule of one training stage.

    Attributes:
        epochs: passes over the training set (0 = no training).
        batch_size: training images per step.
        lr: initial learning rate.
        momentum: SGD momentum.
        weight_decay: L2 penalty.
        schedule: ``step`` (lr x gamma at each milestone), ``cosine`` (to 0 over the epochs) or
            ``constant``.
        milestones: for ``step``, fractions of the epochs at which lr is multiplied by gamma.
        gamma: step factor.
    """

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(10, ge=0)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["step", "cosine", "constant"] = "step"
    milestones: list[float] = Field(default_factory=lambda: [0.5, 0.75])
    gamma: float = Field(0.1, gt=0)

    def lr_factor(self, epoch: int) -> float:
        """Multiplier of ``lr`` during ``epoch`` (0-based)."""
        if self.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * epoch / max(1, self.epochs)))
        if self.schedule == "step":
            return self.gamma ** sum(epoch >= m * self.epochs for m in self.milestones)
        return 1.0


class ComputeSettings(BaseModel):
    """How forward passes run: memory format, precision and compilation.

    Attributes:
        channels_last: model weights and input batches in channels-last memory format (NHWC),
            which convolution kernels (cuDNN, oneDNN) often run faster.
        bf16: forward passes under ``torch.autocast`` with bfloat16, on any device (BatchNorm
            and the loss stay float32 under autocast); on CPUs without bf16 units it is slower.
        compile: training steps run through ``torch.compile(model)`` (the first steps compile;
            evaluation runs the model uncompiled, as each pruned model would compile anew).
    """

    model_config = ConfigDict(extra="forbid")

    channels_last: bool = False
    bf16: bool = False
    compile: bool = False

    def prepare(self, model: nn.Module, device: torch.device | str) -> nn.Module:
        """Moves ``model`` to ``device`` (and to channels-last, if set); returns it."""
        return model.to(device, memory_format=torch.channels_last if self.channels_last
                        else torch.preserve_format)

    def batch(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` (B, C, H, W) in the memory format the model expects."""
        if self.channels_last:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def autocast(self, device: torch.device | str) -> torch.autocast:
        """The autocast context of forward passes on ``device`` (disabled unless ``bf16``)."""
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=self.bf16)


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, disable=not (enabled and console.is_terminal), transient=True,
    )


def train(
    model: nn.Module,
    batches: Batches,
    settings: TrainSettings,
    device: torch.device | str = "cpu",
    *,
    description: str = "train",
    progress: bool = True,
    state_path: str | Path | None = None,
    rng: torch.Generator | None = None,
    loss_fn: LossFn | None = None,
    on_epoch_end: Callable[[int], None] | None = None,
    compute: ComputeSettings | None = None,
) -> list[dict]:
    """Trains ``model`` in place with cross-entropy (or ``loss_fn``).

    Args:
        model: the network (moved to ``device``).
        batches: re-iterable source of (images float (B, C, H, W), labels int64 (B,)), one pass
            per epoch (e.g. ``filterprune.data.BatchLoader``), already on ``device``.
        settings: optimiser and schedule.
        device: where to train.
        description: label of the progress bar.
        progress: show a progress bar.
        state_path: if given, the training state (model, optimizer, RNG states, epoch) is written
            there atomically after every epoch, and training resumes from it if it exists.
        rng: the generator that orders and augments ``batches``, saved and restored with the state.
        loss_fn: replaces cross-entropy (e.g. ``filterprune.training.distill.distillation_loss``).
        on_epoch_end: called with the finished epoch's number (1-based) before the state is
            saved (e.g. Soft Filter Pruning zeroes filters there).
        compute: memory format, autocast and compilation of the forward passes (default: none).

    Under torchrun (``filterprune.distributed``), the model trains under
    DistributedDataParallel, each rank on its share of ``batches``; only rank 0 writes the
    state file, and every rank ends with rank 0's weights and buffers.

    Returns:
        One dict per epoch: ``epoch``, ``lr``, ``loss`` (mean), ``top1`` (training, %), ``time_s``.

    Raises:
        FilterpruneError: if the loss becomes NaN or infinite (the state file keeps the last
            finished epoch), or the state file does not fit.
    """
    compute = compute or ComputeSettings()
    forward = distributed.wrap(compute.prepare(model, device), torch.device(device))
    if compute.compile:
        forward = torch.compile(forward)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=settings.lr, momentum=settings.momentum,
        weight_decay=settings.weight_decay,
    )
    done, history = 0, []
    if state_path is not None and Path(state_path).is_file():
        done, history = load_training_state(state_path, model, optimizer, rng)
    with _progress(progress) as bar:
        for epoch in range(done, settings.epochs):
            for group in optimizer.param_groups:
                group["lr"] = settings.lr * settings.lr_factor(epoch)
            task = bar.add_task(f"{description} {epoch + 1}/{settings.epochs}", total=len(batches),
                                info="")
            model.train()
            start, total_loss, correct, seen = time.perf_counter(), 0.0, 0, 0
            for images, labels in batches:
                with compute.autocast(device):
                    logits = forward(compute.batch(images))
                    loss = (F.cross_entropy(logits, labels) if loss_fn is None
                            else loss_fn(logits, images, labels))
                if not torch.isfinite(loss):
                    raise FilterpruneError(
                        f"training diverged: loss is {loss.item()} in epoch {epoch + 1}; "
                        "lower the learning rate"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total_loss += loss.item() * len(labels)
                correct += (logits.argmax(1) == labels).sum().item()
                seen += len(labels)
                bar.update(task, advance=1, info=f"loss {total_loss / seen:.3f}")
            bar.remove_task(task)
            history.append({
                "epoch": epoch + 1,
                "lr": optimizer.param_groups[0]["lr"],
                "loss": total_loss / max(1, seen),
                "top1": 100.0 * correct / max(1, seen),
                "time_s": time.perf_counter() - start,
            })
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1)
            if state_path is not None and distributed.is_main():
                save_training_state(state_path, model, optimizer, epoch + 1, history, rng)
    distributed.synchronize(model)
    return history


def topk_hits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Whether each sample's label is among its top-k classes, k = 1..min(5, classes).

    Args:
        logits: (B, classes).
        labels: int64 (B,).

    Returns:
        bool (B, k): column 0 is top-1, ``any`` over the columns top-5.
    """
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices
    return top == labels[:, None]


def evaluate(
    model: nn.Module, batches: Batches, device: torch.device | str = "cpu",
    compute: ComputeSettings | None = None, *, per_image: bool = False,
) -> dict:
    """Top-1 (and, for >= 100 classes, top-5) accuracy in % and mean cross-entropy.

    Args:
        model: the network (moved to ``device``; its train/eval mode is restored afterwards).
        batches: (images, labels) on ``device``.
        device: where to evaluate.
        compute: memory format and autocast of the forward passes (``compile`` is not used).
        per_image: also return whether each image was classified right (top-1), in the order
            of ``batches``: what ``filterprune.stats.drop_interval`` pairs two models on.

    Returns:
        ``{"top1": float, "top5": float | None, "loss": float}``, with ``per_image`` also
        ``"correct"``: bool tensor (N,) on the CPU (N bytes).
    """
    compute = compute or ComputeSettings()
    compute.prepare(model, device)
    was_training = model.training
    model.eval()
    correct1 = correct5 = seen = 0
    total_loss = 0.0
    top5 = None
    correct = []
    with torch.inference_mode():
        for images, labels in batches:
            with compute.autocast(device):
                logits = model(compute.batch(images))
                total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
            hits = topk_hits(logits, labels)
            correct1 += hits[:, 0].sum().item()
            correct5 += hits.any(dim=1).sum().item()
            seen += len(labels)
            top5 = logits.shape[1] >= 100
            if per_image:
                correct.append(hits[:, 0].cpu())
    model.train(was_training)
    result = {
        "top1": 100.0 * correct1 / max(1, seen),
        "top5": 100.0 * correct5 / max(1, seen) if top5 else None,
        "loss": total_loss / max(1, seen),
    }
    if per_image:
        result["correct"] = torch.cat(correct) if correct else torch.zeros(0, dtype=torch.bool)
    return result
