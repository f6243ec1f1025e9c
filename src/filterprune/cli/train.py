"""``filterprune train CONFIG``: train the baseline and save it."""

from __future__ import annotations

import argparse

import yaml

from filterprune._io import atomic_write_text
from filterprune.cli._common import (
    add_config_arguments,
    add_output_arguments,
    config_from_args,
    output_dir,
    quiet,
    render_fields,
)
from filterprune.pipeline.run import initial_model, prepare, train_baseline


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "train", parents=[common], help="train the baseline model",
        description="Train the configured model on the configured dataset and save "
        "OUT/baseline.safetensors.",
    )
    add_config_arguments(parser)
    add_output_arguments(parser, "output directory (default: runs/<config name>)")
    parser.set_defaults(run=run, render=render_fields)


def run(args: argparse.Namespace) -> dict:
    config = config_from_args(args)
    out = output_dir(args, args.config)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(config.model_dump(), sort_keys=False))
    session = prepare(config, progress=not args.json)
    metrics = train_baseline(session, initial_model(session, quiet), out, quiet)
    metrics.pop("history")
    return {"checkpoint": str(out / "baseline.safetensors"), **metrics}
