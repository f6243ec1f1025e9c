"""``filterprune run CONFIG``: the main job (train, sensitivity, prune, retrain, report)."""

from __future__ import annotations

import argparse

from filterprune.cli._common import (
    add_config_arguments,
    add_output_arguments,
    config_from_args,
    output_dir,
)
from filterprune.pipeline.results import RunResults
from filterprune.pipeline.run import run_pipeline


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "run", parents=[common], help="the main job: train, sensitivity, prune, retrain, report",
        description="Train (or load) the baseline, analyse each layer's sensitivity, prune all "
        "layers at each ratio of prune.ratios and by each named plan of prune.plans, retrain, "
        "and write report.md, results.json and plots.",
    )
    add_config_arguments(parser)
    add_output_arguments(parser, "output directory (default: runs/<config name>)")
    parser.set_defaults(run=run, render=render)


def run(args: argparse.Namespace) -> dict:
    config = config_from_args(args)
    out = output_dir(args, args.config)
    results = run_pipeline(config, out, resume=args.resume, progress=not args.json)
    return {"out_dir": str(out), **results.to_dict()}


def render(result: dict) -> str:
    results = RunResults.from_dict({k: v for k, v in result.items() if k != "out_dir"})
    base = results.baseline
    lines = [f"baseline: top-1 {base.top1:.2f}%, {base.macs / 1e6:.2f}M MACs",
             "ratio / plan / target  MACs reduction  top-1 before  top-1 after"]
    lines += [f"{r.label:<21}  {r.macs_reduction:>14.1%}  {r.top1_before:>12.2f}"
              f"  {r.top1_after:>11.2f}"
              for r in results.pruning + (results.targets.rows if results.targets else [])]
    lines.append(f"report: {result['out_dir']}/report.md")
    return "\n".join(lines)
