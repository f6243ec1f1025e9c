"""Running a model on example inputs: eval mode with gradients off (every module's flag
restored afterwards), and example inputs as positional arguments."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Puts ``model`` in eval mode with gradients off; restores every module's flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        for m, training in flags:
            m.training = training


def as_tuple(example_inputs: torch.Tensor | tuple) -> tuple:
    """Example inputs as a tuple of positional arguments."""
    return example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
