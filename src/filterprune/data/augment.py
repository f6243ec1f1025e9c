"""Batch augmentation of uint8 images, vectorised: random crop from zero padding, flip."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def augment(
    images: torch.Tensor, pad: int, flip: bool, generator: torch.Generator | None
) -> torch.Tensor:
    """Random crop from the zero-padded batch and random horizontal flip, vectorised.

    Args:
        images: uint8 tensor (B, C, H, W), on any device.
        pad: zero padding in pixels; each image is shifted by up to ``pad`` in each direction.
        flip: mirror each image left-right with probability 1/2.
        generator: CPU generator for the draws (None: torch's global RNG).

    Returns:
        uint8 tensor (B, C, H, W) on the same device.
    """
    b, c, h, w = images.shape
    device = images.device
    if pad:
        padded = F.pad(images, (pad, pad, pad, pad))
        # Top-left corner of each crop in the padded image: shift in [-pad, pad] + pad.
        offsets = torch.randint(0, 2 * pad + 1, (2, b), generator=generator).to(device)
        rows = offsets[0, :, None] + torch.arange(h, device=device)  # (B, H)
        cols = offsets[1, :, None] + torch.arange(w, device=device)  # (B, W)
        padded = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * pad))
        images = padded.gather(3, cols[:, None, None, :].expand(b, c, h, w))
    if flip:
        flipped = torch.rand(b, generator=generator).to(device) < 0.5
        images = torch.where(flipped[:, None, None, None], images.flip(3), images)
    return images
