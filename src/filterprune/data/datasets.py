"""Image classification datasets read from their official file formats into memory.

Supported: Fashion-MNIST and MNIST (four idx files), CIFAR-10 and CIFAR-100 (python-pickle tar
archives), and ``fashion-mnist-sample``, a stratified 5,000/1,000 subset of Fashion-MNIST bundled
inside the package so that examples and tests run without any download.

Every split is loaded whole as a uint8 tensor ``(N, C, H, W)``; :mod:`filterprune.data.loader`
batches, augments and normalises it.

Where data is looked for (first hit wins), unless ``data_dir`` is given:

1. the cache dir ``<root>/<name>``, with ``<root>`` = the ``cache_dir`` argument, else the
   ``FILTERPRUNE_DATA`` environment variable, else ``~/.cache/filterprune``;
2. system dirs: ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``)
   and ``/usr/share/datasets/mnist``;
3. with ``download=True``, the official files are downloaded into the cache dir.

Local files are used as they are (the Debian copies are recompressed, so their md5 differs from
the official one); downloads are md5-verified before they are moved into place
(:mod:`filterprune.data.download`). The files are read by :mod:`filterprune.data.formats`: CIFAR
pickles with a restricted unpickler, and CIFAR archives extracted only after every member has
been checked to be a plain file or directory inside the target.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from filterprune.data.download import fetch
from filterprune.data.formats import (
    CIFAR_LAYOUTS,
    IDX_FILES,
    check_labels,
    extract_tar,
    idx_path,
    read_cifar_batches,
    read_idx,
    to_tensors,
    unpickle,
)
from filterprune.errors import FilterpruneError

__all__ = [
    "DATASETS",
    "EMBEDDED_DIR",
    "DatasetSpec",
    "ImageDataset",
    "list_datasets",
    "load_dataset",
]

#: Directory holding the datasets bundled with the package.
EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset comes from and how to read it; plain data, so tests can build their own.

    Attributes:
        name: Dataset name, also the name of its cache sub-directory.
        format: On-disk layout: ``"idx"`` ((Fashion-)MNIST), ``"cifar10"`` or ``"cifar100"``.
        base_url: URL prefix the file names in ``files`` are appended to (``file://`` works);
            None if the dataset cannot be downloaded (bundled data).
        files: Downloadable file name -> md5 hex digest of the official file.
        classes: Class names in label order; None to read them from the CIFAR ``meta`` file.
        mean: Per-channel mean in [0, 1] pixel units, for normalisation.
        std: Per-channel standard deviation in [0, 1] pixel units.
        augment: Whether training should use random crop + horizontal flip.
        search_dirs: Directories searched after the cache dir when no ``data_dir`` is given.
    """

    name: str
    format: Literal["idx", "cifar10", "cifar100"]
    base_url: str | None
    files: dict[str, str]
    classes: tuple[str, ...] | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool
    search_dirs: tuple[Path, ...] = ()


_FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FASHION_MEAN, _FASHION_STD = (0.2860,), (0.3530,)

#: Known datasets by name.
DATASETS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        format="idx",
        base_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        files={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        classes=_FASHION_CLASSES,
        mean=_FASHION_MEAN,
        std=_FASHION_STD,
        augment=False,
        search_dirs=(Path("/usr/share/datasets/fashion-mnist"),),
    ),
    "fashion-mnist-sample": DatasetSpec(
        name="fashion-mnist-sample",
        format="idx",
        base_url=None,
        files={},
        classes=_FASHION_CLASSES,
        mean=_FASHION_MEAN,
        std=_FASHION_STD,
        augment=False,
        search_dirs=(EMBEDDED_DIR / "fashion-mnist-sample",),
    ),
    "mnist": DatasetSpec(
        name="mnist",
        format="idx",
        base_url="https://ossci-datasets.s3.amazonaws.com/mnist/",
        files={
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        classes=tuple(str(digit) for digit in range(10)),
        mean=(0.1307,),
        std=(0.3081,),
        augment=False,
        search_dirs=(Path("/usr/share/datasets/mnist"),),
    ),
    "cifar10": DatasetSpec(
        name="cifar10",
        format="cifar10",
        base_url="https://www.cs.toronto.edu/~kriz/",
        files={"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
        classes=None,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        augment=True,
    ),
    "cifar100": DatasetSpec(
        name="cifar100",
        format="cifar100",
        base_url="https://www.cs.toronto.edu/~kriz/",
        files={"cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85"},
        classes=None,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        augment=True,
    ),
}


@dataclass(frozen=True)
class ImageDataset:
    """A labelled image dataset, both splits held whole in memory.

    Attributes:
        name: Dataset name.
        train_images: uint8 tensor (N, C, H, W), pixel values 0..255.
        train_labels: int64 tensor (N,), values in [0, num_classes).
        test_images: uint8 tensor (M, C, H, W).
        test_labels: int64 tensor (M,).
        classes: Class names in label order.
        mean: Per-channel mean in [0, 1] pixel units, length C.
        std: Per-channel standard deviation in [0, 1] pixel units, length C.
        augment: Whether training should use random crop (zero padding 4) + horizontal flip.
    """

    name: str
    train_images: torch.Tensor = field(repr=False)
    train_labels: torch.Tensor = field(repr=False)
    test_images: torch.Tensor = field(repr=False)
    test_labels: torch.Tensor = field(repr=False)
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool

    def __post_init__(self) -> None:
        """Refuses splits of different image sizes, found at load time rather than after the
        baseline has trained (a model sized for one split fails on the other).

        Raises:
            FilterpruneError: training and test images differ in channels, height or width.
        """
        train, test = tuple(self.train_images.shape[1:]), tuple(self.test_images.shape[1:])
        if train != test:
            raise FilterpruneError(
                f"dataset {self.name}: training images are {_chw(train)} but test images "
                f"{_chw(test)} (C x H x W); both splits need the same size"
            )

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        """Number of image channels C."""
        return self.train_images.shape[1]

    @property
    def image_size(self) -> int:
        """Image height H in pixels (images are square)."""
        return self.train_images.shape[2]


def _chw(shape: tuple[int, ...]) -> str:
    return " x ".join(map(str, shape))


def list_datasets() -> list[str]:
    """Return the names accepted by :func:`load_dataset`."""
    return list(DATASETS)


def load_dataset(
    name: str | DatasetSpec,
    data_dir: str | Path | None = None,
    *,
    download: bool = False,
    cache_dir: str | Path | None = None,
) -> ImageDataset:
    """Load a dataset whole into memory.

    Args:
        name: A name from :func:`list_datasets`, or a :class:`DatasetSpec` (e.g. one with a
            mirror ``base_url``).
        data_dir: Directory holding the dataset's files (idx files, or the CIFAR archive or its
            extracted folder). If given, nothing else is searched; with ``download=True``,
            missing files are downloaded into it. If None, the cache dir is searched, then
            the spec's ``search_dirs`` (bundled data, which has no ``base_url``, only the
            latter), and with ``download=True`` the files are downloaded into the cache dir.
        download: Download the official files when they are not found locally.
        cache_dir: Root of the download cache (the data goes to ``<cache_dir>/<name>``);
            default ``$FILTERPRUNE_DATA``, else ``~/.cache/filterprune``.

    Returns:
        The dataset, images uint8 (N, C, H, W) and labels int64 (N,).

    Raises:
        FilterpruneError: Unknown name; data not found (the message names where it looked);
            download failure or md5 mismatch; malformed files; a CIFAR pickle referencing
            anything but numpy arrays; a CIFAR archive with unsafe members.
    """
    spec = name if isinstance(name, DatasetSpec) else _spec(name)
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        if not _has_files(spec, root):
            if not download:
                if not root.exists():
                    raise FilterpruneError(f"data directory does not exist: {root}")
                raise FilterpruneError(
                    f"no {spec.name} data in {root} (expected {_expected_files(spec)})"
                )
            _download(spec, root)
    else:
        cache = _cache_root(cache_dir) / spec.name
        candidates = (cache, *spec.search_dirs) if spec.base_url else spec.search_dirs
        root = next((d for d in candidates if _has_files(spec, d)), None)
        if root is None:
            looked = ", ".join(str(d) for d in candidates)
            if not (download and spec.base_url):
                hint = "; pass --data-dir DIR or --download" if spec.base_url else ""
                raise FilterpruneError(f"{spec.name} data not found (looked in {looked}){hint}")
            root = cache
            _download(spec, root)
    if spec.format == "idx":
        return _load_idx(spec, root)
    return _load_cifar(spec, root)


def _spec(name: str) -> DatasetSpec:
    """Return the spec of a known dataset; FilterpruneError for unknown names."""
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(DATASETS)
        raise FilterpruneError(f"unknown dataset {name!r}; known: {known}") from None


def _cache_root(cache_dir: str | Path | None) -> Path:
    """Root of the download cache: the argument, else $FILTERPRUNE_DATA, else ~/.cache."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("FILTERPRUNE_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "filterprune"


def _has_files(spec: DatasetSpec, root: Path) -> bool:
    """Whether ``root`` holds the dataset (CIFAR: the extracted folder or the archive)."""
    if spec.format == "idx":
        return all(idx_path(root, base) is not None for base in IDX_FILES)
    layout = CIFAR_LAYOUTS[spec.format]
    return (root / layout.folder).is_dir() or (root / layout.archive).is_file()


def _expected_files(spec: DatasetSpec) -> str:
    """Human-readable list of the files a data dir must hold."""
    if spec.format == "idx":
        return ", ".join(f"{base}[.gz]" for base in IDX_FILES)
    layout = CIFAR_LAYOUTS[spec.format]
    return f"{layout.archive} or {layout.folder}/"


def _download(spec: DatasetSpec, dest: Path) -> None:
    """Download the files of ``spec`` missing from ``dest``, each md5-verified and atomic."""
    if spec.base_url is None:
        raise FilterpruneError(f"{spec.name} cannot be downloaded")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FilterpruneError(f"cannot create data directory {dest}: {e}") from e
    for filename, md5 in spec.files.items():
        if spec.format == "idx" and idx_path(dest, filename.removesuffix(".gz")) is not None:
            continue
        fetch(spec.base_url + filename, dest / filename, md5)


def _load_idx(spec: DatasetSpec, root: Path) -> ImageDataset:
    """Read the four idx files of ``spec`` from ``root``."""
    if spec.classes is None:
        raise FilterpruneError(f"dataset spec {spec.name!r} (idx format) must list its classes")
    arrays = {}
    for base in IDX_FILES:
        path = idx_path(root, base)
        if path is None:
            raise FilterpruneError(f"missing {base}[.gz] in {root}")
        arrays[base] = (path, read_idx(path))
    splits = []
    for split in ("train", "t10k"):
        images_path, images = arrays[f"{split}-images-idx3-ubyte"]
        labels_path, labels = arrays[f"{split}-labels-idx1-ubyte"]
        if images.ndim != 3 or labels.ndim != 1:
            raise FilterpruneError(
                f"{images_path} / {labels_path}: expected images (N, H, W) and labels (N,), "
                f"got {images.shape} and {labels.shape}"
            )
        if len(images) != len(labels):
            raise FilterpruneError(
                f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels"
            )
        check_labels(labels, len(spec.classes), labels_path)
        splits.append(to_tensors(images[:, None], labels))
    (train_x, train_y), (test_x, test_y) = splits
    return ImageDataset(
        name=spec.name,
        train_images=train_x,
        train_labels=train_y,
        test_images=test_x,
        test_labels=test_y,
        classes=spec.classes,
        mean=spec.mean,
        std=spec.std,
        augment=spec.augment,
    )


def _load_cifar(spec: DatasetSpec, root: Path) -> ImageDataset:
    """Read CIFAR-10/100 from ``root``, extracting the archive first if needed."""
    layout = CIFAR_LAYOUTS[spec.format]
    folder = root / layout.folder
    if not folder.is_dir():
        extract_tar(root / layout.archive, root, layout.folder)
    if spec.classes is None:
        meta_path = folder / layout.meta
        names = unpickle(meta_path).get(layout.names_key)
        if not isinstance(names, list) or not all(isinstance(n, bytes) for n in names):
            raise FilterpruneError(f"{meta_path}: no class name list {layout.names_key!r}")
        classes = tuple(n.decode("utf-8") for n in names)
    else:
        classes = spec.classes
    train = read_cifar_batches(folder, layout.train, layout.label_key, len(classes))
    test = read_cifar_batches(folder, layout.test, layout.label_key, len(classes))
    return ImageDataset(spec.name, *train, *test, classes, spec.mean, spec.std, spec.augment)
