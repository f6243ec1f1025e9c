"""Time of the sensitivity analysis (Li et al. 2017, Fig. 2b): without copies vs pruned copies.

VGG-16 (CIFAR-10 shape, freshly initialised) on random 32x32 images labelled by the unpruned
model, whose last bias is shifted so that the labels spread over the classes: each of the 13
convs pruned alone at each of 9 ratios 0.1..0.9 by L1 norm, top-1 without retraining. Both ways
are timed side by side in one process, alternating, and must give identical accuracies:

- shared-prefix: ``top1_shared_prefix`` (one unpruned forward per batch, each (layer, ratio)
  reusing it up to the layer's consumers, no copies);
- copies: ``top1_by_copies`` (a copy pruned by ``apply_plan`` and evaluated per (layer, ratio)).

    python benchmarks/bench_sensitivity.py [--images 128] [--batch 64] [--repeats 3]
        [--threads 1] [--device cpu]

The last line prints the speed-up (copies time / shared-prefix time, medians).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from filterprune.analysis import sensitivity_plans, top1_by_copies, top1_shared_prefix
from filterprune.engine import trace
from filterprune.models import create_model
from filterprune.pipeline.config import SWEEP
from filterprune.training import evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = create_model("vgg16", num_classes=10).eval().to(device)
    images = torch.randn(args.images, 3, 32, 32, device=device)
    with torch.no_grad():  # a fresh net gives every random image the same class, unless
        model.classifier[-1].bias -= model(images).mean(0)  # its logits are centred
        labels = model(images).argmax(1)  # the unpruned model scores 100%
    batches = [(images[i : i + args.batch], labels[i : i + args.batch])
               for i in range(0, args.images, args.batch)]
    graph = trace(model, images[:1])
    plans = sensitivity_plans(model, graph, list(graph.layers), SWEEP, "l1")
    ways = {
        "shared-prefix": lambda: top1_shared_prefix(model, graph, plans, batches, device),
        "copies": lambda: top1_by_copies(model, graph, plans,
                                         lambda m: evaluate(m, batches, device)["top1"]),
    }
    print(f"vgg16, {len(graph.layers)} layers x {len(SWEEP)} ratios, {args.images} images of "
          f"3x32x32 in batches of {args.batch}, {device}, {args.threads} thread(s), torch "
          f"{torch.__version__}, median of {args.repeats}")
    times: dict[str, list[float]] = {name: [] for name in ways}
    results = {}
    for _ in range(args.repeats):
        for name, way in ways.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            results[name] = way()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    if results["shared-prefix"] != results["copies"]:
        raise SystemExit("the two ways disagree")
    worst = min(min(a) for a in results["copies"].values())
    fast, slow = (statistics.median(times[name]) for name in ways)
    print(f"identical top-1 for all {len(graph.layers) * len(SWEEP)} (layer, ratio) pairs "
          f"(lowest {worst:.1f}%)")
    print(f"shared-prefix {fast:.2f} s, copies {slow:.2f} s")
    print(f"speed-up of shared-prefix over copies: {slow / fast:.2f}x")


if __name__ == "__main__":
    main()
