"""``filterprune criteria CONFIG --checkpoint M``: pruning criteria compared per layer (§4.5)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from filterprune._io import atomic_write, atomic_write_text
from filterprune.cli._common import add_config_arguments, config_from_args, quiet
from filterprune.errors import FilterpruneError
from filterprune.pipeline.config import SWEEP
from filterprune.pipeline.criteria import (
    ALL_CRITERIA,
    DEFAULT_IMAGES,
    compare_criteria,
    criteria_figure,
)
from filterprune.pipeline.session import load_checkpoint, prepare

JSON_NAME = "criteria.json"
PNG_NAME = "criteria.png"


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "criteria", parents=[common], help="compare pruning criteria per layer (Fig. 8, 9)",
        description="Prune each prunable conv alone at each ratio by each criterion (smallest "
        "L1, L2, random, largest L1, and the activation-based mean-mean, mean-std, mean-l1, "
        "mean-l2, var-l2) and evaluate top-1 without retraining (Li et al. 2017, §4.5). Writes "
        f"{JSON_NAME} and {PNG_NAME} (one panel per layer) into --out.",
    )
    add_config_arguments(parser)
    parser.add_argument("--checkpoint", required=True, help="trained model (.safetensors)")
    parser.add_argument("--criteria", nargs="+", default=list(ALL_CRITERIA), metavar="NAME",
                        help=f"criteria to compare (default: all of {', '.join(ALL_CRITERIA)})")
    parser.add_argument("--ratios", nargs="+", type=float, default=list(SWEEP), metavar="R",
                        help="fractions of filters removed (default 0.1 ... 0.9)")
    parser.add_argument("--images", type=int,
                        help="training images the activation criteria use (default "
                        f"{DEFAULT_IMAGES}, or the whole training set if smaller)")
    parser.add_argument("--out", help="output directory (default runs/<config name>-criteria)")
    parser.set_defaults(run=run, render=render)


def run(args: argparse.Namespace) -> dict:
    bad = [r for r in args.ratios if not 0 <= r < 1]
    if bad:
        raise FilterpruneError(f"ratio {bad[0]} is not in [0, 1)")
    config = config_from_args(args)
    session = prepare(config, progress=False)
    model = load_checkpoint(session, args.checkpoint)
    graph = session.trace(model)
    baseline_top1 = session.evaluate(model, session.choice_split)["top1"]
    result = {"baseline_top1": baseline_top1, "split": session.choice_split,
              **compare_criteria(session, model, graph, args.criteria, args.ratios, args.images,
                                 quiet)}
    out = Path(args.out or Path("runs") / f"{Path(args.config).stem}-criteria")
    out.mkdir(parents=True, exist_ok=True)
    figure = criteria_figure(result, baseline_top1)
    atomic_write(out / PNG_NAME, lambda tmp: figure.savefig(tmp, format="png", dpi=120))
    atomic_write_text(out / JSON_NAME, json.dumps(result, indent=2))
    return {**result, "files": [str(out / JSON_NAME), str(out / PNG_NAME)]}


def render(result: dict) -> str:
    curves = result["criteria"]
    layers = list(next(iter(curves.values())))
    width = max(len(name) for name in [*layers, *curves]) + 2
    ratios = " ".join(f"{r:>6.0%}" for r in result["ratios"])
    header = f"{'layer / criterion':<{width + 2}}{ratios}"
    lines = [f"baseline top-1 {result['baseline_top1']:.2f}% ({result['split']} split)", header]
    for layer in layers:
        lines.append(layer)
        lines += [f"  {criterion:<{width}}" + " ".join(f"{a:>6.2f}" for a in per_layer[layer])
                  for criterion, per_layer in curves.items()]
    return "\n".join(lines + [f"written: {', '.join(result['files'])}"])
