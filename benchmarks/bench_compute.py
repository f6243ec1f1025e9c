"""Training throughput (images/s) of one model under each compute setting and thread count.

For ``filterprune run``'s ``compute`` section: float32 vs ``bf16`` autocast, each in NCHW and
``channels_last``, with 1 and 2 torch threads (``--threads``). Every combination trains a fresh
copy of the same model for ``--steps`` SGD steps with ``filterprune.training.train`` on batches
from ``BatchLoader`` (pad-4 crop + flip, as the CIFAR configs train); CIFAR-shaped random uint8
images by default, or the real training set with ``--data cifar10``. The combinations run
interleaved, one round after another (the first round warms up and is not counted), and each
keeps its median; the machine may be shared, so compare the ratios, not the times.

    python benchmarks/bench_compute.py [--model vgg16-lite] [--steps 20] [--batch 128]
        [--threads 1 2] [--rounds 3] [--data random|cifar10]

The last line prints the fastest combination and its images/s relative to float32, NCHW, one
thread.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import time

import torch

from filterprune.data import BatchLoader, load_dataset
from filterprune.models import create_model
from filterprune.training import ComputeSettings, TrainSettings, train

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def images_and_labels(source: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` training images uint8 (n, 3, 32, 32) and labels int64 (n,)."""
    if source == "cifar10":
        data = load_dataset("cifar10")
        return data.train_images[:n], data.train_labels[:n]
    g = torch.Generator().manual_seed(0)
    return (torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
            torch.randint(0, 10, (n,), generator=g))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vgg16-lite")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3, help="counted rounds (one more warms up)")
    parser.add_argument("--data", choices=["random", "cifar10"], default="random")
    args = parser.parse_args()
    n = args.steps * args.batch
    images, labels = images_and_labels(args.data, n)
    settings = TrainSettings(epochs=1, batch_size=args.batch, lr=0.01, schedule="constant")
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=10, **(
        {"input_size": 32} if args.model == "scnnb" else {}))
    combos = [(threads, ComputeSettings(bf16=bf16, channels_last=cl))
              for threads, bf16, cl in itertools.product(args.threads, (False, True),
                                                         (False, True))]
    print(f"{args.model}, {args.steps} steps of {args.batch} images ({args.data}), torch "
          f"{torch.__version__}, median of {args.rounds} rounds after a warm-up round")
    times: dict[int, list[float]] = {i: [] for i in range(len(combos))}
    for round_ in range(args.rounds + 1):
        for i, (threads, compute) in enumerate(combos):
            torch.set_num_threads(threads)
            loader = BatchLoader(images, labels, args.batch, mean=MEAN, std=STD, shuffle=True,
                                 augment=True, generator=torch.Generator().manual_seed(round_))
            start = time.perf_counter()
            train(copy.deepcopy(model), loader, settings, progress=False, compute=compute)
            if round_:
                times[i].append(time.perf_counter() - start)
    rates = {i: n / statistics.median(t) for i, t in times.items()}
    for i, (threads, compute) in enumerate(combos):
        print(f"threads {threads}  bf16 {compute.bf16!s:<5}  channels_last "
              f"{compute.channels_last!s:<5}  {rates[i]:8.1f} images/s  "
              f"{rates[i] / rates[0]:5.2f}x  (spread {min(times[i]):.1f}-{max(times[i]):.1f} s)")
    best = max(rates, key=rates.get)
    threads, compute = combos[best]
    print(f"fastest: threads {threads}, bf16 {compute.bf16}, channels_last "
          f"{compute.channels_last}: {rates[best]:.1f} images/s, {rates[best] / rates[0]:.2f}x "
          f"float32 NCHW with {combos[0][0]} thread(s)")


if __name__ == "__main__":
    main()
