"""Prune your own nn.Module through the Python API, scored by your own metric.

    python examples/prune_own_module.py --out runs/denoiser

The network here is a small convolutional denoiser, the metric its PSNR in dB on held-out images
(peak 1; higher is better), not a top-1: ``filterprune.sensitivity`` takes any
``evaluate(model) -> float``. The script trains it, measures each layer's sensitivity (Li et al.
2017, §3.2), prunes the most sensitive layers lightly and the others hard (per-layer ratios),
retrains, saves the pruned model, and reloads it with ``filterprune.load(path, model=...)``: a
model of your own is rebuilt by replaying the saved plan on your unpruned network, so the file
holds data only. Replace ``Denoiser`` and ``noisy_images`` with your own. ``--tiny`` runs in
seconds.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from torch import nn

import filterprune
from filterprune.checkpoint import ModelSpec


class Denoiser(nn.Module):
    """Noisy image (B, 3, H, W) -> clean image (B, 3, H, W)."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        )
        self.head = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.head(self.encoder(x))  # predicts the noise (residual learning)


def noisy_images(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(noisy, clean) pairs, (n, 3, size, size): smooth colour gradients plus Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, size)
    a, b, c = (torch.rand(n, 3, 1, 1, generator=g) for _ in range(3))
    clean = a * ramp.view(1, 1, size, 1) + b * ramp.view(1, 1, 1, size) + c
    return clean + 0.2 * torch.randn(clean.shape, generator=g), clean


def train(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], steps: int) -> None:
    noisy, clean = data
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        batch = torch.randint(0, len(noisy), (32,), generator=g)
        loss = nn.functional.mse_loss(model(noisy[batch]), clean[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def main(argv: list[str] | None = None) -> tuple[Path, nn.Module]:
    """Returns the saved file and the pruned model."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/denoiser"))
    parser.add_argument("--steps", type=int, default=2000, help="training steps")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--ratio", type=float, default=0.6,
                        help="fraction of filters removed from the layers that are not sensitive")
    parser.add_argument("--sensitive-ratio", type=float, default=0.2,
                        help="fraction removed from the most sensitive layer")
    parser.add_argument("--tiny", action="store_true", help="seconds, for a smoke test")
    args = parser.parse_args(argv)
    if args.tiny:
        args.steps, args.size = 30, 16
    torch.manual_seed(0)
    fit, held_out = noisy_images(512, args.size, seed=0), noisy_images(128, args.size, seed=1)
    model = Denoiser()
    train(model, fit, args.steps)

    @torch.no_grad()
    def psnr(candidate: nn.Module) -> float:
        """Peak signal-to-noise ratio in dB (peak 1) on the held-out images: higher is better."""
        noisy, clean = held_out
        return -10 * math.log10(nn.functional.mse_loss(candidate.eval()(noisy), clean).item())

    example = torch.zeros(1, 3, args.size, args.size)
    sens = filterprune.sensitivity(model, example, evaluate=psnr, ratios=[0.25, 0.5, 0.75],
                                   split="validation")
    print(sens.table())
    (most,) = sens.most_sensitive(1)
    ratios = {name: args.sensitive_ratio if name == most else args.ratio for name in sens.layers}
    print(f"most sensitive: {most}; ratios: {ratios}")
    result = filterprune.prune(model, example, ratio=ratios)
    pruned = result.model
    print(f"pruned, before retraining: PSNR {psnr(pruned):.2f} dB (unpruned {psnr(model):.2f})")
    train(pruned, fit, max(1, args.steps // 4))
    for name, net in (("unpruned", model), ("pruned", pruned)):
        cost = filterprune.profile(net, example)
        print(f"{name:<9} MACs {cost.macs:>11,}  params {cost.params:>8,}  "
              f"PSNR {psnr(net):.2f} dB")

    args.out.mkdir(parents=True, exist_ok=True)
    path = filterprune.save(pruned, args.out / "denoiser-pruned.safetensors",
                            spec=ModelSpec(input_shape=tuple(example.shape), plan=result.plan))
    reloaded = filterprune.load(path, model=Denoiser())  # the plan replayed on a fresh Denoiser
    same = torch.equal(reloaded.eval()(held_out[0]), pruned.eval()(held_out[0]))
    print(f"saved {path}; reloaded outputs identical: {same}")
    return path, pruned


if __name__ == "__main__":
    main()
