"""Batch iteration over uint8 image tensors held in memory, with vectorised augmentation.

Every step works on a whole batch at once: the uint8 images of a batch are gathered by index,
optionally augmented (random crop with zero padding, random horizontal flip), converted to float
once and normalised per channel. Random draws come from a ``torch.Generator`` on the CPU (small
index tensors, then moved to the data's device), so a seed gives the same batches everywhere.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Subset

from filterprune.data.augment import augment
from filterprune.data.datasets import ImageDataset
from filterprune.data.stream import StreamedDataset, StreamLoader
from filterprune.errors import FilterpruneError

__all__ = ["BatchLoader", "make_loaders", "sample_images"]


class BatchLoader:
    """Iterates (images float32 (B, C, H, W) normalised, labels int64 (B,)) over uint8 tensors.

    Each pass (epoch) visits every sample once, in order or in a fresh random permutation.
    Images are normalised as ``(x / 255 - mean) / std`` per channel. With ``augment``, each
    image is first randomly cropped back to (H, W) from its zero-padded version (a shift of
    up to ``pad`` pixels in each direction) and, if ``flip``, mirrored left-right with
    probability 1/2.

    Args:
        images: uint8 tensor (N, C, H, W), pixel values 0..255.
        labels: int64 tensor (N,).
        batch_size: Samples per batch, >= 1.
        mean: Per-channel mean in [0, 1] pixel units, length C.
        std: Per-channel standard deviation in [0, 1] pixel units, length C, all > 0.
        shuffle: Draw a new random order every epoch.
        augment: Apply random crop and (if ``flip``) random horizontal flip.
        pad: Zero padding in pixels for the random crop, >= 0.
        flip: With ``augment``, flip each image horizontally with probability 1/2.
        drop_last: Drop the final batch if it holds fewer than ``batch_size`` samples.
        generator: CPU generator for shuffling and augmentation; None uses torch's global RNG.
        device: Device the data is moved to and batches are produced on.
        rank: With ``world_size`` > 1, this process's share of each epoch: the first
            ``N - N % world_size`` samples of the epoch's order, every ``world_size``-th from
            ``rank`` on. All ranks use the same seed, so the shares are disjoint.
        world_size: Number of processes sharing each epoch.

    Raises:
        FilterpruneError: Wrong dtypes or shapes, mismatched lengths, ``batch_size`` < 1,
            ``pad`` < 0, or ``mean`` / ``std`` not of length C or ``std`` not positive.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        shuffle: bool = False,
        augment: bool = False,
        pad: int = 4,
        flip: bool = True,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
        device: str | torch.device = "cpu",
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise FilterpruneError(
                f"images must be a uint8 tensor (N, C, H, W), got {images.dtype} "
                f"{tuple(images.shape)}"
            )
        if labels.dtype != torch.int64 or labels.shape != images.shape[:1]:
            raise FilterpruneError(
                f"labels must be an int64 tensor ({images.shape[0]},), got {labels.dtype} "
                f"{tuple(labels.shape)}"
            )
        if batch_size < 1:
            raise FilterpruneError(f"batch size must be >= 1, got {batch_size}")
        if pad < 0:
            raise FilterpruneError(f"crop padding must be >= 0, got {pad}")
        channels = images.shape[1]
        if len(mean) != channels or len(std) != channels or min(std) <= 0:
            raise FilterpruneError(
                f"mean and std need {channels} values (std > 0), got {tuple(mean)} / {tuple(std)}"
            )
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.pad = pad
        self.flip = flip
        self.drop_last = drop_last
        self.generator = generator
        self.rank, self.world_size = rank, world_size
        mean_t = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        # (x / 255 - mean) / std == x * scale - shift
        self._scale = 1.0 / (255.0 * std_t)
        self._shift = mean_t / std_t

    @property
    def num_samples(self) -> int:
        """Number of samples the loader iterates over per epoch (this rank's share of N)."""
        return self.labels.shape[0] // self.world_size

    def __len__(self) -> int:
        """Number of batches per epoch."""
        n = self.num_samples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield one epoch of (images float32 (B, C, H, W), labels int64 (B,)) on ``device``."""
        n = self.labels.shape[0]
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator).to(self.device)
        else:
            order = torch.arange(n, device=self.device)
        if self.world_size > 1:
            order = order[: n - n % self.world_size][self.rank :: self.world_size]
        for i in range(len(self)):
            index = order[i * self.batch_size : (i + 1) * self.batch_size]
            images = self.images[index]
            if self.augment:
                images = augment(images, self.pad, self.flip, self.generator)
            yield images.float().mul_(self._scale).sub_(self._shift), self.labels[index]


def make_loaders(
    dataset: ImageDataset | StreamedDataset,
    batch_size: int,
    eval_batch_size: int,
    *,
    seed: int,
    device: str | torch.device = "cpu",
    train_subset: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    workers: int = 0,
) -> tuple[BatchLoader | StreamLoader, BatchLoader | StreamLoader]:
    """Build the training and test loaders of a dataset.

    The training loader shuffles every epoch and augments if ``dataset.augment`` (crop with
    zero padding 4, horizontal flip); its last batch is dropped only when it would hold a single
    sample, which BatchNorm cannot normalise in training mode. The test loader keeps the file
    order, does not augment and keeps every sample. A dataset held in memory gives
    :class:`BatchLoader` s; a streamed one, :class:`~filterprune.data.stream.StreamLoader` s that
    read it with ``workers`` DataLoader workers.

    Args:
        dataset: The dataset.
        batch_size: Training batch size, >= 1.
        eval_batch_size: Test batch size, >= 1.
        seed: Seeds the generator used for the subset draw, shuffling and augmentation.
        device: Device the data is moved to and batches are produced on.
        train_subset: If given, train on this many training samples drawn at random (seeded).
        rank: This process's rank when ``world_size`` processes train together: the training
            loader yields its share of each epoch (``BatchLoader``) in batches of
            ``batch_size // world_size`` (at least 1), so a step of all ranks covers
            ``batch_size`` samples. The test loader is whole on every rank.
        world_size: Number of processes training together.
        workers: DataLoader worker processes of a streamed dataset.

    Returns:
        (train loader, test loader).

    Raises:
        FilterpruneError: ``train_subset`` not in [1, N], or invalid batch sizes.
    """
    generator = torch.Generator().manual_seed(seed)
    streamed = isinstance(dataset, StreamedDataset)
    n = len(dataset.train) if streamed else dataset.train_labels.shape[0]
    keep = None
    if train_subset is not None:
        if not 1 <= train_subset <= n:
            raise FilterpruneError(
                f"train subset must be in [1, {n}] for {dataset.name}, got {train_subset}"
            )
        keep = torch.randperm(n, generator=generator)[:train_subset].sort().values
        n = train_subset
    batch_size = max(1, batch_size // world_size)
    options = dict(
        mean=dataset.mean, std=dataset.std, shuffle=True, augment=dataset.augment,
        drop_last=n // world_size > batch_size > 1 and n // world_size % batch_size == 1,
        generator=generator, device=device, rank=rank, world_size=world_size,
    )
    if streamed:
        train_set = dataset.train if keep is None else Subset(dataset.train, keep.tolist())
        return (
            StreamLoader(train_set, batch_size, workers=workers, **options),
            StreamLoader(dataset.test, eval_batch_size, mean=dataset.mean, std=dataset.std,
                         device=device, workers=workers),
        )
    images, labels = dataset.train_images, dataset.train_labels
    if keep is not None:
        images, labels = images[keep], labels[keep]
    train = BatchLoader(images, labels, batch_size, **options)
    test = BatchLoader(
        dataset.test_images,
        dataset.test_labels,
        eval_batch_size,
        mean=dataset.mean,
        std=dataset.std,
        device=device,
    )
    return train, test


def sample_images(
    dataset: ImageDataset | StreamedDataset, count: int, batch_size: int, seed: int,
    device: torch.device | str = "cpu",
) -> Iterator[torch.Tensor]:
    """``count`` training images drawn at random (seeded), normalised as for training but not
    augmented: float32 batches (B, C, H, W) of at most ``batch_size``, in index order (e.g. the
    images activation statistics or feature maps are computed on).

    Raises:
        FilterpruneError: ``count`` is not in [1, number of training images].
    """
    generator = torch.Generator().manual_seed(seed)
    streamed = isinstance(dataset, StreamedDataset)
    n = len(dataset.train) if streamed else len(dataset.train_labels)
    if not 1 <= count <= n:
        raise FilterpruneError(f"asked for {count} training images of {dataset.name}, which has "
                               f"{n}")
    keep = torch.randperm(n, generator=generator)[:count].sort().values
    if streamed:
        loader = StreamLoader(Subset(dataset.train, keep.tolist()), batch_size,
                              mean=dataset.mean, std=dataset.std, device=device)
    else:
        loader = BatchLoader(dataset.train_images[keep], dataset.train_labels[keep], batch_size,
                             mean=dataset.mean, std=dataset.std, device=device)
    return (images for images, _ in loader)
