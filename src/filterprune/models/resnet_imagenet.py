"""ResNet-18/34/50 for ImageNet with projection (option B) shortcuts.

Source: He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016, Table 1
(7x7 stem, four stages of basic or bottleneck blocks, a 1x1 conv + BatchNorm projection where the
shape changes), as pruned by Li et al. 2017, §4.3 (ResNet-34 pruned-A/B/C).

Module names follow the usual reproductions: ``conv1``, ``bn1``, ``layer{1..4}.{i}.conv{1,2,3}``,
``.bn{1,2,3}``, ``.downsample.0`` (projection conv), ``.downsample.1`` (its BatchNorm), ``fc``.
"""

from __future__ import annotations

from torch import Tensor, nn

from filterprune.models._init import init_weights
from filterprune.models._registry import register_model

__all__ = ["Bottleneck", "ImageNetBasicBlock", "ImageNetResNet", "resnet18", "resnet34",
           "resnet50"]


def _projection(in_planes: int, out_planes: int, stride: int) -> nn.Module | None:
    """Option-B shortcut: 1x1 conv + BatchNorm where the shape changes, else None (identity)."""
    if stride == 1 and in_planes == out_planes:
        return None
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes)
    )


class ImageNetBasicBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus the shortcut, then ReLU (He et al., Fig. 2).

    Args:
        in_planes: Channels of the input.
        planes: Channels of both convs and of the output.
        stride: Stride of ``conv1`` and of the projection.

    Shape:
        - Input: ``(B, in_planes, H, W)``; output: ``(B, planes, ceil(H / stride), ...)``.
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.downsample = _projection(in_planes, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to ``x`` of shape ``(B, in_planes, H, W)``."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    """conv1x1 -> conv3x3 (stride) -> conv1x1 (x4 channels), BN after each, plus the shortcut
    (He et al. 2016, Fig. 5).

    Args:
        in_planes: Channels of the input.
        planes: Channels of the first two convs; the output has ``4 * planes``.
        stride: Stride of ``conv2`` and of the projection.

    Shape:
        - Input: ``(B, in_planes, H, W)``; output: ``(B, 4 * planes, ceil(H / stride), ...)``.
    """

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU()
        self.downsample = _projection(in_planes, out_planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to ``x`` of shape ``(B, in_planes, H, W)``."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ImageNetResNet(nn.Module):
    """ResNet for ImageNet (He et al. 2016, Table 1).

    ``conv1`` (7x7, 64, stride 2) -> ``bn1`` -> ReLU -> 3x3 max pool (stride 2), then
    ``layer1``..``layer4`` (widths 64, 128, 256, 512 times the block's expansion; stages 2-4 start
    with stride 2), global average pool, flatten, ``fc``. ResNet-34 has 21.8M parameters.

    Args:
        block: ``ImageNetBasicBlock`` or ``Bottleneck``.
        blocks: Number of blocks per stage, e.g. (3, 4, 6, 3).
        num_classes: Number of output classes.
        in_channels: Channels of the input images.

    Shape:
        - Input: ``(B, in_channels, H, W)``, e.g. 224x224 (any size >= 32 works).
        - Output: ``(B, num_classes)`` logits.
    """

    def __init__(
        self,
        block: type[ImageNetBasicBlock | Bottleneck],
        blocks: tuple[int, int, int, int],
        num_classes: int = 1000,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_planes = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks, strict=True)):
            stride = 1 if i == 0 else 2
            layers = []
            for j in range(n):
                layers.append(block(in_planes, planes, stride if j == 0 else 1))
                in_planes = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_planes, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """Map images ``(B, in_channels, H, W)`` to logits ``(B, num_classes)``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.avgpool(x)))


@register_model
def resnet18(num_classes: int = 1000, in_channels: int = 3) -> ImageNetResNet:
    """ResNet-18 for ImageNet (He et al. 2016, Table 1): basic blocks (2, 2, 2, 2), 11.7M params."""
    return ImageNetResNet(ImageNetBasicBlock, (2, 2, 2, 2), num_classes, in_channels)


@register_model
def resnet34(num_classes: int = 1000, in_channels: int = 3) -> ImageNetResNet:
    """ResNet-34 for ImageNet (He et al. 2016; Li et al. 2017, §4.3): basic blocks (3, 4, 6, 3)."""
    return ImageNetResNet(ImageNetBasicBlock, (3, 4, 6, 3), num_classes, in_channels)


@register_model
def resnet50(num_classes: int = 1000, in_channels: int = 3) -> ImageNetResNet:
    """ResNet-50 for ImageNet (He et al. 2016, Table 1): bottlenecks (3, 4, 6, 3), 25.6M params."""
    return ImageNetResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels)
