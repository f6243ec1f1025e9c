"""The zoo's weight initialisation."""

from torch import nn


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal conv weights (fan_out, ReLU gain; He et al. 2015), zero conv biases,
    BatchNorm weight 1 and bias 0. Linear layers keep PyTorch's default."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
