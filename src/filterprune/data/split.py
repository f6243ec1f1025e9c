"""A validation split held out of the training set, stratified by class and seeded.

Choices made from a dataset (which layers are sensitive, which criterion, which plan) must not be
made on the test split that reports the final accuracy: that selects on the test set. The
validation split is a share of the *training* images, the same share of every class, drawn with
a seeded generator so that a run and its resume hold out the same images.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from filterprune.data.datasets import ImageDataset
from filterprune.errors import FilterpruneError


def stratified_holdout(
    labels: torch.Tensor, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split sample indices into kept and held-out ones, the same share of every class.

    Class ``c`` with ``n_c`` samples gives ``round(n_c * fraction)`` of them to the held-out
    part, at least one and at most ``n_c - 1`` (every class stays in both parts when it can).

    Args:
        labels: int64 tensor (N,) of class labels.
        fraction: share of each class held out, in (0, 1).
        seed: seeds the draw within each class.

    Returns:
        (kept indices, held-out indices): int64 tensors, each sorted, disjoint, together 0..N-1.

    Raises:
        FilterpruneError: ``fraction`` not in (0, 1), or a class with fewer than 2 samples.
    """
    if not 0 < fraction < 1:
        raise FilterpruneError(f"validation fraction must be in (0, 1), got {fraction}")
    generator = torch.Generator().manual_seed(seed)
    held = []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        if len(members) < 2:
            raise FilterpruneError(
                f"class {c} has {len(members)} training image(s): a validation split needs >= 2"
            )
        count = min(max(1, round(len(members) * fraction)), len(members) - 1)
        held.append(members[torch.randperm(len(members), generator=generator)[:count]])
    held_out = torch.cat(held).sort().values
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[held_out] = False
    return torch.nonzero(mask).flatten(), held_out


def validation_split(dataset: ImageDataset, fraction: float, seed: int) -> ImageDataset:
    """The dataset for choosing (sensitivity, criteria, plans): its training split is the
    training set less a stratified, seeded held-out share, and its test split is that share.

    The original test split is not in it; report final accuracies on ``dataset``'s test split.

    Args:
        dataset: the dataset, whole.
        fraction: share of each class of the training set held out, in (0, 1).
        seed: seeds the draw (the run's seed).

    Returns:
        A dataset named ``<name>`` with (N - V) training and V "test" (validation) images.

    Raises:
        FilterpruneError: see :func:`stratified_holdout`.
    """
    kept, held = stratified_holdout(dataset.train_labels, fraction, seed)
    return replace(
        dataset,
        train_images=dataset.train_images[kept], train_labels=dataset.train_labels[kept],
        test_images=dataset.train_images[held], test_labels=dataset.train_labels[held],
    )
