"""A validation split held out of the training set, stratified by class and seeded.

Choices made from a dataset (which layers are sensitive, which criterion, which plan) must not be
made on the test split that reports the final accuracy: that selects on the test set. The
validation split is a share of the *training* images, the same share of every class, drawn with
a seeded generator so that a run and its resume hold out the same images.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch.utils.data import Dataset, Subset

from filterprune.data.datasets import ImageDataset
from filterprune.data.stream import StreamedDataset
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


def validation_split(
    dataset: ImageDataset | StreamedDataset, fraction: float, seed: int
) -> tuple[ImageDataset | StreamedDataset, ImageDataset | StreamedDataset]:
    """The dataset split for choosing (sensitivity, criteria, plans) without the test split.

    Args:
        dataset: the dataset, whole (in memory or streamed).
        fraction: share of each class of the training set held out, in (0, 1).
        seed: seeds the draw (the run's seed).

    Returns:
        ``(fit, validation)``: ``fit`` is ``dataset`` with its training split less the held-out
        images (train on it; its test split is ``dataset``'s, for the reported accuracies);
        ``validation`` has the same training split and the held-out images as its test split
        (evaluate choices on its test split).

    Raises:
        FilterpruneError: see :func:`stratified_holdout`.
    """
    if isinstance(dataset, StreamedDataset):
        kept, held = stratified_holdout(_labels(dataset.train), fraction, seed)
        fit = replace(dataset, train=Subset(dataset.train, kept.tolist()))
        return fit, replace(fit, test=Subset(dataset.train, held.tolist()))
    kept, held = stratified_holdout(dataset.train_labels, fraction, seed)
    fit = replace(dataset, train_images=dataset.train_images[kept],
                  train_labels=dataset.train_labels[kept])
    return fit, replace(fit, test_images=dataset.train_images[held],
                        test_labels=dataset.train_labels[held])


def _labels(dataset: Dataset) -> torch.Tensor:
    """The labels of a map-style dataset: its ``labels`` or ``targets``, else read item by item."""
    labels = getattr(dataset, "labels", None)
    if labels is None:
        labels = getattr(dataset, "targets", None)
    if labels is None:
        labels = [dataset[i][1] for i in range(len(dataset))]
    return torch.as_tensor(labels, dtype=torch.int64)
