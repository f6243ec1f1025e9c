"""Filter importance criteria: one score per filter, higher = more important.

Each criterion maps a conv weight (C_out, C_in, kH, kW) to scores (C_out,). A criterion only
scores; which filters go is decided by the plan (filterprune.engine.plan): the lowest scores.

Besides the paper's L1 (§3.1) and L2 (Appendix 6.1) norms, the controls of Li et al. 2017, §4.5
(Fig. 8) are criteria too: ``l1-largest`` (the negated L1 norm, so the largest-L1 filters go) and
``random`` (scores drawn from a seeded generator, independent of the weights). The
activation-based criteria of §4.5 (Fig. 9) need data: see filterprune.engine.activations.
"""

from __future__ import annotations

import zlib
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


def l1_largest(weight: torch.Tensor) -> torch.Tensor:
    """The negated L1 norm: the filters with the LARGEST L1 norm score lowest and are removed
    first (the control of Li et al. 2017, §4.5, Fig. 8).

    Args:
        weight: conv weight, shape (C_out, C_in, kH, kW).

    Returns:
        Scores, shape (C_out,), float32.
    """
    return -l1_norm(weight)


def random_criterion(seed: int = 0) -> Criterion:
    """A criterion that scores filters at random, reproducibly (Li et al. 2017, §4.5, Fig. 8).

    The scores of a weight are drawn from a generator seeded by ``seed`` and the weight's shape,
    so a layer gets the same random order of removal at every ratio (pruning more removes a
    superset), and the weights' values play no part. Layers of the same shape share that order.

    Args:
        seed: the random seed.

    Returns:
        A criterion weight (C_out, C_in, kH, kW) -> scores (C_out,), float32, uniform in [0, 1).
    """

    def random_scores(weight: torch.Tensor) -> torch.Tensor:
        key = f"{seed}:{tuple(weight.shape)}".encode()
        generator = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(key)) % 2**63)
        return torch.rand(weight.shape[0], generator=generator)

    random_scores.__name__ = "random"
    return random_scores


CRITERIA: dict[str, Criterion] = {
    "l1": l1_norm, "l2": l2_norm, "l1-largest": l1_largest, "random": random_criterion(0),
}


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
