"""``compute: auto``: the fastest correct compute setting for a model, batch size and device,
picked from a short measured calibration.

Which setting trains fastest depends on the model, the batch and the hardware, and guessing
costs a lot: bf16 autocast is 1.5-2.4x faster than float32 on a CPU with avx512_bf16, but on a
CPU without bf16 units (torch's CPU capability AVX2) PyTorch has no oneDNN bf16 convolution and
falls back to ``aten::_slow_conv2d_forward`` (im2col + a bf16 matrix product emulated in
float32), measured 2-12x slower than float32 here; channels-last helps convolutions on some
models and slows others. So each candidate runs a few training steps of a copy of the actual
model on the actual batch, the candidates interleaved round by round
(``filterprune.deploy.interleaved_timings``), and the pick is the fastest candidate that is
faster than float32 beyond the measurement's noise (the paired ratio's interval lies above 1)
and computes the same logits as float32 within ``tolerance``. Nothing faster: float32.

Candidates: float32, channels-last, bf16 autocast, bf16 + channels-last; on CUDA also the
fastest of those under ``torch.compile`` (compilation costs seconds to minutes, repaid only over
long GPU runs; on CPU it is not tried). bf16 on a CPU without oneDNN bf16 support
(``torch.ops.mkldnn._is_mkldnn_bf16_supported()``) is skipped with that reason, not timed.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from filterprune.deploy import interleaved_timings
from filterprune.errors import FilterpruneError
from filterprune.training.loop import ComputeSettings

FLOAT32 = "float32"


@dataclass(frozen=True)
class Calibration:
    """The outcome of ``calibrate_compute``.

    Attributes:
        settings: the setting picked.
        picked: its name (e.g. ``"bf16 + channels-last"``).
        reason: one line saying why, with the measured images/s of every candidate.
        measured: per candidate timed, ``{"images_per_s"`` (median over the rounds),
            ``"vs_float32"`` (``filterprune.deploy.Comparison.ratio`` entry of float32's step
            time over the candidate's: above 1 = faster), ``"logits_error"`` (relative L2
            error of its logits against float32's), ``"correct"`` (error <= tolerance and a
            finite loss)``}``.
        skipped: per candidate (or family: ``"bf16"``, ``"compile"``) not timed, the reason.
    """

    settings: ComputeSettings
    picked: str
    reason: str
    measured: dict[str, dict]
    skipped: dict[str, str]

    def to_dict(self) -> dict:
        """Plain JSON-able fields (for a stage result); ``ComputeSettings(**d["settings"])``
        rebuilds the setting."""
        return {"settings": self.settings.model_dump(), "picked": self.picked,
                "reason": self.reason, "measured": self.measured, "skipped": self.skipped}


def setting_name(settings: ComputeSettings) -> str:
    """The name of a compute setting, as ``Calibration.picked`` gives it: ``"float32"``,
    ``"bf16 + channels-last"``..."""
    parts = [p for p, on in [("bf16", settings.bf16), ("channels-last", settings.channels_last),
                             ("compile", settings.compile)] if on]
    return " + ".join(parts) or FLOAT32


def calibrate_compute(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device | str = "cpu",
    *,
    budget_s: float = 10.0,
    min_rounds: int = 5,
    tolerance: float = 0.05,
    timer: Callable[[], float] | None = None,
) -> Calibration:
    """Picks the fastest correct compute setting for training ``model`` on batches like
    ``images`` (see the module docstring).

    Args:
        model: the network to train (not modified: each candidate trains a deep copy).
        images: one training batch (B, C, H, W) on ``device``, of the batch size training uses.
        labels: its labels, int64 (B,).
        device: where training runs.
        budget_s: seconds of timed rounds after which the calibration stops (at least
            ``min_rounds`` rounds are run; each round is one training step per candidate).
        min_rounds: least rounds (5: the paired ratios' interval has 94% coverage).
        tolerance: the largest relative L2 error of a candidate's logits against float32's
            (bf16 typically gives about 0.01).
        timer: the clock for the rounds, in seconds (tests pass a fake one; default
            ``time.perf_counter``).

    Returns:
        The ``Calibration``.

    Raises:
        FilterpruneError: float32 itself gives a non-finite loss on the batch.
    """
    device = torch.device(device)
    timer = timer or time.perf_counter
    candidates = [ComputeSettings(channels_last=cl, bf16=bf16)
                  for bf16 in (False, True) for cl in (False, True)]
    skipped = {}
    if not bf16_supported(device):
        skipped["bf16"] = ("this CPU has no oneDNN bf16 kernels (torch CPU capability "
                           f"{torch.backends.cpu.get_cpu_capability()}): bf16 convolutions fall "
                           "back to a slow im2col path")
        candidates = [s for s in candidates if not s.bf16]
    measured = _measure(model, images, labels, device, candidates, budget_s, min_rounds,
                        tolerance, timer)
    if device.type == "cuda":  # the fastest so far, compiled, timed against float32 again
        fastest = next(s for s in candidates if setting_name(s) == _pick(measured))
        compiled = fastest.model_copy(update={"compile": True})
        again = _measure(model, images, labels, device, [candidates[0], compiled], budget_s,
                         min_rounds, tolerance, timer)
        measured[setting_name(compiled)] = again[setting_name(compiled)]
        candidates.append(compiled)
    else:
        skipped["compile"] = "not tried on CPU: compiling costs more than it saves in short runs"
    picked = _pick(measured)
    settings = next(s for s in candidates if setting_name(s) == picked)
    rates = ", ".join(f"{name} {m['images_per_s']:.0f}" + ("" if m["correct"] else " (wrong)")
                      for name, m in measured.items())
    if picked == FLOAT32:
        why = "no other setting was faster beyond the measurement's noise"
    else:
        ratio = measured[picked]["vs_float32"]
        why = (f"{ratio['ratio']:.2f}x float32 ({ratio['confidence']:.0%} interval "
               f"{ratio['low']:.2f}-{ratio['high']:.2f})")
    reason = f"compute: auto picked {picked}: {why}; images/s: {rates}"
    if skipped:
        reason += "; skipped: " + "; ".join(f"{k} ({v})" for k, v in skipped.items())
    return Calibration(settings, picked, reason, measured, skipped)


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast can be fast on ``device``: always on CUDA; on CPU when oneDNN has
    bf16 kernels for it (avx512_bf16, AMX or at least AVX-512 BW/VL/DQ)."""
    return device.type != "cpu" or torch.ops.mkldnn._is_mkldnn_bf16_supported()


def _pick(measured: dict[str, dict]) -> str:
    """The fastest correct candidate whose speed-up over float32 is above 1 beyond noise."""
    faster = [name for name, m in measured.items()
              if name != FLOAT32 and m["correct"] and m["vs_float32"]["low"] > 1.0]
    return max(faster, key=lambda name: measured[name]["images_per_s"], default=FLOAT32)


def _measure(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device,
    candidates: list[ComputeSettings], budget_s: float, min_rounds: int, tolerance: float,
    timer: Callable[[], float],
) -> dict[str, dict]:
    """Times one training step of each candidate (float32 first) and checks its logits."""
    with torch.no_grad():
        reference = copy.deepcopy(model).to(device).eval()(images).float()
    steps, errors = {}, {}
    for settings in candidates:
        name = setting_name(settings)
        copied = settings.prepare(copy.deepcopy(model), device)
        forward = torch.compile(copied) if settings.compile else copied
        with torch.no_grad(), settings.autocast(device):
            logits = copied.eval()(settings.batch(images)).float()
        copied.train()
        errors[name] = float((logits - reference).norm() / reference.norm().clamp_min(1e-12))
        steps[name] = _Step(forward, copied, settings, images, labels, device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    timing = interleaved_timings(steps, batch_size=len(images), budget_s=budget_s,
                                 max_spread=0.1, min_rounds=min_rounds, min_time_s=0.0,
                                 timer=timer, sync=sync)
    base = setting_name(candidates[0])
    measured = {}
    for name, step in steps.items():
        if name == base and not step.finite:
            raise FilterpruneError("calibration: float32 training gives a non-finite loss on the "
                                   "example batch")
        measured[name] = {
            "images_per_s": timing.latency(name)["images_per_s"],
            "vs_float32": timing.ratio(base, name),
            "logits_error": errors[name],
            "correct": step.finite and errors[name] <= tolerance,
        }
    return measured


class _Step:
    """One SGD step of a candidate; remembers whether every loss was finite."""

    def __init__(self, forward: nn.Module, model: nn.Module, settings: ComputeSettings,
                 images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> None:
        self.forward, self.settings, self.device = forward, settings, device
        self.images, self.labels = settings.batch(images), labels
        self.optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        self.finite = True

    def __call__(self) -> None:
        with self.settings.autocast(self.device):
            loss = F.cross_entropy(self.forward(self.images), self.labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.finite &= bool(torch.isfinite(loss.detach()))
