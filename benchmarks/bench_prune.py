"""Time to analyse and prune a model: filterprune vs Torch-Pruning at the same ratio.

Both prune every residual stage together (filterprune ``residual="coupled"``, Torch-Pruning's
default grouping) by L1 norm at the same ratio, leaving the classifier alone; the time covers
tracing the dependencies, scoring, deciding and cutting, on a fresh copy of the model each
repeat. Prints the median of the repeats for each library, their ratio (filterprune / TP:
below 1 means filterprune is faster) and the parameter counts after pruning. On resnet110
(option-A zero-padding shortcuts) Torch-Pruning also cuts the residual stages, which
filterprune leaves whole (their channels are zero-padded), so its model is smaller there.

    python benchmarks/bench_prune.py [--ratio 0.3] [--repeats 5] [--threads 1]

Needs ``torch-pruning`` (pip install torch-pruning).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch_pruning as tp

import filterprune
from filterprune.models import create_model

CASES = (("resnet110", (1, 3, 32, 32)), ("resnet50", (1, 3, 224, 224)))


def filterprune_once(model: torch.nn.Module, x: torch.Tensor, ratio: float) -> torch.nn.Module:
    return filterprune.prune(model, x, ratio=ratio, residual="coupled").model


def torch_pruning_once(model: torch.nn.Module, x: torch.Tensor, ratio: float) -> torch.nn.Module:
    model = copy.deepcopy(model)  # filterprune.prune returns a pruned copy too
    pruner = tp.pruner.MagnitudePruner(
        model, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=ratio,
        ignored_layers=[model.fc],
    )
    pruner.step()
    return model


def median_seconds(run, model: torch.nn.Module, x: torch.Tensor, ratio: float,
                   repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(model, x, ratio)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, filterprune {filterprune.__version__}, torch-pruning "
          f"{tp.__version__}, {args.threads} thread(s), ratio {args.ratio}, median of "
          f"{args.repeats}")
    print(f"{'model':<10} {'input':<16} {'filterprune s':>13} {'torch-pruning s':>15} "
          f"{'ratio':>6} {'params fp':>10} {'params tp':>10}")
    for name, shape in CASES:
        model = create_model(name, num_classes=10 if name == "resnet110" else 1000).eval()
        x = torch.zeros(shape)
        ours = filterprune_once(model, x, args.ratio)  # warm-up, and the counts
        theirs = torch_pruning_once(model, x, args.ratio)
        t_ours = median_seconds(filterprune_once, model, x, args.ratio, args.repeats)
        t_tp = median_seconds(torch_pruning_once, model, x, args.ratio, args.repeats)
        params = [sum(p.numel() for p in m.parameters()) for m in (ours, theirs)]
        print(f"{name:<10} {str(tuple(shape)):<16} {t_ours:>13.3f} {t_tp:>15.3f} "
              f"{t_ours / t_tp:>6.2f} {params[0]:>10,} {params[1]:>10,}")


if __name__ == "__main__":
    main()
