"""Budgets at equal MACs: uniform ratio vs global ranking vs sensitivity-driven (issue 15).

By default SCNNB on Fashion-MNIST (the full set at /usr/share/datasets/fashion-mnist, Debian
package ``dataset-fashion-mnist``; the bundled 5,000/1,000 sample if it is missing); ``--data
cifar10 --model resnet20`` for CIFAR-10 (found where ``load_dataset`` looks, e.g.
``~/.cache/filterprune/cifar10``; pad-4 crop and flip augmentation): a baseline trained on
a subset of the training split, the sensitivity analysis (each conv alone at 0.1..0.9, top-1
without retraining) on a validation split held out of the training split, then for each target
share of MACs removed three plans from the same baseline:

- uniform: one ratio for every prunable conv, the one whose MACs are nearest the target
  (``allocate(..., method="uniform")``);
- global: ``filterprune.prune(target={"macs": s})`` (global ranking of mean-normalised L1 norms);
- sensitivity: ``filterprune.prune(target={"macs": s}, sensitivity=S)``.

Each is scored on the test images before and after the same short retraining, with 95% Wilson
intervals, and paired against uniform on the same images (Newcombe's interval of the
difference; positive = worse than uniform). The unpruned baseline retrained the same way is the
reference for "after retraining" (a short baseline training leaves room that retraining fills).

    python benchmarks/bench_budget.py [--train-images 10000] [--val-images 2000]
        [--test-images 5000] [--epochs 2] [--retrain-epochs 1] [--targets 0.5 0.7] [--threads 1]
        [--data fashion-mnist|cifar10] [--model scnnb|resnet20|...] [--lr 0.05]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

import filterprune
from filterprune.data import BatchLoader, load_dataset
from filterprune.data.split import stratified_holdout
from filterprune.engine import allocate, profile, trace
from filterprune.errors import FilterpruneError
from filterprune.models import create_model, model_arguments
from filterprune.stats import drop_interval, top1_interval
from filterprune.training import evaluate, train
from filterprune.training.loop import TrainSettings

FULL = "/usr/share/datasets/fashion-mnist"


def show(interval) -> str:
    return f"{interval.estimate:.2f} [{interval.low:.2f}, {interval.high:.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-images", type=int, default=10000)
    parser.add_argument("--val-images", type=int, default=2000)
    parser.add_argument("--test-images", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--retrain-epochs", type=int, default=1)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.7])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default="fashion-mnist", choices=["fashion-mnist", "cifar10"])
    parser.add_argument("--model", default="scnnb")
    parser.add_argument("--lr", type=float, default=0.05, help="baseline learning rate")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    if args.data == "cifar10":
        data, source = load_dataset("cifar10"), "cifar10"
    else:
        try:
            data, source = load_dataset("fashion-mnist", FULL), "fashion-mnist (full)"
        except FilterpruneError:
            data, source = load_dataset("fashion-mnist-sample"), "fashion-mnist-sample (bundled)"
    fit, held = stratified_holdout(data.train_labels, 0.2, args.seed)
    draw = torch.Generator().manual_seed(args.seed)
    fit = fit[torch.randperm(len(fit), generator=draw)[: args.train_images]]
    held = held[torch.randperm(len(held), generator=draw)[: args.val_images]]
    test = torch.randperm(len(data.test_labels), generator=draw)[: args.test_images]
    norm = {"mean": data.mean, "std": data.std}
    generator = torch.Generator().manual_seed(args.seed)
    train_batches = BatchLoader(data.train_images[fit], data.train_labels[fit], 128, shuffle=True,
                                generator=generator, augment=data.augment, **norm)
    val = BatchLoader(data.train_images[held], data.train_labels[held], 500, **norm)
    test_batches = BatchLoader(data.test_images[test], data.test_labels[test], 500, **norm)
    x = torch.zeros(1, *data.train_images.shape[1:])

    def score(model):
        correct = evaluate(model, test_batches, per_image=True)["correct"]
        return correct, top1_interval(int(correct.sum()), len(correct))

    def retrain(model, epochs, lr):
        train(model, train_batches, TrainSettings(epochs=epochs, lr=lr, schedule="cosine",
                                                  weight_decay=5e-4), progress=False)
        return model

    given = {"in_channels": x.shape[1], "num_classes": 10, "input_size": x.shape[-1]}
    accepted = model_arguments(args.model)
    model = create_model(args.model, **{k: v for k, v in given.items() if k in accepted})
    baseline = retrain(model, args.epochs, args.lr)
    base_top1 = score(baseline)[1]
    reference = score(retrain(copy.deepcopy(baseline), args.retrain_epochs, 0.01))[1]
    sens = filterprune.sensitivity(baseline, x, data=val, split="validation")
    print(f"{args.model} on {source}: trained on {len(fit)} images for {args.epochs} epoch(s), "
          f"sensitivity on {len(held)} validation images, scored on {len(test)} test images; "
          f"{args.threads} thread(s), torch {torch.__version__}")
    print(f"baseline top-1 {show(base_top1)}; MACs {profile(baseline, x).macs:,}; unpruned "
          f"and retrained like the pruned models: {show(reference)}")
    print(sens.table())
    header = (f"{'target':>6} {'plan':<11} {'MACs -':>7} {'ratios':<44} {'top-1 pruned':<24} "
              f"{'after retrain':<24} {'vs uniform after (pts)':<26}")
    print(header)
    for share in args.targets:
        graph, costs = trace(baseline, x), profile(baseline, x)
        uniform = allocate(baseline, graph, costs, {"macs": share}, method="uniform")
        plans = {
            "uniform": filterprune.prune(baseline, x, ratio=uniform.ratios),
            "global": filterprune.prune(baseline, x, target={"macs": share}),
            "sensitivity": filterprune.prune(baseline, x, target={"macs": share},
                                             sensitivity=sens),
        }
        scored = {}
        for name, result in plans.items():
            before = score(result.model)[1]
            after_correct, after = score(retrain(result.model, args.retrain_epochs, 0.01))
            scored[name] = after_correct
            ratios = ({n: round(1 - len(k) / result.plan.widths[n], 3)
                       for n, k in result.plan.kept.items()})
            achieved = 1 - profile(result.model, x).macs / profile(baseline, x).macs
            paired = ("" if name == "uniform"
                      else show(drop_interval(scored["uniform"], after_correct)))
            print(f"{share:>6.0%} {name:<11} {achieved:>7.1%} {str(ratios):<44} "
                  f"{show(before):<24} {show(after):<24} {paired:<26}")
    print(f"total {time.perf_counter() - start:.0f} s wall")


if __name__ == "__main__":
    main()
