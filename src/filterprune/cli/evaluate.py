"""``filterprune evaluate CONFIG --checkpoint M``: accuracy and cost of a model file."""

from __future__ import annotations

import argparse

from filterprune.cli._common import add_config_arguments, config_from_args, render_fields
from filterprune.engine import profile
from filterprune.pipeline.session import load_checkpoint, prepare


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "evaluate", parents=[common], help="test accuracy, MACs and params of a model file",
        description="Evaluate a model file on the configured dataset's test split.",
    )
    add_config_arguments(parser)
    parser.add_argument("--checkpoint", required=True, help="model to evaluate (.safetensors)")
    parser.set_defaults(run=run, render=render_fields)


def run(args: argparse.Namespace) -> dict:
    session = prepare(config_from_args(args), progress=False)
    model = load_checkpoint(session, args.checkpoint)
    cost = profile(model, session.spec.example_input())
    return {**session.evaluate(model), "split": "test", "macs": cost.macs, "params": cost.params}
