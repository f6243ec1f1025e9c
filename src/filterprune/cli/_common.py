"""Arguments and helpers shared by the commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from filterprune import distributed
from filterprune.errors import FilterpruneError
from filterprune.pipeline.config import RunConfig, load_config


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

    Raises:
        FilterpruneError: ``--out`` is a file, a non-empty directory without ``--resume`` or
            ``--overwrite``, or ``--resume`` names no existing directory.
    """
    out = _checked_output_dir(args, config_path)
    distributed.barrier()
    return out


def _checked_output_dir(args: argparse.Namespace, config_path: str) -> Path:
    if args.resume:
        out = Path(args.out or Path("runs") / Path(config_path).stem)
        if not out.is_dir():
            raise FilterpruneError(f"nothing to resume: {out} is not a directory")
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
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise FilterpruneError(
            f"output directory {out} is not empty (use --resume or --overwrite)"
        )
    return out


def quiet(message: str) -> None:
    """A pipeline log that drops stage messages (the command's result is its output)."""


def render_fields(result: dict) -> str:
    """``key: value`` lines, floats with two decimals."""
    return "\n".join(
        f"{k}: {v:.2f}" if isinstance(v, float) else f"{k}: {v}" for k, v in result.items()
    )
