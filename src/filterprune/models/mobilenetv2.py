"""MobileNetV2: depthwise-separable inverted residual blocks with linear bottlenecks.

Source: Sandler, Howard, Zhu, Zhmoginov, Chen, "MobileNetV2: Inverted Residuals and Linear
Bottlenecks", CVPR 2018, Table 2 (the ImageNet network: t, c, n, s per stage; ReLU6; a residual
addition where a block keeps its shape; 1x1 conv to 1280, global pool, dropout, classifier).

Module names: ``features.{i}`` (``features.0`` the stem, ``features.18`` the 1x1 conv to 1280),
each inverted residual ``features.{i}.conv`` = [expand 1x1 (if t > 1)], depthwise 3x3, project
1x1, BatchNorm; ``classifier.1`` the Linear.
"""

from __future__ import annotations

from torch import Tensor, nn

from filterprune.models._init import init_weights
from filterprune.models._registry import register_model

__all__ = ["InvertedResidual", "MobileNetV2", "mobilenetv2"]

# (expansion t, output channels c, blocks n, first stride s), Sandler et al. 2018, Table 2.
MOBILENETV2_CONFIG = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                      (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _divisible(value: float, divisor: int = 8) -> int:
    """Rounds a width to the nearest multiple of ``divisor``, losing at most 10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _conv_bn_relu6(in_planes: int, out_planes: int, kernel: int, stride: int = 1,
                   groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_planes),
        nn.ReLU6(),
    )


class InvertedResidual(nn.Module):
    """1x1 expansion (x t) -> depthwise 3x3 -> 1x1 linear projection, plus the input when the
    shape is kept (Sandler et al. 2018, Fig. 3b / Table 1).

    Args:
        in_planes: Channels of the input.
        out_planes: Channels of the output.
        stride: Stride of the depthwise conv (1 or 2).
        expansion: Expansion factor t (1: no expansion conv).

    Shape:
        - Input: ``(B, in_planes, H, W)``; output: ``(B, out_planes, ceil(H / stride), ...)``.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_planes * expansion
        layers = [] if expansion == 1 else [_conv_bn_relu6(in_planes, hidden, 1)]
        layers += [
            _conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, out_planes, 1, bias=False),
            nn.BatchNorm2d(out_planes),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_planes == out_planes

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to ``x`` of shape ``(B, in_planes, H, W)``."""
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018, Table 2): 3.5M parameters at width 1 for 1000 classes.

    Args:
        num_classes: Number of output classes.
        in_channels: Channels of the input images.
        width_multiplier: Scales every width (rounded to multiples of 8); the last conv keeps
            1280 channels for multipliers up to 1.

    Shape:
        - Input: ``(B, in_channels, H, W)``, e.g. 224x224 (32x32 works: the maps end at 1x1).
        - Output: ``(B, num_classes)`` logits.
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3,
                 width_multiplier: float = 1.0) -> None:
        super().__init__()
        planes = _divisible(32 * width_multiplier)
        last = _divisible(1280 * max(1.0, width_multiplier))
        layers: list[nn.Module] = [_conv_bn_relu6(in_channels, planes, 3, stride=2)]
        for t, c, n, s in MOBILENETV2_CONFIG:
            out_planes = _divisible(c * width_multiplier)
            for i in range(n):
                layers.append(InvertedResidual(planes, out_planes, s if i == 0 else 1, t))
                planes = out_planes
        layers.append(_conv_bn_relu6(planes, last, 1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """Map images ``(B, in_channels, H, W)`` to logits ``(B, num_classes)``."""
        return self.classifier(self.flatten(self.avgpool(self.features(x))))


@register_model
def mobilenetv2(num_classes: int = 1000, in_channels: int = 3,
                width_multiplier: float = 1.0) -> MobileNetV2:
    """MobileNetV2 (Sandler et al. 2018); ``width_multiplier`` scales the widths."""
    return MobileNetV2(num_classes, in_channels, width_multiplier)
