"""CIFAR ResNet-20 with depthwise-separable convs and squeeze-and-excitation blocks.

The ResNet variant this project's users studied (paper.md, "Extensions"): the CIFAR ResNet-20
layout of He et al. 2016, §4.2 (widths 16/32/64, three blocks per stage), each 3x3 conv replaced
by a depthwise-separable pair (Howard et al. 2017, "MobileNets", §3.1: depthwise 3x3 -> BN ->
ReLU -> pointwise 1x1 -> BN), a squeeze-and-excitation gate on each block's output (Hu, Shen, Sun,
"Squeeze-and-Excitation Networks", CVPR 2018, §3: global pool -> 1x1 reduce -> ReLU -> 1x1 expand
-> sigmoid, multiplied channel-wise), and 1x1 conv projection shortcuts (option B) where the shape
changes, so that every channel a shortcut carries can be pruned.

Module names: ``conv1``, ``bn1``, ``layer{1,2,3}.{i}.dw1/bn1/pw1/bn2/dw2/bn3/pw2/bn4``,
``.se.reduce``, ``.se.expand``, ``.shortcut.0`` (projection), ``.shortcut.1``, ``fc``.
"""

from __future__ import annotations

from torch import Tensor, nn

from filterprune.models._init import init_weights
from filterprune.models._registry import register_model

__all__ = ["DWSEBlock", "DWSEResNet", "SqueezeExcite", "resnet20_dwse"]


class SqueezeExcite(nn.Module):
    """Channel gate: ``x * sigmoid(expand(relu(reduce(mean_hw(x)))))`` (Hu et al. 2018, §3).

    Args:
        channels: Channels C of the input.
        reduction: The hidden layer has ``max(4, C // reduction)`` channels.

    Shape:
        - Input and output: ``(B, C, H, W)``.
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(4, channels // reduction)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.relu = nn.ReLU()
        self.expand = nn.Conv2d(hidden, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        """Scale each channel of ``x`` by its gate in (0, 1)."""
        return x * self.gate(self.expand(self.relu(self.reduce(self.pool(x)))))


class DWSEBlock(nn.Module):
    """Two depthwise-separable convs, an SE gate, plus the shortcut, then ReLU.

    dw1 (3x3, stride) -> bn1 -> ReLU -> pw1 -> bn2 -> ReLU -> dw2 -> bn3 -> ReLU -> pw2 -> bn4
    -> se, added to ``x`` (or to the 1x1 conv + BN projection of ``x``).

    Args:
        in_planes: Channels of the input.
        planes: Channels of the output.
        stride: Stride of ``dw1`` and of the projection.

    Shape:
        - Input: ``(B, in_planes, H, W)``; output: ``(B, planes, ceil(H / stride), ...)``.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.dw1 = nn.Conv2d(in_planes, in_planes, 3, stride, 1, groups=in_planes, bias=False)
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.pw1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.dw2 = nn.Conv2d(planes, planes, 3, 1, 1, groups=planes, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.pw2 = nn.Conv2d(planes, planes, 1, bias=False)
        self.bn4 = nn.BatchNorm2d(planes)
        self.se = SqueezeExcite(planes)
        self.relu = nn.ReLU()
        if stride == 1 and in_planes == planes:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to ``x`` of shape ``(B, in_planes, H, W)``."""
        out = self.relu(self.bn1(self.dw1(x)))
        out = self.relu(self.bn2(self.pw1(out)))
        out = self.relu(self.bn3(self.dw2(out)))
        out = self.se(self.bn4(self.pw2(out)))
        return self.relu(out + self.shortcut(x))


class DWSEResNet(nn.Module):
    """CIFAR ResNet of depth 6n + 2 built from :class:`DWSEBlock` (see the module docstring).

    ``conv1`` (3x3, 16) -> ``bn1`` -> ReLU, three stages of n blocks (widths 16, 32, 64; stages 2
    and 3 start with stride 2), global average pool, flatten, ``fc``.

    Args:
        blocks: Blocks per stage (n).
        num_classes: Number of output classes.
        in_channels: Channels of the input images.

    Shape:
        - Input: ``(B, in_channels, H, W)``, e.g. 32x32.
        - Output: ``(B, num_classes)`` logits.
    """

    def __init__(self, blocks: int = 3, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        stages, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            layers = [DWSEBlock(in_planes, planes, stride)]
            layers += [DWSEBlock(planes, planes) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            in_planes = planes
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """Map images ``(B, in_channels, H, W)`` to logits ``(B, num_classes)``."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.avgpool(x)))


@register_model("resnet20-dwse")
def resnet20_dwse(num_classes: int = 10, in_channels: int = 3) -> DWSEResNet:
    """CIFAR ResNet-20 with depthwise-separable convs and SE gates (3 blocks per stage)."""
    return DWSEResNet(3, num_classes, in_channels)
