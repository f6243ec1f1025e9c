"""``filterprune train CONFIG``: train the baseline and save it."""

from __future__ import annotations

import argparse

from filterprune.cli._common import (
    add_config_arguments,
    add_output_arguments,
    config_from_args,
    output_dir,
    quiet,
    render_fields,
)
from filterprune.pipeline.run import baseline_stage, initial_model
from filterprune.pipeline.session import choose_compute, open_run, prepare
from filterprune.training.calibrate import setting_name


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "train", parents=[common], help="train the baseline model",
        description="Train the configured model on the configured dataset and save "
        "OUT/baseline.safetensors; the training state is saved every epoch (--resume).",
    )
    add_config_arguments(parser)
    add_output_arguments(parser, "output directory (default: runs/<config name>)")
    parser.set_defaults(run=run, render=render_fields)


def run(args: argparse.Namespace) -> dict:
    config = config_from_args(args)
    out = output_dir(args, args.config)
    session = prepare(config, progress=not args.json)
    model = initial_model(session, quiet)
    stages = open_run(out, config, args.resume, quiet)
    choose_compute(session, model, stages, quiet)
    _, metrics = baseline_stage(session, model, stages, out, quiet)
    metrics.pop("history")
    metrics.pop("correct")
    return {"checkpoint": str(out / "baseline.safetensors"), **metrics,
            "compute": setting_name(session.compute)}
