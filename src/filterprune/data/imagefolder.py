"""Image-folder datasets in the ImageNet layout: ``<root>/train/<class>/<image>`` and
``<root>/val/<class>/<image>``, one sub-folder per class (class names sorted = label order).

Images (JPEG, PNG, BMP, WebP, GIF; any mode, converted to RGB) are decoded with Pillow, their
shorter side resized to ``image_size`` (bilinear) and centre-cropped to ``image_size`` x
``image_size``; batches are augmented (random crop with zero padding 4, horizontal flip) and
normalised (ImageNet mean and std) like the other datasets.

Memory: held whole in memory, a folder takes 3 x image_size^2 bytes per image (150 KB at 224 px;
50,000 images take 7.5 GB; the ImageNet training set, 1.28 M images, 193 GB). A folder larger
than a quarter of this machine's memory (or any folder with ``stream=True``) is therefore
streamed instead: its images are decoded when read, by DataLoader workers
(:class:`~filterprune.data.stream.StreamLoader`).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from filterprune.data.datasets import ImageDataset
from filterprune.data.stream import StreamedDataset
from filterprune.errors import FilterpruneError

IMAGE_FOLDER = "imagefolder"
SPLITS = ("train", "val")
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def memory_budget() -> int:
    """Bytes an image folder may take in memory: a quarter of this machine's physical memory."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4


class FolderImages(Dataset):
    """Image files decoded when read: ``(uint8 (3, S, S), label)`` per item.

    Args:
        paths: the image files.
        labels: one class index per file.
        image_size: side S in pixels after the shorter side is resized and the centre cropped.
    """

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], image_size: int) -> None:
        self.paths, self.labels, self.image_size = list(paths), list(labels), image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.tensor(_decode(self.paths[i], self.image_size)), self.labels[i]


def load_image_folder(
    root: str | Path | None, image_size: int = 224, *, stream: bool | None = None
) -> ImageDataset | StreamedDataset:
    """Reads an ImageNet-style folder of images, into memory or as a stream.

    Args:
        root: the folder holding ``train/`` and ``val/``.
        image_size: side in pixels of the square images after resize and centre crop.
        stream: True: decode images when read; False: into memory; None: stream when the
            decoded images would take more than :func:`memory_budget`.

    Returns:
        The dataset: ``train`` is the training split, ``val`` the test split; images uint8
        (N, 3, image_size, image_size), labels int64 (N,) indexing the sorted class folders of
        ``train``. Streamed, the splits are :class:`FolderImages`.

    Raises:
        FilterpruneError: no root given, a missing split folder, no class folders in ``train``,
            a class folder in ``train`` without images, a ``val`` class that ``train`` lacks, a
            split without images, or an image Pillow cannot read.
    """
    if root is None:
        raise FilterpruneError(f"dataset '{IMAGE_FOLDER}' needs data.data_dir (or --data-dir)")
    root = Path(root).expanduser()
    for split in SPLITS:
        if not (root / split).is_dir():
            raise FilterpruneError(
                f"image folder {root}: missing split folder '{split}' "
                f"(expected {root}/train/<class>/... and {root}/val/<class>/...)"
            )
    classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
    if not classes:
        raise FilterpruneError(f"image folder {root}: no class folders in {root / 'train'}")
    files = {split: _list_split(root / split, classes) for split in SPLITS}
    counts = Counter(files["train"][1])
    empty = [name for label, name in enumerate(classes) if counts[label] == 0]
    if empty:
        raise FilterpruneError(
            f"image folder {root}: class folder 'train/{empty[0]}' holds no images "
            f"({', '.join(EXTENSIONS)}); a class without training images cannot be learnt: "
            "remove the folder or add images"
        )
    count = sum(len(paths) for paths, _ in files.values())
    if stream or (stream is None and count * 3 * image_size**2 > memory_budget()):
        train, test = (FolderImages(*files[split], image_size) for split in SPLITS)
        return StreamedDataset(
            name=IMAGE_FOLDER, train=train, test=test, classes=tuple(classes),
            mean=IMAGENET_MEAN, std=IMAGENET_STD, augment=True,
            image_shape=(3, image_size, image_size),
        )
    (train_images, train_labels), (test_images, test_labels) = (
        _read(*files[split], image_size) for split in SPLITS
    )
    return ImageDataset(
        name=IMAGE_FOLDER, train_images=train_images, train_labels=train_labels,
        test_images=test_images, test_labels=test_labels, classes=tuple(classes),
        mean=IMAGENET_MEAN, std=IMAGENET_STD, augment=True,
    )


def _list_split(folder: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    """The image files of one split and their labels, in sorted file order."""
    unknown = sorted(d.name for d in folder.iterdir() if d.is_dir() and d.name not in classes)
    if unknown:
        raise FilterpruneError(
            f"image folder {folder}: class folder '{unknown[0]}' is not in the train split"
        )
    paths, labels = [], []
    for label, name in enumerate(classes):
        if (folder / name).is_dir():
            found = sorted(p for p in (folder / name).iterdir()
                           if p.is_file() and p.suffix.lower() in EXTENSIONS)
            paths += found
            labels += [label] * len(found)
    if not paths:
        raise FilterpruneError(
            f"image folder {folder}: no images ({', '.join(EXTENSIONS)}) in its class folders"
        )
    return paths, labels


def _read(
    paths: list[Path], labels: list[int], image_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, S, S) uint8 and labels (N,) int64, decoded into memory."""
    images = np.empty((len(paths), 3, image_size, image_size), dtype=np.uint8)
    for i, path in enumerate(paths):
        images[i] = _decode(path, image_size)
    return torch.from_numpy(images), torch.tensor(labels, dtype=torch.int64)


def _decode(path: Path, size: int) -> np.ndarray:
    """One image as uint8 (3, size, size): shorter side resized to ``size``, centre-cropped."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            width, height = image.size
            scale = size / min(width, height)
            resized = (max(size, round(width * scale)), max(size, round(height * scale)))
            image = image.resize(resized, Image.Resampling.BILINEAR)
            left, top = (resized[0] - size) // 2, (resized[1] - size) // 2
            image = image.crop((left, top, left + size, top + size))
            return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise FilterpruneError(f"cannot read image {path}: {e}") from None
