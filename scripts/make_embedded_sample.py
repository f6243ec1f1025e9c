"""Build the bundled ``fashion-mnist-sample`` dataset from the full Fashion-MNIST.

Draws a stratified subset with a fixed seed (500 training and 100 test images per class, in
their original order) and writes it in the official idx format, gzip-compressed with mtime 0 so
that reruns give byte-identical files, together with the dataset's MIT licence and a README.

Usage:
    python scripts/make_embedded_sample.py [--source DIR] [--out DIR] [--seed N]
"""

from __future__ import annotations

import argparse
import gzip
import struct
from pathlib import Path

import numpy as np

from filterprune.data.datasets import DATASETS, EMBEDDED_DIR, read_idx

TRAIN_PER_CLASS = 500
TEST_PER_CLASS = 100
NUM_CLASSES = 10

LICENSE_TEXT = """\
The MIT License (MIT)

Copyright (c) 2017 Zalando SE, https://tech.zalando.com

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""

README_TEMPLATE = """\
# fashion-mnist-sample

A stratified subset of [Fashion-MNIST](https://github.com/zalandoresearch/fashion-mnist)
(Xiao, Rasul & Vollgraf, 2017) bundled with filterprune so that examples and tests run
without a download: {train_total:,} training images ({train_per_class} per class) and
{test_total:,} test images ({test_per_class} per class), 28x28 grayscale, 10 classes.

The files are in the official idx format (gzip-compressed) under the official file names,
so `filterprune.data.load_dataset("fashion-mnist-sample")` reads them with the same code as
the full dataset.

Made by `python scripts/make_embedded_sample.py --seed {seed}` from the full dataset in
`{source}`: for each class, images drawn uniformly without replacement with
`numpy.random.default_rng({seed})`, kept in their original order; gzip with mtime 0, so
reruns reproduce the files byte for byte.

Fashion-MNIST is Copyright (c) 2017 Zalando SE and distributed under the MIT licence; see
`LICENSE`.
"""


def stratified_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Pick ``per_class`` indices of every class without replacement.

    Args:
        labels: uint8 array (N,) of class labels 0..NUM_CLASSES-1.
        per_class: Number of samples drawn per class.
        rng: Random generator.

    Returns:
        Sorted int64 array (NUM_CLASSES * per_class,) of indices into ``labels``.

    Raises:
        ValueError: A class has fewer than ``per_class`` samples.
    """
    picks = [
        rng.choice(np.flatnonzero(labels == c), size=per_class, replace=False)
        for c in range(NUM_CLASSES)
    ]
    return np.sort(np.concatenate(picks))


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzip-compressed idx file (mtime 0, reproducible).

    Args:
        path: Output file.
        array: uint8 array of any shape, e.g. (N, 28, 28) images or (N,) labels.
    """
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.write_bytes(gzip.compress(data, compresslevel=9, mtime=0))


def main() -> None:
    """Parse arguments, draw the subset and write it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source",
        type=Path,
        default=DATASETS["fashion-mnist"].search_dirs[0],
        help="directory with the four Fashion-MNIST idx files (default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=EMBEDDED_DIR / "fashion-mnist-sample",
        help="output directory (default: the package's embedded dir)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    for split, per_class in (("train", TRAIN_PER_CLASS), ("t10k", TEST_PER_CLASS)):
        images = read_idx(args.source / f"{split}-images-idx3-ubyte.gz")
        labels = read_idx(args.source / f"{split}-labels-idx1-ubyte.gz")
        keep = stratified_indices(labels, per_class, rng)
        write_idx(args.out / f"{split}-images-idx3-ubyte.gz", images[keep])
        write_idx(args.out / f"{split}-labels-idx1-ubyte.gz", labels[keep])
    (args.out / "LICENSE").write_text(LICENSE_TEXT)
    (args.out / "README.md").write_text(
        README_TEMPLATE.format(
            train_total=NUM_CLASSES * TRAIN_PER_CLASS,
            train_per_class=TRAIN_PER_CLASS,
            test_total=NUM_CLASSES * TEST_PER_CLASS,
            test_per_class=TEST_PER_CLASS,
            seed=args.seed,
            source=args.source,
        )
    )
    for path in sorted(args.out.iterdir()):
        print(f"{path}  {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
