"""Training throughput (images/s): filterprune's device-resident pipeline vs the usual
per-sample ``Dataset`` + ``DataLoader``, on the same model, data and optimiser.

The data: random CIFAR-shaped uint8 images (3x32x32) and labels. Both pipelines augment the
same way (random crop from the image zero-padded by 4 pixels, random horizontal flip, then
per-channel normalisation) and train for the same number of SGD steps:

- filterprune: ``BatchLoader`` (the whole uint8 dataset on the device, each batch gathered,
  cropped and flipped as tensor operations, converted to float once) and ``train`` with
  ``ComputeSettings`` (channels-last and bf16 autocast by default on CUDA, neither on CPU);
- usual: a ``torch.utils.data.Dataset`` whose ``__getitem__`` converts one image to float and
  crops, flips and normalises it, batched by a ``DataLoader`` (shuffled, ``--workers``
  processes) and copied to the device each step, trained by a plain float32 loop.

Each pipeline trains a fresh copy of the model once to warm up, then ``--repeats`` times,
alternating; times are medians. The batches alone (one pass over the data on the device, no
model) are timed the same way and reported before the last line.

    python benchmarks/bench_data.py [--model resnet20] [--steps 20] [--batch 128]
        [--workers 0] [--repeats 3] [--threads 1] [--device cpu|cuda]
        [--channels-last | --no-channels-last] [--bf16 | --no-bf16] [--compile]

The last line prints the ratio of images/s (filterprune / usual).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from filterprune.data import BatchLoader
from filterprune.models import create_model
from filterprune.training import ComputeSettings, TrainSettings, train

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


class PerSample(Dataset):
    """CIFAR-style per-sample augmentation, as training scripts usually write it."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels
        self.mean = torch.tensor(MEAN).view(3, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = F.pad(self.images[i].float() / 255, (4, 4, 4, 4))
        top, left = torch.randint(0, 9, (2,)).tolist()
        image = image[:, top : top + 32, left : left + 32]
        if torch.rand(()) < 0.5:
            image = image.flip(2)
        return (image - self.mean) / self.std, self.labels[i]


def usual(model: torch.nn.Module, loader: DataLoader, settings: TrainSettings,
          device: torch.device) -> None:
    model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                                weight_decay=settings.weight_decay)
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="default: on CUDA only")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="default: on CUDA only")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    compute = ComputeSettings(
        channels_last=cuda if args.channels_last is None else args.channels_last,
        bf16=cuda if args.bf16 is None else args.bf16, compile=args.compile,
    )
    n = args.steps * args.batch
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    settings = TrainSettings(epochs=1, batch_size=args.batch, lr=0.01)
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=10)
    ours_loader = BatchLoader(images, labels, args.batch, mean=MEAN, std=STD, shuffle=True,
                              augment=True, generator=g, device=device)
    usual_loader = DataLoader(PerSample(images, labels), batch_size=args.batch, shuffle=True,
                              num_workers=args.workers, pin_memory=cuda,
                              persistent_workers=args.workers > 0)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def data_only(loader) -> None:
        for images, _ in loader:
            images.to(device, non_blocking=True)

    ways = {
        "filterprune": lambda m: train(m, ours_loader, settings, device, progress=False,
                                       compute=compute),
        "usual": lambda m: usual(m, usual_loader, settings, device),
    }
    print(f"{args.model}, {args.steps} steps of {args.batch} CIFAR-shaped images, {device}, "
          f"{args.threads} thread(s), DataLoader workers {args.workers}, filterprune compute "
          f"{compute.model_dump()}, torch {torch.__version__}, median of {args.repeats}")
    times: dict[str, list[float]] = {name: [] for name in ways}
    data_times: dict[str, list[float]] = {name: [] for name in ways}
    loaders = {"filterprune": ours_loader, "usual": usual_loader}
    def timed(run, *arguments) -> float:
        sync()
        start = time.perf_counter()
        run(*arguments)
        sync()
        return time.perf_counter() - start

    for repeat in range(args.repeats + 1):
        for name, way in ways.items():
            train_s = timed(way, copy.deepcopy(model))
            data_s = timed(data_only, loaders[name])
            if repeat:  # the first pass warms up (allocations, cuDNN, compilation)
                times[name].append(train_s)
                data_times[name].append(data_s)
    rates = {name: n / statistics.median(t) for name, t in times.items()}
    data_rates = {name: n / statistics.median(t) for name, t in data_times.items()}
    for name in ways:
        print(f"{name:<12} training {rates[name]:>9.1f} images/s, batches alone "
              f"{data_rates[name]:>10.1f} images/s")
    print(f"batches alone images/s, filterprune / usual: "
          f"{data_rates['filterprune'] / data_rates['usual']:.2f}x")
    print(f"training images/s, filterprune / usual: {rates['filterprune'] / rates['usual']:.2f}x")


if __name__ == "__main__":
    main()
