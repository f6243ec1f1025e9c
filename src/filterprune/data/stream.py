"""Datasets that do not fit in memory: read by ``torch.utils.data.DataLoader`` workers.

:class:`StreamLoader` yields the same batches as :class:`~filterprune.data.loader.BatchLoader`
(float32 images, int64 labels, on the device) from any map-style dataset: an image folder too
large to hold (``filterprune.data.imagefolder.FolderImages``, decoded on the fly), or a dataset
of the user's own (``data.name: package.module:callable``, :func:`load_user_datasets`). Items of
uint8 images are
augmented and normalised a batch at a time like the in-memory datasets; float images are taken
as the user's own transforms made them.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, Dataset

from filterprune.data.augment import augment
from filterprune.errors import FilterpruneError

__all__ = ["StreamLoader", "StreamedDataset", "load_user_datasets"]


@dataclass
class StreamedDataset:
    """A labelled dataset read from disk as it is used, split by split.

    Attributes:
        name: dataset name.
        train: map-style dataset of ``(image (C, H, W), label)``; uint8 images are normalised
            with ``mean``/``std`` (and augmented if ``augment``), float images taken as they are.
        test: the same for the test split.
        classes: class names in label order.
        mean, std: per-channel statistics in [0, 1] pixel units (uint8 images only).
        augment: random crop (zero padding 4) and horizontal flip for uint8 training images.
        image_shape: (C, H, W) of every image.
    """

    name: str
    train: Dataset = field(repr=False)
    test: Dataset = field(repr=False)
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool
    image_shape: tuple[int, int, int]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return self.image_shape[0]

    @property
    def image_size(self) -> int:
        return self.image_shape[1]


def _collate(items: list) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*items, strict=True)
    return torch.stack([torch.as_tensor(x) for x in images]), torch.as_tensor(labels)


class StreamLoader:
    """Batches of (images float32 (B, C, H, W), labels int64 (B,)) from a map-style dataset.

    Each pass visits every item once, in order or in a fresh seeded permutation; with
    ``world_size`` > 1 each rank reads every ``world_size``-th item of the order (disjoint
    shares, as :class:`~filterprune.data.loader.BatchLoader`). Items are read by ``workers``
    DataLoader worker processes (0: in this process).

    Args:
        dataset: map-style dataset of ``(image (C, H, W), label)``.
        batch_size: items per batch, >= 1.
        mean, std: per-channel normalisation of uint8 images, in [0, 1] pixel units.
        shuffle: a new random order every pass.
        augment: random crop (zero padding ``pad``) and horizontal flip of uint8 images.
        pad: crop padding in pixels.
        drop_last: drop a final batch smaller than ``batch_size``.
        generator: CPU generator for the order and the augmentation.
        device: where batches are produced.
        rank, world_size: this process's share of each pass.
        workers: DataLoader worker processes.

    Raises:
        FilterpruneError: ``batch_size`` < 1 or ``workers`` < 0.
    """

    def __init__(
        self, dataset: Dataset, batch_size: int, *, mean: Sequence[float],
        std: Sequence[float], shuffle: bool = False, augment: bool = False, pad: int = 4,
        drop_last: bool = False, generator: torch.Generator | None = None,
        device: str | torch.device = "cpu", rank: int = 0, world_size: int = 1,
        workers: int = 0,
    ) -> None:
        if batch_size < 1:
            raise FilterpruneError(f"batch size must be >= 1, got {batch_size}")
        if workers < 0:
            raise FilterpruneError(f"data workers must be >= 0, got {workers}")
        self.dataset, self.batch_size, self.shuffle = dataset, batch_size, shuffle
        self.augment, self.pad, self.drop_last = augment, pad, drop_last
        self.generator = generator or torch.Generator().manual_seed(0)
        self.device = torch.device(device)
        self.rank, self.world_size, self.workers = rank, world_size, workers
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)

    @property
    def num_samples(self) -> int:
        """Items per pass on this rank."""
        return len(self.dataset) // self.world_size

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.dataset)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        if self.world_size > 1:
            order = order[: n - n % self.world_size][self.rank :: self.world_size]
        reader = DataLoader(
            self.dataset, batch_size=self.batch_size, sampler=order.tolist(),
            num_workers=self.workers, collate_fn=_collate, drop_last=self.drop_last,
            pin_memory=self.device.type == "cuda", persistent_workers=False,
        )
        for images, labels in reader:
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, torch.int64, non_blocking=True)
            if images.dtype == torch.uint8:
                if self.augment:
                    images = augment(images, self.pad, True, self.generator)
                images = (images.float() / 255 - self._mean) / self._std
            yield images, labels


def load_user_datasets(spec: str) -> StreamedDataset:
    """Calls ``package.module:callable`` for the user's own (train, test) datasets.

    The callable takes no arguments and returns two map-style datasets of ``(image (C, H, W),
    label)``, images already transformed as the model takes them (float), or uint8 (then
    normalised with mean 0.5, std 0.5 per channel). The classes are the train dataset's
    ``classes`` attribute if it has one, else ``0..max(label)`` of its ``targets`` or items.

    Raises:
        FilterpruneError: the module does not import, the callable is missing or fails, or it
            does not return two non-empty datasets of (image (C, H, W), label) items.
    """
    module, _, name = spec.partition(":")
    try:
        builder = getattr(importlib.import_module(module), name)
    except Exception as e:  # the user's module may raise anything while importing
        raise FilterpruneError(f"cannot load dataset {spec!r}: {e}") from e
    try:
        splits = builder()
    except Exception as e:  # the user's callable may raise anything
        raise FilterpruneError(f"dataset builder {spec!r} failed: {e}") from e
    if not (isinstance(splits, tuple | list) and len(splits) == 2
            and all(hasattr(s, "__getitem__") and hasattr(s, "__len__") for s in splits)):
        raise FilterpruneError(f"{spec!r} must return (train, test) map-style datasets")
    train, test = splits
    if not len(train) or not len(test):
        raise FilterpruneError(f"{spec!r} returned an empty split")
    image, _ = train[0]
    image = torch.as_tensor(image)
    if image.dim() != 3 or image.shape[1] != image.shape[2]:
        raise FilterpruneError(
            f"{spec!r}: items must be (image (C, H, W) with H == W, label), got an image of "
            f"shape {tuple(image.shape)}"
        )
    classes = getattr(train, "classes", None)
    if classes is None:
        targets = getattr(train, "targets", None)
        if targets is None:
            targets = [train[i][1] for i in range(len(train))]
        classes = [str(c) for c in range(int(max(targets)) + 1)]
    channels = image.shape[0]
    return StreamedDataset(
        name=spec, train=train, test=test, classes=tuple(map(str, classes)),
        mean=(0.5,) * channels, std=(0.5,) * channels, augment=False,
        image_shape=tuple(image.shape),
    )
