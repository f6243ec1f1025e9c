"""``filterprune summary --model NAME``: per-layer shapes, MACs and params, pruned or not."""

from __future__ import annotations

import argparse
from dataclasses import asdict

import torch

from filterprune.checkpoint import load_model
from filterprune.engine import PruningPlan, apply_plan, profile, trace
from filterprune.errors import FilterpruneError
from filterprune.models import create_model, model_arguments
from filterprune.paper import BASELINES, NAMED_PLANS, named_plan


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "summary", parents=[common], help="per-layer table of shapes, MACs and params",
        description="MACs (multiply-accumulates of conv and linear layers, per image) and "
        "parameters of a zoo model or model file, optionally after applying a plan.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="zoo model name (filterprune.models.list_models())")
    source.add_argument("--checkpoint", help="model file (.safetensors)")
    parser.add_argument("--plan", help="pruning plan to apply first: a plan file (JSON) or a "
                        f"named plan of the paper ({', '.join(NAMED_PLANS)})")
    parser.add_argument("--num-classes", type=int,
                        help="default: the named plan's dataset's, else 10")
    parser.add_argument("--in-channels", type=int, default=3)
    parser.add_argument("--input-size", type=int,
                        help="input height = width, pixels (default: the named plan's, else 32)")
    parser.set_defaults(run=run, render=render)


def run(args: argparse.Namespace) -> dict:
    if args.checkpoint:
        model, spec = load_model(args.checkpoint)
        name, example = spec.name, spec.example_input()
    else:
        name = args.model
        paper = BASELINES.get(name) if args.plan in NAMED_PLANS else None
        num_classes = args.num_classes or (paper.num_classes if paper else 10)
        size = args.input_size or (paper.input_size if paper else 32)
        if min(num_classes, args.in_channels, size) < 1:
            raise FilterpruneError("--num-classes, --in-channels and --input-size must be >= 1")
        given = {"num_classes": num_classes, "in_channels": args.in_channels, "input_size": size}
        accepted = model_arguments(name)
        model = create_model(name, **{k: v for k, v in given.items() if k in accepted})
        example = torch.zeros(1, args.in_channels, size, size)
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
