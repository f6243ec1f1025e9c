"""Tests for filterprune.data: dataset files, downloads, safety checks and batching."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from _idx import write_idx

from filterprune.data import (
    DATASETS,
    BatchLoader,
    ImageDataset,
    list_datasets,
    load_dataset,
    make_loaders,
)
from filterprune.data import datasets as datasets_module
from filterprune.errors import FilterpruneError

IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


# --------------------------------------------------------------------------- file builders


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _make_idx_dir(root: Path, compress: bool = True) -> dict[str, np.ndarray]:
    """Write the four (Fashion-)MNIST idx files with 7 train and 5 test 28x28 images."""
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (7, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, 7, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, 5, dtype=np.uint8),
    }
    root.mkdir(parents=True, exist_ok=True)
    for key, base in IDX_NAMES.items():
        write_idx(root / (base + ".gz" if compress else base), arrays[key], compress)
    return arrays


def _cifar_batch(rng: np.random.Generator, n: int, label_key: bytes, classes: int) -> dict:
    return {
        b"batch_label": b"testing batch",
        label_key: [int(v) for v in rng.integers(0, classes, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _make_cifar_archive(root: Path, kind: str) -> dict[str, object]:
    """Write a tiny cifar-10/100 python archive (pickle protocol 2, bytes keys) into ``root``.

    Returns:
        Batches by member name, plus "classes" (the class names) and "archive" (its path).
    """
    rng = np.random.default_rng(1)
    if kind == "cifar10":
        folder, archive_name = "cifar-10-batches-py", "cifar-10-python.tar.gz"
        label_key, classes = b"labels", [f"class{i}" for i in range(10)]
        batches = {f"data_batch_{i}": _cifar_batch(rng, 3, label_key, 10) for i in range(1, 6)}
        batches["test_batch"] = _cifar_batch(rng, 4, label_key, 10)
        meta_name, meta = "batches.meta", {b"label_names": [c.encode() for c in classes]}
    else:
        folder, archive_name = "cifar-100-python", "cifar-100-python.tar.gz"
        label_key, classes = b"fine_labels", [f"fine{i}" for i in range(100)]
        batches = {
            "train": _cifar_batch(rng, 6, label_key, 100),
            "test": _cifar_batch(rng, 4, label_key, 100),
        }
        meta_name = "meta"
        meta = {
            b"fine_label_names": [c.encode() for c in classes],
            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
        }
    root.mkdir(parents=True, exist_ok=True)
    archive = root / archive_name
    with tarfile.open(archive, "w:gz") as tar:
        for name, obj in {**batches, meta_name: meta}.items():
            _add_bytes(tar, f"{folder}/{name}", pickle.dumps(obj, protocol=2))
    train_names = [name for name in batches if name not in ("test_batch", "test")]
    test_names = [name for name in batches if name in ("test_batch", "test")]
    return {
        **batches,
        "classes": classes,
        "archive": archive,
        "folder": folder,
        "label_key": label_key,
        "train_names": train_names,
        "test_names": test_names,
    }


def _file_url(directory: Path) -> str:
    return directory.as_uri() + "/"


def _spec(name: str, mirror: Path, **changes) -> datasets_module.DatasetSpec:
    """A copy of a built-in spec downloading from ``mirror`` with the md5s of its files."""
    files = {f: _md5(mirror / f) for f in DATASETS[name].files}
    return dataclasses.replace(
        DATASETS[name], base_url=_file_url(mirror), files=files, search_dirs=(), **changes
    )


# --------------------------------------------------------------------------- names


def test_list_datasets_names_all_five():
    assert set(list_datasets()) == {
        "fashion-mnist",
        "fashion-mnist-sample",
        "mnist",
        "cifar10",
        "cifar100",
    }


def test_unknown_dataset_lists_known_names():
    with pytest.raises(FilterpruneError, match=r"unknown dataset 'imagenet'.*cifar10"):
        load_dataset("imagenet")


# --------------------------------------------------------------------------- local files


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("name", ["fashion-mnist", "mnist"])
def test_idx_local_dir_round_trip(tmp_path, name, compress):
    arrays = _make_idx_dir(tmp_path, compress)
    ds = load_dataset(name, tmp_path)
    assert isinstance(ds, ImageDataset)
    assert ds.name == name
    assert ds.train_images.shape == (7, 1, 28, 28) and ds.train_images.dtype == torch.uint8
    assert ds.test_images.shape == (5, 1, 28, 28) and ds.test_images.dtype == torch.uint8
    assert ds.train_labels.dtype == torch.int64 and ds.test_labels.dtype == torch.int64
    np.testing.assert_array_equal(ds.train_images[:, 0].numpy(), arrays["train_images"])
    np.testing.assert_array_equal(ds.test_images[:, 0].numpy(), arrays["test_images"])
    np.testing.assert_array_equal(ds.train_labels.numpy(), arrays["train_labels"])
    np.testing.assert_array_equal(ds.test_labels.numpy(), arrays["test_labels"])
    assert (ds.num_classes, ds.in_channels, ds.image_size) == (10, 1, 28)
    assert not ds.augment
    assert ds.mean == DATASETS[name].mean and ds.std == DATASETS[name].std


def test_fashion_mnist_class_names(tmp_path):
    _make_idx_dir(tmp_path)
    ds = load_dataset("fashion-mnist", tmp_path)
    assert ds.classes[0] == "T-shirt/top" and ds.classes[-1] == "Ankle boot"
    assert ds.mean == (0.2860,) and ds.std == (0.3530,)


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_cifar_local_archive_round_trip(tmp_path, kind):
    made = _make_cifar_archive(tmp_path, kind)
    ds = load_dataset(kind, tmp_path)
    train = [made[name] for name in made["train_names"]]
    test = [made[name] for name in made["test_names"]]
    expect_train = np.concatenate([b[b"data"] for b in train]).reshape(-1, 3, 32, 32)
    expect_test = np.concatenate([b[b"data"] for b in test]).reshape(-1, 3, 32, 32)
    assert ds.train_images.dtype == torch.uint8 and ds.train_labels.dtype == torch.int64
    np.testing.assert_array_equal(ds.train_images.numpy(), expect_train)
    np.testing.assert_array_equal(ds.test_images.numpy(), expect_test)
    label_key = made["label_key"]
    assert ds.train_labels.tolist() == [v for b in train for v in b[label_key]]
    assert ds.test_labels.tolist() == [v for b in test for v in b[label_key]]
    assert list(ds.classes) == made["classes"]
    assert (ds.in_channels, ds.image_size) == (3, 32) and ds.augment
    # The archive was extracted next to it; the folder alone is enough afterwards.
    assert (tmp_path / made["folder"]).is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [made["archive"].name, made["folder"]]
    )
    made["archive"].unlink()
    again = load_dataset(kind, tmp_path)
    assert torch.equal(again.train_images, ds.train_images)


def test_embedded_sample_loads_stratified():
    ds = load_dataset("fashion-mnist-sample")
    assert ds.train_images.shape == (5000, 1, 28, 28)
    assert ds.test_images.shape == (1000, 1, 28, 28)
    assert torch.bincount(ds.train_labels, minlength=10).tolist() == [500] * 10
    assert torch.bincount(ds.test_labels, minlength=10).tolist() == [100] * 10
    assert ds.classes == DATASETS["fashion-mnist"].classes
    assert not ds.augment


def test_embedded_sample_ships_license_and_readme():
    folder = datasets_module.EMBEDDED_DIR / "fashion-mnist-sample"
    assert "Zalando SE" in (folder / "LICENSE").read_text()
    assert (folder / "README.md").is_file()


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists(),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_fashion_mnist_found_in_debian_dir(tmp_path):
    ds = load_dataset("fashion-mnist", cache_dir=tmp_path)
    assert ds.train_images.shape == (60000, 1, 28, 28)
    assert ds.test_images.shape == (10000, 1, 28, 28)


def test_cache_dir_searched_before_system_dirs(tmp_path):
    arrays = _make_idx_dir(tmp_path / "cache" / "fashion-mnist")
    ds = load_dataset("fashion-mnist", cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(ds.train_labels.numpy(), arrays["train_labels"])


def test_env_var_sets_cache_root(tmp_path, monkeypatch):
    arrays = _make_idx_dir(tmp_path / "env" / "mnist")
    monkeypatch.setenv("FILTERPRUNE_DATA", str(tmp_path / "env"))
    spec = dataclasses.replace(DATASETS["mnist"], search_dirs=())
    ds = load_dataset(spec)
    np.testing.assert_array_equal(ds.test_labels.numpy(), arrays["test_labels"])


def test_missing_data_dir_names_path(tmp_path):
    missing = tmp_path / "no-such-dir"
    with pytest.raises(FilterpruneError, match="does not exist") as info:
        load_dataset("mnist", missing)
    assert str(missing) in str(info.value)


def test_data_dir_without_files_names_path(tmp_path):
    with pytest.raises(FilterpruneError, match="no cifar10 data") as info:
        load_dataset("cifar10", tmp_path)
    assert str(tmp_path) in str(info.value)
    assert "cifar-10-python.tar.gz" in str(info.value)


def test_not_found_says_where_it_looked(tmp_path):
    spec = dataclasses.replace(DATASETS["mnist"], search_dirs=(tmp_path / "system",))
    with pytest.raises(FilterpruneError) as info:
        load_dataset(spec, cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert str(tmp_path / "cache" / "mnist") in message and str(tmp_path / "system") in message
    assert "--data-dir" in message and "--download" in message
    assert "\n" not in message


def test_malformed_idx_file_raises(tmp_path):
    _make_idx_dir(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x0d\x01"))
    with pytest.raises(FilterpruneError, match="train-labels-idx1-ubyte.gz"):
        load_dataset("mnist", tmp_path)


def test_image_label_count_mismatch_raises(tmp_path):
    _make_idx_dir(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(3, np.uint8), compress=True)
    with pytest.raises(FilterpruneError, match="5 images"):
        load_dataset("mnist", tmp_path)


# --------------------------------------------------------------------------- downloads


def test_download_idx_via_file_url(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    arrays = _make_idx_dir(mirror)
    spec = _spec("mnist", mirror)
    moves = []
    real_replace = os.replace

    def recording_replace(src, dst):
        moves.append((Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(datasets_module.os, "replace", recording_replace)
    ds = load_dataset(spec, download=True, cache_dir=tmp_path / "cache")
    target = tmp_path / "cache" / "mnist"
    assert sorted(p.name for p in target.iterdir()) == sorted(spec.files)
    for name in spec.files:
        assert (target / name).read_bytes() == (mirror / name).read_bytes()
    # Each file was written to a temporary name in the target dir, then renamed into place.
    assert sorted(dst.name for _, dst in moves) == sorted(spec.files)
    assert all(src.parent == dst.parent == target and src != dst for src, dst in moves)
    np.testing.assert_array_equal(ds.train_images[:, 0].numpy(), arrays["train_images"])
    # A second load uses the cache, even with the mirror gone.
    for path in mirror.iterdir():
        path.unlink()
    assert torch.equal(
        load_dataset(spec, cache_dir=tmp_path / "cache").train_labels, ds.train_labels
    )


def test_download_only_missing_files(tmp_path):
    mirror = tmp_path / "mirror"
    _make_idx_dir(mirror)
    spec = _spec("mnist", mirror)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "train-labels-idx1-ubyte").write_bytes(
        gzip.decompress((mirror / "train-labels-idx1-ubyte.gz").read_bytes())
    )
    load_dataset(spec, data_dir, download=True)
    assert not (data_dir / "train-labels-idx1-ubyte.gz").exists()
    assert (data_dir / "train-images-idx3-ubyte.gz").is_file()


def test_download_cifar10_via_file_url(tmp_path):
    mirror = tmp_path / "mirror"
    made = _make_cifar_archive(mirror, "cifar10")
    spec = _spec("cifar10", mirror)
    ds = load_dataset(spec, download=True, cache_dir=tmp_path / "cache")
    target = tmp_path / "cache" / "cifar10"
    assert sorted(p.name for p in target.iterdir()) == [
        "cifar-10-batches-py",
        "cifar-10-python.tar.gz",
    ]
    assert ds.test_labels.tolist() == made["test_batch"][b"labels"]


@pytest.mark.parametrize("name", ["mnist", "cifar100"])
def test_download_wrong_md5_leaves_nothing(tmp_path, name):
    mirror = tmp_path / "mirror"
    if name == "mnist":
        _make_idx_dir(mirror)
    else:
        _make_cifar_archive(mirror, name)
    spec = _spec(name, mirror)
    bad = next(iter(spec.files))
    spec = dataclasses.replace(spec, files={**spec.files, bad: "0" * 32})
    with pytest.raises(FilterpruneError, match=f"checksum mismatch for {bad}"):
        load_dataset(spec, download=True, cache_dir=tmp_path / "cache")
    target = tmp_path / "cache" / name
    assert not (target / bad).exists()
    assert not [p for p in target.iterdir() if p.name.startswith(".")]


def test_download_failure_raises(tmp_path):
    spec = dataclasses.replace(
        DATASETS["cifar10"], base_url=_file_url(tmp_path / "empty-mirror"), search_dirs=()
    )
    with pytest.raises(FilterpruneError, match="cannot download"):
        load_dataset(spec, download=True, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache" / "cifar10").iterdir()) == []


def test_bundled_sample_is_not_downloadable(tmp_path):
    with pytest.raises(FilterpruneError, match="cannot be downloaded"):
        load_dataset("fashion-mnist-sample", tmp_path, download=True)


# --------------------------------------------------------------------------- safety


class _System:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _OpenForWriting:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.mark.parametrize("payload", ["system", "open"])
def test_malicious_pickle_is_refused(tmp_path, payload):
    data_dir = tmp_path / "data"
    _make_cifar_archive(data_dir, "cifar10")
    load_dataset("cifar10", data_dir)  # extract the archive
    marker = tmp_path / "pwned"
    evil = _System(f"touch {marker}") if payload == "system" else _OpenForWriting(str(marker))
    batch = data_dir / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(pickle.dumps({b"data": evil, b"labels": [0]}, protocol=2))
    with pytest.raises(FilterpruneError, match="forbidden global") as info:
        load_dataset("cifar10", data_dir)
    assert "data_batch_3" in str(info.value)
    assert not marker.exists()


def test_pickle_must_be_a_cifar_batch(tmp_path):
    data_dir = tmp_path / "data"
    _make_cifar_archive(data_dir, "cifar100")
    load_dataset("cifar100", data_dir)
    (data_dir / "cifar-100-python" / "test").write_bytes(pickle.dumps([1, 2], protocol=2))
    with pytest.raises(FilterpruneError, match="does not hold a dict"):
        load_dataset("cifar100", data_dir)


def _hostile_member(kind: str) -> tarfile.TarInfo:
    if kind == "dotdot":
        info = tarfile.TarInfo("cifar-10-batches-py/../../evil")
        info.size = 4
    elif kind == "absolute":
        info = tarfile.TarInfo("/tmp/filterprune-test-evil")
        info.size = 4
    elif kind == "symlink":
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    elif kind == "hardlink":
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.type, info.linkname = tarfile.LNKTYPE, "/etc/passwd"
    else:
        info = tarfile.TarInfo("cifar-10-batches-py/null")
        info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    return info


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink", "device"])
def test_unsafe_tar_member_is_refused(tmp_path, kind):
    data_dir = tmp_path / "sandbox" / "data"
    data_dir.mkdir(parents=True)
    archive = data_dir / "cifar-10-python.tar.gz"
    member = _hostile_member(kind)
    with tarfile.open(archive, "w:gz") as tar:
        _add_bytes(tar, "cifar-10-batches-py/test_batch", b"safe")
        tar.addfile(member, io.BytesIO(b"evil") if member.isfile() else None)
    with pytest.raises(FilterpruneError, match="unsafe member"):
        load_dataset("cifar10", data_dir)
    assert [p.name for p in data_dir.iterdir()] == [archive.name]
    assert sorted(p.name for p in (tmp_path / "sandbox").iterdir()) == ["data"]
    assert not (tmp_path / "evil").exists()


def test_archive_without_expected_folder_is_refused(tmp_path):
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        _add_bytes(tar, "other/test_batch", b"x")
    with pytest.raises(FilterpruneError, match="does not contain the folder"):
        load_dataset("cifar10", tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["cifar-10-python.tar.gz"]


# --------------------------------------------------------------------------- BatchLoader


def _images(n: int, channels: int = 3, size: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)


def _loader(images: torch.Tensor, batch_size: int, **kwargs) -> BatchLoader:
    channels = images.shape[1]
    kwargs.setdefault("mean", (0.0,) * channels)
    kwargs.setdefault("std", (1.0,) * channels)
    return BatchLoader(images, torch.arange(len(images)), batch_size, **kwargs)


def _as_uint8(batch: torch.Tensor) -> torch.Tensor:
    """Undo the identity normalisation (mean 0, std 1) of ``_loader``."""
    return (batch * 255).round().to(torch.uint8)


@pytest.mark.parametrize("shuffle", [False, True])
def test_loader_covers_every_sample_once(shuffle):
    images = _images(10)
    loader = _loader(images, 3, shuffle=shuffle, generator=torch.Generator().manual_seed(0))
    assert len(loader) == 4
    batches = list(loader)
    assert [len(y) for _, y in batches] == [3, 3, 3, 1]
    labels = torch.cat([y for _, y in batches])
    assert sorted(labels.tolist()) == list(range(10))
    if shuffle:
        assert labels.tolist() != list(range(10))
    else:
        assert labels.tolist() == list(range(10))
    for x, y in batches:
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert torch.equal(_as_uint8(x), images[y])


def test_loader_reshuffles_every_epoch():
    loader = _loader(_images(32), 32, shuffle=True, generator=torch.Generator().manual_seed(0))
    first, second = (next(iter(loader))[1].tolist() for _ in range(2))
    assert first != second


def test_loader_drop_last():
    loader = _loader(_images(10), 3, drop_last=True)
    assert len(loader) == 3
    labels = torch.cat([y for _, y in loader])
    assert labels.tolist() == list(range(9))


def test_loader_normalisation():
    images = _images(5)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    loader = BatchLoader(images, torch.zeros(5, dtype=torch.int64), 5, mean=mean, std=std)
    ((x, _),) = list(loader)
    mean_t, std_t = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    expected = (images.float() / 255 - mean_t) / std_t
    torch.testing.assert_close(x, expected)


def test_augment_without_pad_and_flip_is_identity():
    images = _images(6)
    plain = list(_loader(images, 4))
    augmented = list(_loader(images, 4, augment=True, pad=0, flip=False))
    for (x0, y0), (x1, y1) in zip(plain, augmented, strict=True):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)


def test_flipped_samples_are_mirror_images():
    images = _images(64)
    loader = _loader(images, 64, augment=True, pad=0, generator=torch.Generator().manual_seed(0))
    ((x, y),) = list(loader)
    out = _as_uint8(x)
    same = (out == images[y]).flatten(1).all(1)
    mirrored = (out == torch.flip(images[y], dims=[3])).flatten(1).all(1)
    assert torch.all(same ^ mirrored)  # random images are never symmetric
    assert 10 < int(mirrored.sum()) < 54


def test_crops_are_windows_of_the_padded_image():
    pad, size = 2, 6
    images = _images(40, channels=2, size=size)
    loader = _loader(
        images, 16, augment=True, pad=pad, flip=False, generator=torch.Generator().manual_seed(0)
    )
    shifts = set()
    for x, y in loader:
        for crop, label in zip(_as_uint8(x), y, strict=True):
            padded = torch.nn.functional.pad(images[label], (pad,) * 4)
            matches = [
                (dy, dx)
                for dy in range(2 * pad + 1)
                for dx in range(2 * pad + 1)
                if torch.equal(crop, padded[:, dy : dy + size, dx : dx + size])
            ]
            assert matches, "crop is not a window of the padded image"
            shifts.add(matches[0])
    assert len(shifts) > 5


def test_same_seed_same_batches():
    images = _images(20)

    def epoch(seed):
        generator = torch.Generator().manual_seed(seed)
        loader = _loader(images, 8, shuffle=True, augment=True, generator=generator)
        return list(loader)

    a, b, c = epoch(3), epoch(3), epoch(4)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not all(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c, strict=True))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 0},
        {"pad": -1},
        {"mean": (0.5,), "std": (0.5,)},
        {"std": (1.0, 0.0, 1.0)},
    ],
)
def test_loader_rejects_bad_arguments(kwargs):
    args = {"batch_size": 4, "mean": (0.5,) * 3, "std": (0.5,) * 3, **kwargs}
    batch_size = args.pop("batch_size")
    with pytest.raises(FilterpruneError):
        BatchLoader(_images(4), torch.arange(4), batch_size, **args)


def test_loader_rejects_float_images():
    with pytest.raises(FilterpruneError, match="uint8"):
        BatchLoader(torch.zeros(2, 1, 4, 4), torch.arange(2), 1, mean=(0.0,), std=(1.0,))


# --------------------------------------------------------------------------- make_loaders


def _toy_dataset(augment: bool, n_train: int = 10) -> ImageDataset:
    return ImageDataset(
        name="toy",
        train_images=_images(n_train, channels=1),
        train_labels=torch.arange(n_train) % 2,
        test_images=_images(7, channels=1, seed=1),
        test_labels=torch.arange(7) % 2,
        classes=("a", "b"),
        mean=(0.5,),
        std=(0.25,),
        augment=augment,
    )


def test_make_loaders_configuration():
    train, test = make_loaders(_toy_dataset(augment=True), 4, 3, seed=0)
    assert train.shuffle and train.augment and train.pad == 4
    assert not test.shuffle and not test.augment
    assert len(train) == 3 and len(test) == 3
    assert sum(len(y) for _, y in test) == 7
    plain_train, _ = make_loaders(_toy_dataset(augment=False), 4, 3, seed=0)
    assert not plain_train.augment


def test_make_loaders_is_reproducible():
    ds = _toy_dataset(augment=True)
    runs = [[x for x, _ in make_loaders(ds, 4, 3, seed=7)[0]] for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


def test_make_loaders_train_subset():
    ds = _toy_dataset(augment=False)
    train, _ = make_loaders(ds, 2, 3, seed=0, train_subset=4)
    assert train.num_samples == 4
    with pytest.raises(FilterpruneError, match="train subset"):
        make_loaders(ds, 2, 3, seed=0, train_subset=11)


def test_make_loaders_avoids_single_sample_batch():
    train, _ = make_loaders(_toy_dataset(augment=False, n_train=9), 4, 3, seed=0)
    assert [len(y) for _, y in train] == [4, 4]
