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
from filterprune.models.scnnb import SCNNB, scnnb
from filterprune.models.vgg import VGG, VGG16_CONFIG, vgg16, vgg16_lite

__all__ = [
    "SCNNB",
    "VGG",
    "VGG16_CONFIG",
    "BasicBlock",
    "CifarResNet",
    "PadShortcut",
    "create_model",
    "list_models",
    "model_arguments",
    "register_model",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "scnnb",
    "vgg16",
    "vgg16_lite",
]
