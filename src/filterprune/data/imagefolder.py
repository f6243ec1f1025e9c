"""Image-folder datasets in the ImageNet layout: ``<root>/train/<class>/<image>`` and
``<root>/val/<class>/<image>``, one sub-folder per class (class names sorted = label order).

Images (JPEG, PNG, BMP, WebP, GIF; any mode, converted to RGB) are decoded with Pillow, their
shorter side resized to ``image_size`` (bilinear) and centre-cropped to ``image_size`` x
``image_size``, and held whole in memory as uint8 tensors like the other datasets, so the same
loaders batch, augment (random crop with zero padding 4, horizontal flip) and normalise them
(ImageNet mean and std).

Memory: 3 x image_size^2 bytes per image, 150 KB at 224 px. That suits small folders (a few
thousand to some tens of thousands of images: 50,000 images take 7.5 GB); the full ImageNet
training set (1.28 M images, 193 GB at 224 px) does NOT fit, and this loader does not stream.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from filterprune.data.datasets import ImageDataset
from filterprune.errors import FilterpruneError

IMAGE_FOLDER = "imagefolder"
SPLITS = ("train", "val")
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_image_folder(root: str | Path | None, image_size: int = 224) -> ImageDataset:
    """Reads an ImageNet-style folder of images into memory.

    Args:
        root: the folder holding ``train/`` and ``val/``.
        image_size: side in pixels of the square images after resize and centre crop.

    Returns:
        The dataset: ``train`` is the training split, ``val`` the test split; images uint8
        (N, 3, image_size, image_size), labels int64 (N,) indexing the sorted class folders of
        ``train``.

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
    splits = {split: _read_split(root / split, classes, image_size) for split in SPLITS}
    (train_images, train_labels), (test_images, test_labels) = splits["train"], splits["val"]
    counts = torch.bincount(train_labels, minlength=len(classes)).tolist()
    empty = [name for name, count in zip(classes, counts, strict=True) if count == 0]
    if empty:
        raise FilterpruneError(
            f"image folder {root}: class folder 'train/{empty[0]}' holds no images "
            f"({', '.join(EXTENSIONS)}); a class without training images cannot be learnt: "
            "remove the folder or add images"
        )
    return ImageDataset(
        name=IMAGE_FOLDER, train_images=train_images, train_labels=train_labels,
        test_images=test_images, test_labels=test_labels, classes=tuple(classes),
        mean=IMAGENET_MEAN, std=IMAGENET_STD, augment=True,
    )


def _read_split(
    folder: Path, classes: list[str], image_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, S, S) uint8 and labels (N,) int64 of one split, in sorted file order."""
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
