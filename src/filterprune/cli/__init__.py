"""The ``filterprune`` command line: one module per command, each with ``add_parser`` and
``run(args) -> dict``; ``main`` prints the dict (``--json``) or the command's rendering."""

from __future__ import annotations

import argparse
import json
import sys
import warnings

import filterprune
from filterprune import distributed
from filterprune.cli import (
    criteria,
    evaluate,
    export,
    finetune,
    paper_table,
    prune,
    run,
    sensitivity,
    summary,
    train,
)
from filterprune.errors import FilterpruneError, FilterpruneWarning

COMMANDS = (
    run, train, sensitivity, criteria, prune, finetune, evaluate, summary, export, paper_table,
)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print the result as JSON")
    common.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser = argparse.ArgumentParser(
        prog="filterprune",
        description="Structured filter pruning of ConvNets (Li et al., ICLR 2017).",
    )
    parser.add_argument("--version", action="version", version=filterprune.__version__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs one command; returns the exit code (0 success, 2 bad input)."""
    args = build_parser().parse_args(argv)
    joined = False
    try:
        joined = distributed.init_from_env()  # under torchrun (see filterprune.distributed)
        with warnings.catch_warnings():
            warnings.simplefilter("always", FilterpruneWarning)
            warnings.showwarning = _one_line(args.command, warnings.showwarning)
            result = args.run(args)
        printing = distributed.is_main()  # rank 0 only
    except FilterpruneError as e:
        if args.debug:
            raise
        print(f"filterprune {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"filterprune {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if joined:
            distributed.shutdown()
    if printing:
        print(json.dumps(result, indent=2) if args.json else args.render(result))
    return 0


def _one_line(command: str, show):
    """A ``warnings.showwarning`` that prints FilterpruneWarnings as one line on stderr."""
    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, FilterpruneWarning):
            print(f"filterprune {command}: warning: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    return showwarning
