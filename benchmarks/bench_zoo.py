"""Pruning real model code: every torchvision classification ConvNet and timm ConvNets of
distinct families, at one ratio, beside Torch-Pruning.

Each model (random weights, eval mode, a small input) is pruned with ``residual="coupled"`` by
L1 norm; per model the script prints: status (``ok``, or the error in one line), MACs removed
(share of the model's MACs), reached (share of the requested conv MACs the plan reached),
exactness (max abs difference between the pruned model and the original whose removed channels
are zeroed where they are read, on a random input, over the largest output magnitude when that
is above 1: random BatchNorm statistics blow some models' outputs up to 1e16), filterprune's
prune time and Torch-Pruning's (MagnitudePruner, L1, same ratio, output layer ignored), with
the MACs it removed; then totals: models pruned exactly with at least 40% of their MACs
removed, and the median time ratio (filterprune / Torch-Pruning, below 1: filterprune is
faster).

    python benchmarks/bench_zoo.py [--ratio 0.3] [--size 64] [--models NAME ...] [--limit N]
        [--tp-limit SECONDS] [--repeats N]

Times are the best of ``--repeats`` runs of each pruner, the two alternating (on a shared
machine the load moves single timings by 2-4x).

Model names: ``tv:NAME`` (torchvision) or ``timm:NAME``. Needs torchvision, timm and
torch-pruning.
"""

from __future__ import annotations

import argparse
import copy
import signal
import statistics
import sys
import time
import warnings
from pathlib import Path

import timm
import torch
import torch_pruning as tp
import torchvision
from torch import nn

import filterprune

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_graph_general import masked_reference, randomize_bn  # noqa: E402

NOT_CONVNETS = ("vit_", "swin_", "maxvit_")
TIMM = (
    "efficientnet_b0 mobilenetv3_small_100 mobilenetv2_050 regnetx_002 regnety_002 densenet121 "
    "dpn68 cspresnet50 cspdarknet53 repvgg_a0 ese_vovnet19b_dw vovnet39a ghostnet_100 mixnet_s "
    "res2net50_14w_8s res2next50 rexnet_100 lcnet_050 gernet_s hrnet_w18_small "
    "tf_efficientnet_lite0 mnasnet_small fbnetc_100 spnasnet_100 semnasnet_050 resnet18 "
    "resnet26d seresnext26d_32x4d skresnet18 selecsls42b dla34 nfnet_l0 convnext_atto "
    "legacy_xception inception_v3 mobileone_s0 tinynet_e ecaresnet26t resnest14d regnetz_b16 "
    "hardcorenas_a mobilenetv4_conv_small vgg11 nf_resnet26 gcresnet33ts darknet17 "
    "cs3darknet_s haloregnetz_b"
).split()
MIN_SIZE = {"tv:inception_v3": 75, "timm:inception_v3": 75, "timm:legacy_xception": 71,
            "timm:haloregnetz_b": 224}  # halo attention: feature maps in whole 7x7 blocks


def default_models() -> list[str]:
    tv = [f"tv:{n}" for n in torchvision.models.list_models(module=torchvision.models)
          if not n.startswith(NOT_CONVNETS)]
    return tv + [f"timm:{n}" for n in TIMM]


def build(name: str) -> nn.Module:
    library, _, model = name.partition(":")
    if library == "tv":
        return torchvision.models.get_model(model, weights=None, num_classes=10)
    return timm.create_model(model, pretrained=False, num_classes=10)


def output_layers(model: nn.Module) -> list[nn.Module]:
    """The layer giving the model output (the last Linear, else the last conv)."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)] or \
        [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return layers[-1:]


def torch_pruning(model: nn.Module, x: torch.Tensor, ratio: float, limit_s: int) -> nn.Module:
    """Torch-Pruning's pruned copy; TimeoutError after ``limit_s`` seconds (it hangs on some
    models)."""
    def give_up(signum, frame):
        raise TimeoutError(f"Torch-Pruning took over {limit_s} s")

    signal.signal(signal.SIGALRM, give_up)
    signal.alarm(limit_s)
    try:
        return _torch_pruning(model, x, ratio)
    finally:
        signal.alarm(0)


def _torch_pruning(model: nn.Module, x: torch.Tensor, ratio: float) -> nn.Module:
    model = copy.deepcopy(model)
    pruner = tp.pruner.MagnitudePruner(
        model, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=ratio,
        ignored_layers=output_layers(model),
    )
    pruner.step()
    return model


def one_line(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:70]


def timed(run) -> tuple[float, object]:
    """The time of one call of ``run()`` and its result."""
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def measure(name: str, ratio: float, size: int, tp_limit_s: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = randomize_bn(build(name))
    x = torch.randn(2, 3, max(size, MIN_SIZE.get(name, 0)), max(size, MIN_SIZE.get(name, 0)))
    macs = filterprune.profile(model, x[:1]).macs
    row = {"name": name, "status": "ok"}
    fp_times, tp_times = [], []
    for _ in range(repeats):  # the two pruners alternate, so a change of load hits both
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seconds, result = timed(
                lambda: filterprune.prune(model, x[:1], ratio=ratio, residual="coupled"))
        fp_times.append(seconds)
        if tp_limit_s and "tp_status" not in row:
            try:
                seconds, pruned = timed(lambda: torch_pruning(model, x[:1], ratio, tp_limit_s))
                row["tp_removed"] = 1 - filterprune.profile(pruned, x[:1]).macs / macs
                tp_times.append(seconds)
            except Exception as e:  # Torch-Pruning fails (or its model does) on some models
                row["tp_status"] = one_line(e)
    row["fp_s"] = min(fp_times)
    row["removed"] = 1 - filterprune.profile(result.model, x[:1]).macs / macs
    row["reached"] = result.coverage.reached_share
    with torch.no_grad():
        reference = masked_reference(model, result.plan, result.graph)
        expected = reference(x)
        row["diff"] = ((result.model.eval()(x) - expected).abs().max()
                       / expected.abs().max().clamp(min=1)).item()
    if "tp_status" not in row and tp_times:
        row["tp_s"] = min(tp_times)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--size", type=int, default=64, help="input height and width")
    parser.add_argument("--models", nargs="*", help="tv:NAME or timm:NAME (default: all)")
    parser.add_argument("--limit", type=int, help="only the first N models")
    parser.add_argument("--tp-limit", type=int, default=60,
                        help="seconds Torch-Pruning may take per model (0: skip it)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="time each pruner this many times (alternating), keep the shortest")
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = (args.models or default_models())[:args.limit]
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, timm "
          f"{timm.__version__}, torch-pruning {tp.__version__}, 1 thread, ratio {args.ratio}, "
          f"input {args.size}x{args.size}, best of {args.repeats}, {len(names)} models")
    print(f"{'model':<34} {'status':<8} {'removed':>7} {'reached':>7} {'rel diff':>9} "
          f"{'fp s':>6} {'tp s':>6} {'tp removed':>10}", flush=True)
    rows = []
    for name in names:
        try:
            row = measure(name, args.ratio, args.size, args.tp_limit, args.repeats)
        except Exception as e:  # a model that fails: say so, go on
            row = {"name": name, "status": one_line(e)}
        rows.append(row)
        if row["status"] != "ok":
            print(f"{name:<34} {row['status']}", flush=True)
            continue
        tp_cols = (f"{row['tp_s']:>6.2f} {row['tp_removed']:>10.1%}" if "tp_s" in row
                   else f"{'-':>6} {row.get('tp_status', '-'):>10}")
        print(f"{name:<34} {'ok':<8} {row['removed']:>7.1%} {row['reached']:>7.0%} "
              f"{row['diff']:>9.1e} {row['fp_s']:>6.2f} {tp_cols}", flush=True)
    for library in ("tv", "timm"):
        done = [r for r in rows if r["name"].startswith(library + ":")]
        good = [r for r in done if r["status"] == "ok" and r["diff"] < 1e-3
                and r["removed"] >= 0.4]
        exact = [r for r in done if r["status"] == "ok" and r["diff"] < 1e-3]
        ratios = [r["fp_s"] / r["tp_s"] for r in done if "tp_s" in r]
        if done:
            print(f"{library}: {len(done)} models, {len(exact)} pruned exactly, {len(good)} "
                  f"exactly with >= 40% of MACs removed ({len(good) / len(done):.0%}); median "
                  f"time filterprune / Torch-Pruning "
                  f"{statistics.median(ratios) if ratios else float('nan'):.2f} "
                  f"over {len(ratios)}")


if __name__ == "__main__":
    main()
