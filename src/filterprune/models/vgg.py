"""VGG-16 for CIFAR-10 as used by Li et al. 2017 (§4.1), and its half-width "LightweightVGG16".

Source: Li, Kadav, Durdanovic, Samet, Graf, "Pruning Filters for Efficient ConvNets", ICLR 2017,
§4.1 (the CIFAR-10 VGG-16 with batch normalisation and a small classifier, no dropout).
"""

from __future__ import annotations

from torch import Tensor, nn

from filterprune.errors import FilterpruneError
from filterprune.models._init import init_weights
from filterprune.models._registry import register_model

__all__ = ["VGG", "VGG16_CONFIG", "vgg16", "vgg16_lite"]

VGG16_CONFIG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
)  # fmt: skip
"""Conv widths of VGG-16 in forward order; ``"M"`` is a 2x2 max pool (Li et al. 2017, §4.1)."""


class VGG(nn.Module):
    """VGG with BN for small images (Li et al. 2017, §4.1).

    ``features``: for every width c of ``config``, conv3x3(c, padding 1, no bias) -> BN -> ReLU;
    ``"M"`` is a 2x2 max pool. Then ``nn.AdaptiveAvgPool2d(1)``, which equals the paper's 2x2
    average pool on 32x32 input (the last feature map is 2x2) and also works on 28x28.
    ``classifier``: flatten -> Linear(c, c) -> BatchNorm1d -> ReLU -> Linear(c, num_classes),
    with c the last conv's width. No dropout.

    Args:
        config: Conv widths and ``"M"`` pools in forward order, before scaling.
        num_classes: Number of output classes.
        in_channels: Channels of the input images.
        width_multiplier: Factor applied to every width: ``int(round(c * width_multiplier))``.

    Shape:
        - Input: ``(B, in_channels, H, W)`` with H, W >= 2 ** (number of pools), e.g. 32x32.
        - Output: ``(B, num_classes)`` logits.

    Raises:
        FilterpruneError: If ``width_multiplier`` makes a width smaller than 1.
    """

    def __init__(
        self,
        config: tuple[int | str, ...] = VGG16_CONFIG,
        num_classes: int = 10,
        in_channels: int = 3,
        width_multiplier: float = 1.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            width = int(round(item * width_multiplier))
            if width < 1:
                raise FilterpruneError(
                    f"width_multiplier {width_multiplier} leaves a layer of width {item} empty"
                )
            layers += [
                nn.Conv2d(channels, width, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
            ]
            channels = width
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels, channels),
            nn.BatchNorm1d(channels),
            nn.ReLU(),
            nn.Linear(channels, num_classes),
        )
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """Map images ``(B, in_channels, H, W)`` to logits ``(B, num_classes)``."""
        return self.classifier(self.features(x))


@register_model
def vgg16(num_classes: int = 10, in_channels: int = 3, width_multiplier: float = 1.0) -> VGG:
    """VGG-16 for CIFAR-10 (Li et al. 2017, §4.1); every width is scaled by ``width_multiplier``."""
    return VGG(VGG16_CONFIG, num_classes, in_channels, width_multiplier)


@register_model("vgg16-lite")
def vgg16_lite(num_classes: int = 10, in_channels: int = 3) -> VGG:
    """The "LightweightVGG16": VGG-16 at width 0.5 (convs 32 to 256 wide, classifier 256 -> 256)."""
    return VGG(VGG16_CONFIG, num_classes, in_channels, width_multiplier=0.5)
