"""``filterprune finetune CONFIG --checkpoint M``: retrain a (pruned) model."""

from __future__ import annotations

import argparse

from filterprune import distributed
from filterprune.checkpoint import save_model
from filterprune.cli._common import (
    add_config_arguments,
    add_output_arguments,
    config_from_args,
    output_dir,
    quiet,
    render_fields,
)
from filterprune.pipeline.session import choose_compute, load_checkpoint, open_run, prepare
from filterprune.training.calibrate import setting_name


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "finetune", parents=[common], help="retrain a pruned model",
        description="Retrain a model file with the config's `retrain` settings and save "
        "OUT/finetuned.safetensors (Li et al. 2017, §3.4); the training state is saved every "
        "epoch (--resume).",
    )
    add_config_arguments(parser)
    parser.add_argument("--checkpoint", required=True, help="model to retrain (.safetensors)")
    add_output_arguments(parser, "output directory (default: runs/<config name>)")
    parser.set_defaults(run=run, render=render_fields)


def run(args: argparse.Namespace) -> dict:
    config = config_from_args(args)
    out = output_dir(args, args.config)
    session = prepare(config, progress=not args.json)
    model = load_checkpoint(session, args.checkpoint)
    stages = open_run(out, config, args.resume, quiet)
    choose_compute(session, model, stages, quiet)

    def finetune() -> dict:
        before = session.evaluate(model)["top1"]
        session.train(model, config.retrain, "finetune", stages.state("finetune"))
        path = out / "finetuned.safetensors"
        distributed.on_main(lambda: save_model(path, model, session.spec))
        return {"checkpoint": str(path), "top1_before": before,
                "top1_after": session.evaluate(model)["top1"], "split": "test",
                "epochs": config.retrain.epochs, "compute": setting_name(session.compute)}

    return stages.run("finetune", finetune)
