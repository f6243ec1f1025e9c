"""Real speed of pruned models: latency against the same widths built directly, under load, and
round_to.

1. VGG-16 (CIFAR-10 input) pruned at ratio 0.5 by filterprune, timed against VGG-16 built
   directly at half width (``width_multiplier=0.5``, with the classifier's hidden layer kept at
   512 as pruning keeps it) and against ``filterprune.deploy.rebuilt`` of the pruned model. The
   ratios should be 1.00 within noise: surgery leaves no wrappers, masks or index operations.
   Measured once on the machine as it is and once with ``--busy`` extra processes spinning
   (a busy loop each), to show that the paired ratios (median of the per-round ratios, with
   their interval) hold under load where the absolute latencies and the ratio of two separate
   medians do not.
2. VGG-16 pruned at ``--ratio`` with kept filter counts rounded to a multiple of 1 (the paper's
   rule), 8 and 16 (``round_to``): MACs, latency, and latency per MAC relative to round_to=1
   (below 1: the rounded widths run faster per MAC), from paired ratios.

Models are timed with ``filterprune.deploy.measure``: interleaved rounds until every spread
(IQR / median) is under 10% or ``--budget`` seconds per batch size are spent.

    python benchmarks/bench_latency.py [--ratio 0.3] [--batch 8] [--budget 10] [--busy 2]
        [--threads 1]
"""

from __future__ import annotations

import argparse
import multiprocessing

import torch
from torch import nn

import filterprune
from filterprune.deploy import Comparison, measure, rebuilt
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


def spin() -> None:
    """A busy loop: the load of another job on the machine."""
    while True:
        pass


def ratio_cell(comparison: Comparison, a: str, b: str) -> str:
    r = comparison.ratio(a, b)
    return (f"{r['ratio']:.3f} [{r['low']:.3f}, {r['high']:.3f}]"
            + ("" if r["reliable"] else " unreliable"))


def same_widths(pruned: nn.Module, batches: tuple[int, ...], budget: float, busy: int) -> None:
    models = {"pruned": pruned, "direct": half_width_vgg16(), "rebuilt": rebuilt(pruned)}
    spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(busy)]
    for process in spinners:
        process.start()
    try:
        result = measure(models, SHAPE, batches, budget_s=budget)
    finally:
        for process in spinners:
            process.terminate()
            process.join()
    print(f"\nVGG-16 at ratio 0.5, {busy} busy-loop process(es) running")
    print(f"{'batch':>5} {'rounds':>6} {'pruned ms (IQR %)':>22} {'direct ms (IQR %)':>22} "
          f"{'pruned/direct paired [95% int.]':>34} {'of medians':>10} "
          f"{'pruned/rebuilt paired':>30}")
    for b, comparison in result.items():
        p, d = comparison.latency("pruned"), comparison.latency("direct")
        cells = [f"{m['latency_ms']:.2f} ({m['spread']:.0%}){'' if m['reliable'] else ' busy'}"
                 for m in (p, d)]
        print(f"{b:>5} {comparison.rounds:>6} {cells[0]:>22} {cells[1]:>22} "
              f"{ratio_cell(comparison, 'pruned', 'direct'):>34} "
              f"{p['latency_ms'] / d['latency_ms']:>10.3f} "
              f"{ratio_cell(comparison, 'pruned', 'rebuilt'):>30}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.3, help="ratio of the round_to study")
    parser.add_argument("--batch", type=int, default=8, help="the larger batch size")
    parser.add_argument("--budget", type=float, default=10.0,
                        help="seconds of interleaved rounds per batch size at most")
    parser.add_argument("--busy", type=int, default=2,
                        help="busy-loop processes of the loaded measurement")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batches = (1, args.batch)
    x = torch.zeros(SHAPE)
    vgg = create_model("vgg16").eval()
    print(f"torch {torch.__version__}, filterprune {filterprune.__version__}, "
          f"{args.threads} thread(s), {multiprocessing.cpu_count()} CPU(s)")

    pruned = filterprune.prune(vgg, x, ratio=0.5).model.eval()
    assert [p.shape for p in pruned.parameters()] == [
        p.shape for p in half_width_vgg16().parameters()]
    for busy in (0, args.busy):
        same_widths(pruned, batches, args.budget, busy)

    rounded = {str(m): filterprune.prune(vgg, x, ratio=args.ratio, round_to=m).model.eval()
               for m in (1, 8, 16)}
    macs = {m: profile(model, x).macs for m, model in rounded.items()}
    lat = measure(rounded, SHAPE, batches, budget_s=args.budget)
    print(f"\nVGG-16 at ratio {args.ratio}, kept counts rounded to a multiple of round_to")
    print(f"{'round_to':>8} {'conv widths':<44} {'MMACs':>7} "
          + " ".join(f"{'ms b=' + b:>9} {'ms/MAC vs 1':>11}" for b in map(str, batches)))
    for m, model in rounded.items():
        widths = [c.out_channels for c in model.modules() if isinstance(c, nn.Conv2d)]
        cells = []
        for comparison in lat.values():
            per_mac = comparison.ratio(m, "1")["ratio"] * macs["1"] / macs[m]
            cells.append(f"{comparison.latency(m)['latency_ms']:>9.2f} {per_mac:>11.2f}")
        print(f"{m:>8} {','.join(map(str, widths)):<44} {macs[m] / 1e6:>7.1f} " + " ".join(cells))


if __name__ == "__main__":
    main()
