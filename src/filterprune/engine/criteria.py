"""Filter importance criteria: one score per filter, higher = more important.

Each criterion maps a conv weight (C_out, C_in, kH, kW) to scores (C_out,). A criterion only
scores; which filters go is decided by the plan (filterprune.engine.plan).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from filterprune.errors import FilterpruneError

Criterion = Callable[[torch.Tensor], torch.Tensor]


def l1_norm(weight: torch.Tensor) -> torch.Tensor:
    """Sum of absolute kernel weights of each filter (Li et al. 2017, §3.1).

    Args:
        weight: conv weight, shape (C_out, C_in, kH, kW).

    Returns:
        Scores, shape (C_out,), float32.

    Example:
        >>> l1_norm(torch.ones(4, 3, 3, 3))
        tensor([27., 27., 27., 27.])
    """
    return weight.detach().float().abs().flatten(1).sum(dim=1)


def l2_norm(weight: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of each filter (Li et al. 2017, Appendix 6.1).

    Args:
        weight: conv weight, shape (C_out, C_in, kH, kW).

    Returns:
        Scores, shape (C_out,), float32.
    """
    return weight.detach().float().flatten(1).norm(dim=1)


CRITERIA: dict[str, Criterion] = {"l1": l1_norm, "l2": l2_norm}


def get_criterion(criterion: str | Criterion) -> Criterion:
    """Returns the criterion named ``criterion`` (or ``criterion`` itself if it is callable).

    Raises:
        FilterpruneError: for an unknown name.
    """
    if callable(criterion):
        return criterion
    if criterion not in CRITERIA:
        raise FilterpruneError(
            f"unknown criterion '{criterion}' (known: {', '.join(sorted(CRITERIA))})"
        )
    return CRITERIA[criterion]
