"""Model zoo: the networks of Li et al. 2017 and of this project's users, built by name.

Use :func:`create_model` with a name from :func:`list_models`, e.g.
``create_model("resnet56", num_classes=10)``; :func:`model_arguments` tells which keywords a
model accepts. Importing this package registers every model below.
"""

from filterprune.models._registry import (
    create_model,
    list_models,
    model_arguments,
    register_model,
)
from filterprune.models.mobilenetv2 import InvertedResidual, MobileNetV2, mobilenetv2
from filterprune.models.resnet_cifar import (
    BasicBlock,
    CifarResNet,
    PadShortcut,
    resnet20,
    resnet32,
    resnet44,
    resnet56,
    resnet110,
)
from filterprune.models.resnet_dwse import DWSEBlock, DWSEResNet, SqueezeExcite, resnet20_dwse
from filterprune.models.resnet_imagenet import (
    Bottleneck,
    ImageNetBasicBlock,
    ImageNetResNet,
    resnet18,
    resnet34,
    resnet50,
)
from filterprune.models.scnnb import SCNNB, scnnb
from filterprune.models.vgg import VGG, VGG16_CONFIG, vgg16, vgg16_lite

__all__ = [
    "SCNNB",
    "VGG",
    "VGG16_CONFIG",
    "BasicBlock",
    "Bottleneck",
    "CifarResNet",
    "DWSEBlock",
    "DWSEResNet",
    "ImageNetBasicBlock",
    "ImageNetResNet",
    "InvertedResidual",
    "MobileNetV2",
    "PadShortcut",
    "SqueezeExcite",
    "create_model",
    "list_models",
    "mobilenetv2",
    "model_arguments",
    "register_model",
    "resnet18",
    "resnet20",
    "resnet20_dwse",
    "resnet32",
    "resnet34",
    "resnet44",
    "resnet50",
    "resnet56",
    "resnet110",
    "scnnb",
    "vgg16",
    "vgg16_lite",
]
