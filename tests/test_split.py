"""The validation split: held out of the training set, stratified, seeded."""

import pytest
import torch
from torch.utils.data import TensorDataset

from filterprune.data import load_dataset
from filterprune.data.split import stratified_holdout, validation_split
from filterprune.data.stream import StreamedDataset
from filterprune.errors import FilterpruneError


def test_every_class_gives_the_same_share_and_the_parts_cover_the_set_once():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    kept, held = stratified_holdout(labels, 0.1, seed=0)
    assert torch.bincount(labels[held]).tolist() == [5, 3, 2]
    assert torch.equal(torch.cat([kept, held]).sort().values, torch.arange(100))
    assert torch.equal(held, held.sort().values)


def test_the_split_depends_on_the_seed_only():
    labels = torch.arange(200) % 4
    first = stratified_holdout(labels, 0.25, seed=3)[1]
    assert torch.equal(first, stratified_holdout(labels, 0.25, seed=3)[1])
    assert not torch.equal(first, stratified_holdout(labels, 0.25, seed=4)[1])


def test_a_small_class_keeps_one_image_on_each_side():
    kept, held = stratified_holdout(torch.tensor([0, 0, 1, 1, 1, 1]), 0.9, seed=0)
    assert torch.bincount(torch.tensor([0, 0, 1, 1, 1, 1])[kept]).tolist() == [1, 1]
    assert len(held) == 4


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_a_fraction_outside_the_open_interval_is_refused(fraction):
    with pytest.raises(FilterpruneError, match="validation fraction"):
        stratified_holdout(torch.tensor([0, 0, 1, 1]), fraction, seed=0)


def test_a_class_of_one_image_cannot_be_split():
    with pytest.raises(FilterpruneError, match="class 1 has 1 training image"):
        stratified_holdout(torch.tensor([0, 0, 1]), 0.5, seed=0)


def test_the_validation_split_holds_training_images_only_and_fit_keeps_the_test_split():
    dataset = load_dataset("fashion-mnist-sample")
    fit, val = validation_split(dataset, 0.1, seed=0)
    n = len(dataset.train_labels)
    assert len(fit.train_labels) + len(val.test_labels) == n
    assert torch.equal(val.train_labels, fit.train_labels)
    assert len(val.test_labels) == pytest.approx(n / 10, abs=dataset.num_classes)
    rows = {tuple(row.flatten()[::7].tolist()) for row in dataset.train_images}
    assert all(tuple(row.flatten()[::7].tolist()) in rows for row in val.test_images[:50])
    fitted = {tuple(row.flatten()[::7].tolist()) for row in fit.train_images}
    assert not any(tuple(row.flatten()[::7].tolist()) in fitted for row in val.test_images[:50])
    assert torch.equal(fit.test_labels, dataset.test_labels)


def test_a_streamed_dataset_splits_the_same_way():
    dataset = load_dataset("fashion-mnist-sample")
    streamed = StreamedDataset(
        name="s", train=TensorDataset(dataset.train_images, dataset.train_labels),
        test=TensorDataset(dataset.test_images, dataset.test_labels), classes=dataset.classes,
        mean=(0.5,), std=(0.5,), augment=False, image_shape=tuple(dataset.train_images.shape[1:]),
    )
    fit, val = validation_split(streamed, 0.1, seed=0)
    memory_fit, memory_val = validation_split(dataset, 0.1, seed=0)
    assert len(fit.train) == len(memory_fit.train_labels)
    assert torch.equal(torch.stack([val.test[i][1] for i in range(len(val.test))]),
                       memory_val.test_labels)
    assert fit.test is streamed.test
