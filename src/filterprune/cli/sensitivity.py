"""``filterprune sensitivity CONFIG --checkpoint M``: each layer pruned alone, no retraining."""

from __future__ import annotations

import argparse
import json

from filterprune import distributed
from filterprune._io import atomic_write_text
from filterprune.cli._common import add_config_arguments, config_from_args, quiet
from filterprune.errors import FilterpruneError
from filterprune.pipeline.analysis import sensitivity
from filterprune.pipeline.session import load_checkpoint, prepare


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "sensitivity", parents=[common], help="sensitivity of each layer to pruning (Fig. 2b)",
        description="Prune each prunable conv alone at each ratio of sensitivity.ratios and "
        "evaluate top-1 without retraining (Li et al. 2017, §3.2); under prune.residual: coupled, "
        "one layer per channel group, as `filterprune run` analyses them.",
    )
    add_config_arguments(parser)
    parser.add_argument("--checkpoint", required=True, help="trained model (.safetensors)")
    parser.add_argument("--out", help="also write the result to this JSON file")
    parser.set_defaults(run=run, render=render)


def run(args: argparse.Namespace) -> dict:
    config = config_from_args(args)
    if config.sensitivity.retrain_epochs:
        raise FilterpruneError("sensitivity with retraining (sensitivity.retrain_epochs > 0) runs "
                               "in `filterprune run`, whose stages make it resumable")
    session = prepare(config, progress=False)
    model = load_checkpoint(session, args.checkpoint)
    graph = session.trace(model)
    result = {"baseline_top1": session.evaluate(model, session.choice_split)["top1"],
              **sensitivity(session, model, graph, config.sensitivity.ratios, quiet)}
    if args.out:
        distributed.on_main(lambda: atomic_write_text(args.out, json.dumps(result, indent=2)))
    return result


def render(result: dict) -> str:
    width = max(len(name) for name in result["layers"])
    lines = [f"baseline top-1 {result['baseline_top1']:.2f}% ({result['split']} split)",
             f"{'layer':<{width}}  " + " ".join(f"{r:>6.0%}" for r in result["ratios"])]
    lines += [f"{name:<{width}}  " + " ".join(f"{a:>6.2f}" for a in accs)
              for name, accs in result["layers"].items()]
    return "\n".join(lines)
