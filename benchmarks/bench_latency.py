"""Real speed of pruned models: latency against the same widths built directly, and round_to.

1. VGG-16 (CIFAR-10 input) pruned at ratio 0.5 by filterprune, timed against VGG-16 built
   directly at half width (``width_multiplier=0.5``, with the classifier's hidden layer kept at
   512 as pruning keeps it) and against ``filterprune.deploy.rebuilt`` of the pruned model. The
   ratios should be 1.00 within noise: surgery leaves no wrappers, masks or index operations.
2. VGG-16 pruned at ``--ratio`` with kept filter counts rounded to a multiple of 1 (the paper's
   rule), 8 and 16 (``round_to``): MACs, latency, and latency per MAC relative to round_to=1
   (below 1: the rounded widths run faster per MAC).

Models are timed side by side in interleaved rounds with ``filterprune.deploy.measure`` (each
timing the median of its blocks), keeping each model's fastest round; the machine may be shared,
so compare ratios, not times.

    python benchmarks/bench_latency.py [--ratio 0.3] [--batch 8] [--rounds 3] [--threads 1]

The last line prints the latency ratio of the pruned model to the one built directly (batch
``--batch``).
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import filterprune
from filterprune.deploy import fastest_of, measure, rebuilt
from filterprune.engine import profile
from filterprune.models import create_model

SHAPE = (1, 3, 32, 32)


def half_width_vgg16() -> nn.Module:
    """VGG-16 built at width 0.5 with the classifier's hidden layer at 512 (pruning keeps it)."""
    model = create_model("vgg16", width_multiplier=0.5)
    model.classifier[1] = nn.Linear(256, 512)
    model.classifier[2] = nn.BatchNorm1d(512)
    model.classifier[4] = nn.Linear(512, 10)
    return model.eval()


def timed(models: dict[str, nn.Module], batch_sizes: tuple[int, ...], rounds: int,
          min_run_time_s: float) -> dict[str, dict]:
    """Per model and batch size, the fastest round (``filterprune.deploy.fastest_of``)."""
    names = list(models)
    runs = []
    for k in range(rounds):  # round k starts at the k-th model: no model is always first
        order = names[k % len(names):] + names[:k % len(names)]
        runs.append({name: measure(models[name], SHAPE, batch_sizes, "cpu", min_run_time_s)
                     for name in order})
    return {name: fastest_of([run[name] for run in runs]) for name in models}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.3, help="ratio of the round_to study")
    parser.add_argument("--batch", type=int, default=8, help="the larger batch size")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-run-time", type=float, default=0.5, help="seconds per timing")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batches = (1, args.batch)
    x = torch.zeros(SHAPE)
    vgg = create_model("vgg16").eval()
    print(f"torch {torch.__version__}, filterprune {filterprune.__version__}, "
          f"{args.threads} thread(s), fastest of {args.rounds} interleaved rounds")

    pruned = filterprune.prune(vgg, x, ratio=0.5).model.eval()
    direct = half_width_vgg16()
    assert [p.shape for p in pruned.parameters()] == [p.shape for p in direct.parameters()]
    same = timed({"pruned": pruned, "direct": direct, "rebuilt": rebuilt(pruned)}, batches,
                 args.rounds, args.min_run_time)
    print("\nVGG-16 at ratio 0.5: latency ms")
    print(f"{'batch':>5} {'pruned':>9} {'direct':>9} {'rebuilt':>9} {'pruned/direct':>14} "
          f"{'pruned/rebuilt':>15}")
    for b in map(str, batches):
        ms = {name: same[name][b]["latency_ms"] for name in same}
        print(f"{b:>5} {ms['pruned']:>9.2f} {ms['direct']:>9.2f} {ms['rebuilt']:>9.2f} "
              f"{ms['pruned'] / ms['direct']:>14.2f} {ms['pruned'] / ms['rebuilt']:>15.2f}")

    rounded = {m: filterprune.prune(vgg, x, ratio=args.ratio, round_to=m).model.eval()
               for m in (1, 8, 16)}
    macs = {m: profile(model, x).macs for m, model in rounded.items()}
    lat = timed({str(m): model for m, model in rounded.items()}, batches, args.rounds,
                args.min_run_time)
    print(f"\nVGG-16 at ratio {args.ratio}, kept counts rounded to a multiple of round_to")
    print(f"{'round_to':>8} {'conv widths':<44} {'MMACs':>7} "
          + " ".join(f"{'ms b=' + b:>9} {'ms/MAC vs 1':>11}" for b in map(str, batches)))
    for m, model in rounded.items():
        widths = [c.out_channels for c in model.modules() if isinstance(c, nn.Conv2d)]
        cells = []
        for b in map(str, batches):
            ms = lat[str(m)][b]["latency_ms"]
            per_mac = (ms / macs[m]) / (lat["1"][b]["latency_ms"] / macs[1])
            cells.append(f"{ms:>9.2f} {per_mac:>11.2f}")
        print(f"{m:>8} {','.join(map(str, widths)):<44} {macs[m] / 1e6:>7.1f} " + " ".join(cells))
    b = str(args.batch)
    print(f"\npruned / built-directly latency at batch {b}: "
          f"{same['pruned'][b]['latency_ms'] / same['direct'][b]['latency_ms']:.2f}")


if __name__ == "__main__":
    main()
