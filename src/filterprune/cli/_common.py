"""Arguments and helpers shared by the commands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from torch import nn

from filterprune import distributed
from filterprune.checkpoint import ModelSpec, build_model, load_model
from filterprune.errors import FilterpruneError
from filterprune.pipeline.config import RunConfig, load_config
from filterprune.pipeline.session import SESSIONS


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG", help="YAML run configuration")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config value, e.g. train.epochs=3")
    parser.add_argument("--data-dir", help="directory holding the dataset's official files")
    parser.add_argument("--download", action="store_true",
                        help="download the dataset from its official URL if not found")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N (default: from the config)")
    parser.add_argument("--deterministic", action="store_true",
                        help="deterministic algorithms only: the same seed gives the same weights")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    config = load_config(args.config, args.overrides)
    if args.data_dir is not None:
        config.data.data_dir = args.data_dir
    if args.download:
        config.data.download = True
    if args.device is not None:
        config.device = args.device
    if args.deterministic:
        config.deterministic = True
    return config


def add_model_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """``--checkpoint FILE`` or ``--model SPEC`` (with ``--weights``, ``--model-kwargs``,
    ``--input-shape``, ``--num-classes``), one of them required."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help=f"{what}: a model file (.safetensors)")
    source.add_argument(
        "--model", metavar="SPEC",
        help=f"{what}: a zoo name, timm:NAME, torchvision:NAME or package.module:callable",
    )
    parser.add_argument("--weights", help="with --model: weights to load (.safetensors, or a "
                        ".pt/.pth state dict, read with weights_only=True)")
    parser.add_argument("--model-kwargs", metavar="JSON", default="{}",
                        help="with --model: builder keyword arguments, e.g. '{\"drop_rate\": 0.1}'")
    parser.add_argument("--input-shape", metavar="C,H,W",
                        help="with --model: one input image's shape (default: the model's own, "
                        "e.g. timm's; 3,32,32 for zoo models)")
    parser.add_argument("--num-classes", type=int, help="with --model: number of classes "
                        "(default: the builder's)")
    parser.add_argument("--pretrained", action="store_true",
                        help="with --model timm:NAME or torchvision:NAME: start from their "
                        "pretrained weights, downloaded from their hub (the model file does not "
                        "record it: it holds its own weights)")


def parse_shape(text: str) -> tuple[int, int, int]:
    """``"3,32,32"`` -> (3, 32, 32).

    Raises:
        FilterpruneError: not three positive integers.
    """
    try:
        shape = tuple(int(n) for n in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise FilterpruneError(
            f"--input-shape must be C,H,W (three positive integers), got {text!r}"
        )
    return shape


def model_from_args(args: argparse.Namespace) -> tuple[nn.Module, ModelSpec]:
    """The model ``add_model_arguments`` describes, and its spec.

    Raises:
        FilterpruneError: options of ``--model`` given with ``--checkpoint``, malformed
            ``--model-kwargs`` or ``--input-shape``, or what ``build_model`` / ``load_model``
            raise.
    """
    if args.checkpoint:
        given = [f"--{o.replace('_', '-')}" for o in ("weights", "input_shape", "num_classes")
                 if getattr(args, o) is not None] + ["--pretrained"] * args.pretrained
        if given or args.model_kwargs != "{}":
            raise FilterpruneError(f"{(given or ['--model-kwargs'])[0]} goes with --model; a "
                                   "model file records its own")
        return load_model(args.checkpoint)
    try:
        kwargs = json.loads(args.model_kwargs)
    except json.JSONDecodeError as e:
        raise FilterpruneError(f"--model-kwargs is not JSON: {e}") from None
    if not isinstance(kwargs, dict):
        raise FilterpruneError("--model-kwargs must be a JSON object, e.g. '{\"width\": 2}'")
    shape = None if args.input_shape is None else parse_shape(args.input_shape)
    if args.num_classes is not None and args.num_classes < 1:
        raise FilterpruneError("--num-classes must be >= 1")
    return build_model(args.model, kwargs, weights=args.weights, input_shape=shape,
                       num_classes=args.num_classes, pretrained=args.pretrained)


def add_output_arguments(parser: argparse.ArgumentParser, help_out: str) -> None:
    parser.add_argument("--out", help=help_out)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue the interrupted run in --out; finished stages are not redone")
    mode.add_argument("--overwrite", action="store_true",
                      help="allow writing into an existing, non-empty output directory")


def output_dir(args: argparse.Namespace, config_path: str) -> Path:
    """``--out``, refused if it holds files (unless ``--resume`` or ``--overwrite``); by default a
    fresh ``runs/<config name>[-N]`` directory, so earlier results are never overwritten.

    Under torchrun every process checks before any writes (a barrier), so a later rank never
    finds the config rank 0 has just written and refuses the directory.

    A directory holding only what a run that finished no stage and saved no training state
    leaves (``config.yaml``, ``stages/sessions.json``) counts as empty.

    Raises:
        FilterpruneError: ``--out`` is a file or lies under one, a non-empty directory without
            ``--resume`` or ``--overwrite``, or ``--resume`` names no directory holding a run.
    """
    out = _checked_output_dir(args, config_path)
    distributed.barrier()
    return out


def _checked_output_dir(args: argparse.Namespace, config_path: str) -> Path:
    if args.resume:
        out = Path(args.out or Path("runs") / Path(config_path).stem)
        if not out.is_dir():
            raise FilterpruneError(f"nothing to resume: {out} is not a directory")
        if not (out / "config.yaml").is_file():
            raise FilterpruneError(f"nothing to resume: {out} holds no run (no config.yaml)")
        return out
    if args.out is None:
        base = Path("runs") / Path(config_path).stem
        out, n = base, 1
        while out.exists():
            n += 1
            out = base.with_name(f"{base.name}-{n}")
        return out
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FilterpruneError(f"output directory {out} is a file")
    above = next(p for p in out.absolute().parents if p.exists())
    if not above.is_dir():
        raise FilterpruneError(f"cannot create output directory {out}: {above} is a file")
    if out.is_dir() and not _holds_nothing_done(out) and not args.overwrite:
        raise FilterpruneError(
            f"output directory {out} is not empty (use --resume or --overwrite)"
        )
    return out


def _holds_nothing_done(out: Path) -> bool:
    """True for an empty directory, or one holding only what a run that finished nothing
    leaves: its ``config.yaml`` and a ``stages/`` holding at most its ``sessions.json``."""
    for entry in out.iterdir():
        if entry.name == "config.yaml" and entry.is_file():
            continue
        if entry.name == "stages" and entry.is_dir() and all(
                p.name == SESSIONS for p in entry.iterdir()):
            continue
        return False
    return True


def quiet(message: str) -> None:
    """A pipeline log that drops stage messages (the command's result is its output)."""


def render_fields(result: dict) -> str:
    """``key: value`` lines, floats with two decimals."""
    return "\n".join(
        f"{k}: {v:.2f}" if isinstance(v, float) else f"{k}: {v}" for k, v in result.items()
    )
