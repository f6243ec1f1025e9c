"""Datasets in their official formats, loaded whole into memory, and fast in-memory batching.

Example:
    >>> from filterprune.data import load_dataset, make_loaders
    >>> ds = load_dataset("fashion-mnist-sample")  # bundled, no download needed
    >>> train, test = make_loaders(ds, batch_size=128, eval_batch_size=512, seed=0)
"""

from filterprune.data.datasets import (
    DATASETS,
    DatasetSpec,
    ImageDataset,
    list_datasets,
    load_dataset,
)
from filterprune.data.loader import BatchLoader, make_loaders, sample_images

__all__ = [
    "DATASETS",
    "BatchLoader",
    "DatasetSpec",
    "ImageDataset",
    "list_datasets",
    "load_dataset",
    "make_loaders",
    "sample_images",
]
