"""SCNNB, the shallow CNN with batch normalisation of Lei et al. 2019.

Source: Lei, Pan, Huang, "A shallow convolutional neural network for image classification",
SN Applied Sciences 1, 2019 (used on Fashion-MNIST and CIFAR-10); see also the project spec
(paper.md, "Extensions named by this project's users").
"""

from __future__ import annotations

from torch import Tensor, nn

from filterprune.errors import FilterpruneError
from filterprune.models._init import init_weights
from filterprune.models._registry import register_model

__all__ = ["SCNNB", "scnnb"]


class SCNNB(nn.Module):
    """Two conv blocks and a two-layer classifier (Lei et al. 2019).

    ``features``: conv3x3(32, pad 1) -> BN -> ReLU -> maxpool 2, conv3x3(64, pad 1) -> BN -> ReLU
    -> maxpool 2; ``classifier``: flatten -> Linear(64 * s * s, 1280) -> ReLU -> Dropout(0.5)
    -> Linear(1280, num_classes), with s = input_size // 4.

    Args:
        num_classes: Number of output classes.
        in_channels: Channels of the input images (1 for Fashion-MNIST, 3 for CIFAR-10).
        input_size: Side of the square input images (28 for Fashion-MNIST, 32 for CIFAR-10);
            it fixes the first Linear's input size.

    Shape:
        - Input: ``(B, in_channels, input_size, input_size)``.
        - Output: ``(B, num_classes)`` logits.

    Raises:
        FilterpruneError: If ``input_size`` is smaller than 4.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, input_size: int = 28) -> None:
        super().__init__()
        if input_size < 4:
            raise FilterpruneError(f"scnnb needs input_size >= 4, got {input_size}")
        side = input_size // 4
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * side * side, 1280),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(1280, num_classes),
        )
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """Map images ``(B, in_channels, H, W)`` to logits ``(B, num_classes)``."""
        return self.classifier(self.features(x))


@register_model
def scnnb(num_classes: int = 10, in_channels: int = 3, input_size: int = 28) -> SCNNB:
    """SCNNB (Lei et al. 2019); ``input_size`` 28 for Fashion-MNIST, 32 for CIFAR-10."""
    return SCNNB(num_classes=num_classes, in_channels=in_channels, input_size=input_size)
