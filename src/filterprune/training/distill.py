"""Knowledge distillation from the unpruned model while retraining (Hinton et al. 2015, §2).

The loss is ``(1 - alpha) * CE(student, labels) + alpha * T^2 * KL(softmax(teacher / T) ||
softmax(student / T))``: the T^2 factor keeps the soft term's gradients on the scale of the hard
term's when T changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from filterprune.errors import FilterpruneError
from filterprune.training.loop import LossFn


def distillation_loss(teacher: nn.Module, temperature: float = 4.0, alpha: float = 0.9) -> LossFn:
    """The loss of a student distilled from ``teacher`` (see the module docstring).

    Args:
        teacher: the unpruned network, on the device of the images; put in eval mode and run
            without gradients (its BatchNorm statistics and weights are never changed).
        temperature: T > 0, softens both distributions.
        alpha: weight of the soft (KL) term in [0, 1]; 0 = plain cross-entropy.

    Returns:
        A ``LossFn``: (logits (B, K), images (B, C, H, W), labels (B,)) -> scalar.

    Raises:
        FilterpruneError: temperature <= 0 or alpha outside [0, 1].

    Example:
        >>> teacher = nn.Linear(4, 3)
        >>> loss = distillation_loss(teacher, temperature=2.0, alpha=0.5)
        >>> x = torch.randn(8, 4)
        >>> bool(loss(teacher(x), x, torch.zeros(8, dtype=torch.long)) > 0)
        True
    """
    if temperature <= 0:
        raise FilterpruneError(f"distillation temperature must be > 0, got {temperature}")
    if not 0 <= alpha <= 1:
        raise FilterpruneError(f"distillation alpha must be in [0, 1], got {alpha}")
    teacher.eval()
    for param in teacher.parameters():
        param.requires_grad_(False)

    def loss(logits: torch.Tensor, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            soft_targets = F.log_softmax(teacher(images) / temperature, dim=1)
        soft = F.kl_div(F.log_softmax(logits / temperature, dim=1), soft_targets,
                        reduction="batchmean", log_target=True)
        return (1 - alpha) * F.cross_entropy(logits, labels) + alpha * temperature**2 * soft

    return loss
