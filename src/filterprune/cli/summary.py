"""``filterprune summary --model SPEC``: per-layer shapes, MACs and params, pruned or not."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from filterprune.cli._common import add_model_arguments, model_from_args
from filterprune.engine import PruningPlan, apply_plan, profile, trace
from filterprune.errors import FilterpruneError
from filterprune.paper import BASELINES, NAMED_PLANS, named_plan


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "summary", parents=[common], help="per-layer table of shapes, MACs and params",
        description="MACs (multiply-accumulates of conv and linear layers, per image) and "
        "parameters of a model (zoo, timm, torchvision, your own builder) or model file, "
        "optionally after applying a plan.",
    )
    add_model_arguments(parser, "the model")
    parser.add_argument("--plan", help="pruning plan to apply first: a plan file (JSON) or a "
                        f"named plan of the paper ({', '.join(NAMED_PLANS)}; it sets the "
                        "default classes and input shape)")
    parser.set_defaults(run=run, render=render)


def run(args: argparse.Namespace) -> dict:
    paper = BASELINES.get(args.model) if args.plan in NAMED_PLANS else None
    if paper is not None:
        args.num_classes = args.num_classes or paper.num_classes
        args.input_shape = args.input_shape or f"3,{paper.input_size},{paper.input_size}"
    model, spec = model_from_args(args)
    name, example = spec.name, spec.example_input()
    if args.plan in NAMED_PLANS:
        named = named_plan(args.plan)
        if named.model != name:
            raise FilterpruneError(f"named plan '{args.plan}' is for {named.model}, not {name}")
        model = apply_plan(model, *named.plan(model, example))
    elif args.plan:
        model = apply_plan(model, PruningPlan.load(args.plan), trace(model, example))
    cost = profile(model, example)
    return {"model": name, "input_shape": list(example.shape), "macs": cost.macs,
            "flops": cost.flops, "params": cost.params,
            "params_conv_linear": cost.params_conv_linear,
            "layers": [asdict(layer) for layer in cost.layers]}


def render(result: dict) -> str:
    layers = result["layers"]
    width = max([len(layer["name"]) for layer in layers] + [5])
    lines = [f"{'layer':<{width}}  {'type':<6}  {'weight':<18}  {'output':<14}  "
             f"{'MACs':>13}  {'params':>11}"]
    lines += [
        f"{layer['name']:<{width}}  {layer['type']:<6}  {str(tuple(layer['weight_shape'])):<18}  "
        f"{str(tuple(layer['output_shape'])):<14}  {layer['macs']:>13,}  {layer['params']:>11,}"
        for layer in layers
    ]
    lines.append(f"total: {result['macs']:,} MACs ({result['flops']:,} FLOPs), "
                 f"{result['params']:,} params "
                 f"({result['params_conv_linear']:,} in conv/linear layers)")
    return "\n".join(lines)
