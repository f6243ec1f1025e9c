"""ResNet-20/32/44/56/110 for CIFAR-10 with identity (option A) shortcuts.

Source: He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016, §4.2
(the CIFAR-10 networks: depth 6n + 2, widths 16/32/64, zero-padding identity shortcuts), as
pruned by Li et al. 2017, §3.3 and §4.2 (only the first conv of each block is pruned there).

Module names follow the usual reproductions: ``conv1``, ``bn1``, ``layer{1,2,3}.{i}.conv1``,
``.bn1``, ``.conv2``, ``.bn2``, ``.shortcut``, and ``fc``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from filterprune.errors import FilterpruneError
from filterprune.models._init import init_weights
from filterprune.models._registry import register_model

__all__ = [
    "BasicBlock",
    "CifarResNet",
    "PadShortcut",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
]


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample, then zero-pad the new channels (He et al. 2016, §3.3).

    Adds no parameters. The extra ``out_planes - in_planes`` channels are split between both
    ends of the channel axis (the front gets the smaller half), so the input channels sit in the
    middle, as in the common CIFAR reproductions.

    Args:
        in_planes: Channels of the input.
        out_planes: Channels of the output (at least ``in_planes``).
        stride: Spatial subsampling step (keeps every ``stride``-th row and column).

    Shape:
        - Input: ``(B, in_planes, H, W)``.
        - Output: ``(B, out_planes, ceil(H / stride), ceil(W / stride))``.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad_front = (out_planes - in_planes) // 2
        self.pad_back = out_planes - in_planes - self.pad_front

    def forward(self, x: Tensor) -> Tensor:
        """Subsample ``x`` by ``stride`` and zero-pad its channels to ``out_planes``."""
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad=({self.pad_front}, {self.pad_back})"


class BasicBlock(nn.Module):
    """Basic residual block: conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus shortcut, then ReLU.

    He et al. 2016, §3 (Fig. 2) with the option-A shortcut of §4.2: ``nn.Identity`` when the
    shape is unchanged, else :class:`PadShortcut` (no conv on the shortcut).

    Args:
        in_planes: Channels of the input.
        planes: Channels of both convs and of the output.
        stride: Stride of ``conv1`` and of the shortcut.

    Shape:
        - Input: ``(B, in_planes, H, W)``.
        - Output: ``(B, planes, ceil(H / stride), ceil(W / stride))``.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        if stride == 1 and in_planes == planes:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = PadShortcut(in_planes, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to ``x`` of shape ``(B, in_planes, H, W)``."""
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for CIFAR-10 of depth 6n + 2 (He et al. 2016, §4.2).

    ``conv1`` (3x3, 16) -> ``bn1`` -> ReLU, then ``layer1``, ``layer2``, ``layer3`` of n
    :class:`BasicBlock` each (widths 16, 32, 64; the first block of ``layer2`` and ``layer3``
    has stride 2, so 32x32 input gives maps of 32, 16, 8), then a global average pool, flatten
    and ``fc`` = Linear(64, num_classes). ResNet-20 has 269,722 parameters for 10 classes.

    Args:
        depth: 6n + 2 (20, 32, 44, 56, 110).
        num_classes: Number of output classes.
        in_channels: Channels of the input images.

    Shape:
        - Input: ``(B, in_channels, H, W)``, e.g. 32x32 (28x28 works too).
        - Output: ``(B, num_classes)`` logits.

    Raises:
        FilterpruneError: If ``depth`` is not of the form 6n + 2 with n >= 1.
    """

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise FilterpruneError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1 = self._make_stage(16, 16, blocks, stride=1)
        self.layer2 = self._make_stage(16, 32, blocks, stride=2)
        self.layer3 = self._make_stage(32, 64, blocks, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)
        init_weights(self)

    @staticmethod
    def _make_stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Map images ``(B, in_channels, H, W)`` to logits ``(B, num_classes)``."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.avgpool(x)))


@register_model
def resnet20(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-20 for CIFAR (He et al. 2016, §4.2): n = 3 blocks per stage, 0.27M parameters."""
    return CifarResNet(20, num_classes, in_channels)


@register_model
def resnet32(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-32 for CIFAR (He et al. 2016, §4.2): n = 5 blocks per stage, 0.46M parameters."""
    return CifarResNet(32, num_classes, in_channels)


@register_model
def resnet44(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-44 for CIFAR (He et al. 2016, §4.2): n = 7 blocks per stage, 0.66M parameters."""
    return CifarResNet(44, num_classes, in_channels)


@register_model
def resnet56(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-56 for CIFAR (He et al. 2016, §4.2): n = 9 blocks per stage, 0.85M parameters."""
    return CifarResNet(56, num_classes, in_channels)


@register_model
def resnet110(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-110 for CIFAR (He et al. 2016, §4.2): n = 18 blocks per stage, 1.7M parameters."""
    return CifarResNet(110, num_classes, in_channels)
