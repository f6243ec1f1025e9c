"""Streamed datasets: the same batches as the in-memory path, read by DataLoader workers."""

import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from filterprune.data import load_dataset, make_loaders, sample_images
from filterprune.data.imagefolder import load_image_folder
from filterprune.data.stream import StreamedDataset, StreamLoader, load_user_datasets
from filterprune.errors import FilterpruneError


class Items(torch.utils.data.Dataset):
    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


def streamed(dataset) -> StreamedDataset:
    return StreamedDataset(
        name=dataset.name, train=Items(dataset.train_images, dataset.train_labels),
        test=Items(dataset.test_images, dataset.test_labels), classes=dataset.classes,
        mean=dataset.mean, std=dataset.std, augment=dataset.augment,
        image_shape=tuple(dataset.train_images.shape[1:]),
    )


@pytest.fixture(scope="module")
def small():
    full = load_dataset("fashion-mnist-sample")
    return type(full)(**{**full.__dict__, "train_images": full.train_images[:300],
                         "train_labels": full.train_labels[:300], "augment": True})


@pytest.mark.parametrize("workers", [0, 2])
def test_a_streamed_dataset_gives_the_in_memory_batches_augmentation_included(small, workers):
    memory = make_loaders(small, 64, 100, seed=3, train_subset=250)
    stream = make_loaders(streamed(small), 64, 100, seed=3, train_subset=250, workers=workers)
    assert isinstance(stream[0], StreamLoader)
    for a, b in zip(memory, stream, strict=True):
        assert len(a) == len(b) and a.num_samples == b.num_samples
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert torch.equal(ya, yb)
            torch.testing.assert_close(xa, xb)


def test_ranks_read_disjoint_shares_of_each_pass(small):
    shares = [make_loaders(streamed(small), 20, 100, seed=0, rank=r, world_size=2)[0]
              for r in (0, 1)]
    seen = [torch.cat([y for _, y in loader]) for loader in shares]
    assert len(seen[0]) == len(seen[1]) == 150


def test_sample_images_streams_the_same_images(small):
    memory = torch.cat(list(sample_images(small, 40, 16, seed=1)))
    stream = torch.cat(list(sample_images(streamed(small), 40, 16, seed=1)))
    torch.testing.assert_close(memory, stream)
    n = len(small.train_labels)
    for dataset in (small, streamed(small)):
        with pytest.raises(FilterpruneError, match=f"asked for {n + 1} training images"):
            sample_images(dataset, n + 1, 16, seed=1)


def test_an_image_folder_streams_the_images_it_would_hold(tmp_path):
    for split in ("train", "val"):
        for name, color in (("a", 30), ("b", 200)):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(3):
                pixels = np.full((20 + i, 24, 3), color + i, np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / name / f"{i}.png")
    held = load_image_folder(tmp_path, image_size=16, stream=False)
    stream = load_image_folder(tmp_path, image_size=16, stream=True)
    assert isinstance(stream, StreamedDataset) and stream.classes == held.classes
    images = torch.stack([stream.test[i][0] for i in range(len(stream.test))])
    assert torch.equal(images, held.test_images)
    assert [stream.train[i][1] for i in range(6)] == held.train_labels.tolist()


@pytest.fixture
def user_data(tmp_path, monkeypatch):
    (tmp_path / "mydata.py").write_text(textwrap.dedent("""
        import torch
        from torch.utils.data import TensorDataset

        def splits():
            x = torch.randn(12, 3, 8, 8)
            y = torch.arange(12) % 4
            return TensorDataset(x, y), TensorDataset(x[:4], y[:4])

        def empty():
            return TensorDataset(torch.zeros(0, 3, 8, 8), torch.zeros(0)), []

        def one():
            return 5
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("mydata", None)


def test_a_users_datasets_load_through_an_import_path(user_data):
    dataset = load_user_datasets("mydata:splits")
    assert dataset.num_classes == 4 and dataset.image_shape == (3, 8, 8)
    train, test = make_loaders(dataset, 5, 4, seed=0)
    images, labels = next(iter(test))
    raw = torch.stack([dataset.test[i][0] for i in range(4)])
    assert torch.equal(images, raw)  # float images are taken as the user's transforms made them
    assert labels.tolist() == [0, 1, 2, 3]
    assert sum(len(y) for _, y in train) == 12


@pytest.mark.parametrize("spec, message", [
    ("mydata:one", "must return \\(train, test\\)"),
    ("mydata:empty", "returned an empty split"),
    ("mydata:nothing", "cannot load dataset"),
    ("no_such_data_module:splits", "cannot load dataset"),
])
def test_a_user_dataset_that_is_not_two_datasets_is_one_clear_error(user_data, spec, message):
    with pytest.raises(FilterpruneError, match=message):
        load_user_datasets(spec)
