"""Readers of the official file formats of the built-in datasets, each checking what it reads.

idx files ((Fashion-)MNIST) are parsed as bytes; CIFAR python batches go through a restricted
unpickler that admits only numpy's array reconstruction; CIFAR tar archives are extracted only
after every member has been checked to be a plain file or directory inside the target. Every
malformed or unsafe input raises :class:`~filterprune.errors.FilterpruneError` naming the file.
:mod:`filterprune.data.datasets` assembles datasets from what these readers return.
"""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import struct
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from filterprune.errors import FilterpruneError

__all__ = [
    "CIFAR_LAYOUTS",
    "IDX_FILES",
    "CifarLayout",
    "check_labels",
    "extract_tar",
    "idx_path",
    "read_cifar_batches",
    "read_idx",
    "to_tensors",
    "unpickle",
]

#: Base names of the four idx files of (Fashion-)MNIST; each may also carry a ``.gz`` suffix.
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclass(frozen=True)
class CifarLayout:
    """File layout of a CIFAR python archive (names of the archive, its folder and batches)."""

    archive: str
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    label_key: bytes
    names_key: bytes


CIFAR_LAYOUTS = {
    "cifar10": CifarLayout(
        archive="cifar-10-python.tar.gz",
        folder="cifar-10-batches-py",
        train=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test=("test_batch",),
        meta="batches.meta",
        label_key=b"labels",
        names_key=b"label_names",
    ),
    "cifar100": CifarLayout(
        archive="cifar-100-python.tar.gz",
        folder="cifar-100-python",
        train=("train",),
        test=("test",),
        meta="meta",
        label_key=b"fine_labels",
        names_key=b"fine_label_names",
    ),
}


def read_idx(path: Path) -> np.ndarray:
    """Read an unsigned-byte idx file, gzip-compressed or not (detected from its content).

    Args:
        path: The idx file.

    Returns:
        A writable uint8 array with the shape given in the file header.

    Raises:
        FilterpruneError: The file cannot be read or is not a well-formed unsigned-byte idx file.
    """
    try:
        with path.open("rb") as f:
            compressed = f.read(2) == b"\x1f\x8b"
        with gzip.open(path, "rb") if compressed else path.open("rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise FilterpruneError(f"cannot read {path}: {e}") from e
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise FilterpruneError(f"{path} is not an unsigned-byte idx file (bad magic number)")
    ndim = raw[3]
    offset = 4 + 4 * ndim
    if len(raw) < offset:
        raise FilterpruneError(f"{path} is truncated (incomplete idx header)")
    shape = struct.unpack(f">{ndim}I", raw[4:offset])
    if len(raw) - offset != int(np.prod(shape)):
        raise FilterpruneError(
            f"{path} holds {len(raw) - offset} data bytes, its header says {shape}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape).copy()


def idx_path(root: Path, base: str) -> Path | None:
    """The idx file ``base`` in ``root``, gzipped or not; None if absent."""
    for candidate in (root / f"{base}.gz", root / base):
        if candidate.is_file():
            return candidate
    return None


def to_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Wrap uint8 images (N, C, H, W) and integer labels (N,) as uint8 / int64 tensors."""
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


def check_labels(labels: np.ndarray, num_classes: int, source: Path) -> None:
    """Raise FilterpruneError unless every label lies in [0, num_classes)."""
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise FilterpruneError(f"{source}: labels outside [0, {num_classes})")


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler admitting only the globals that CIFAR batches need to rebuild numpy arrays."""

    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            # Python 3 writes bytes objects as _codecs.encode(str, "latin1") in protocol <= 2.
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        """Resolve an allowed global; raise pickle.UnpicklingError for everything else."""
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}")
        return super().find_class(module, name)


def unpickle(path: Path) -> dict[bytes, Any]:
    """Read a CIFAR pickle (a dict with bytes keys) with the restricted unpickler.

    Raises:
        FilterpruneError: The file is missing, malformed, not a dict, or references a global
            other than numpy's array reconstruction.
    """
    try:
        with path.open("rb") as f:
            obj = _RestrictedUnpickler(f, encoding="bytes").load()
    except FileNotFoundError as e:
        raise FilterpruneError(f"missing CIFAR file {path}") from e
    except Exception as e:  # malformed pickles can raise almost any exception type
        raise FilterpruneError(f"refusing to load {path}: {e}") from e
    if not isinstance(obj, dict):
        raise FilterpruneError(f"{path} does not hold a dict (not a CIFAR python file)")
    return obj


def read_cifar_batches(
    folder: Path, names: tuple[str, ...], label_key: bytes, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read and concatenate CIFAR batches into images (N, 3, 32, 32) and labels (N,).

    Raises:
        FilterpruneError: A batch is unreadable (see :func:`unpickle`), lacks a uint8
            ``b'data'`` array (N, 3072) or its labels, or has labels outside [0, num_classes).
    """
    images, labels = [], []
    for name in names:
        path = folder / name
        batch = unpickle(path)
        data = batch.get(b"data")
        batch_labels = batch.get(label_key)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
            raise FilterpruneError(f"{path}: b'data' is not a 2-D uint8 array")
        if data.shape[1] != 3 * 32 * 32 or batch_labels is None:
            raise FilterpruneError(
                f"{path}: expected b'data' (N, 3072) and {label_key!r}, got {data.shape}"
            )
        batch_labels = np.asarray(batch_labels, dtype=np.int64)
        if batch_labels.shape != (len(data),):
            raise FilterpruneError(f"{path}: {len(data)} images but {batch_labels.size} labels")
        check_labels(batch_labels, num_classes, path)
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(batch_labels)
    return to_tensors(np.concatenate(images), np.concatenate(labels))


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    """Raise FilterpruneError unless ``member`` is a plain file or dir with a relative path."""
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts:
        problem = "path outside the target directory"
    elif member.issym() or member.islnk():
        problem = "link"
    elif not (member.isfile() or member.isdir()):
        problem = "device or other special file"
    else:
        return
    raise FilterpruneError(
        f"refusing to extract {archive}: unsafe member {member.name!r} ({problem})"
    )


def extract_tar(archive: Path, dest: Path, folder: str) -> None:
    """Safely extract ``folder`` of ``archive`` into ``dest``, atomically.

    Every member is checked before anything is written; the archive is extracted into a
    temporary directory inside ``dest`` and ``folder`` is then renamed into place.

    Raises:
        FilterpruneError: Unsafe member (absolute path, ``..``, link, device), unreadable
            archive, ``folder`` absent from it, or ``dest`` not writable.
    """
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, archive)
            tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
            try:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, members=members, filter="data")
                else:  # Python < 3.10.12 / 3.11.4: members were checked above
                    tar.extractall(tmp, members=members)
                if not (tmp / folder).is_dir():
                    raise FilterpruneError(f"{archive} does not contain the folder {folder}/")
                os.replace(tmp / folder, dest / folder)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except (tarfile.TarError, OSError) as e:
        raise FilterpruneError(f"cannot extract {archive} into {dest}: {e}") from e
