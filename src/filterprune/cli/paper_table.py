"""``filterprune paper-table [--results R ...]``: Li et al. 2017, Table 1, computed by the tool."""

from __future__ import annotations

import argparse

from filterprune.paper import paper_table


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "paper-table", parents=[common], help="the paper's Table 1 (MACs, params, errors)",
        description="Every model and named plan of Li et al. 2017, Table 1: MACs and parameters "
        "(conv and linear layers, the paper's convention) with their reductions, computed by "
        "filterprune, beside the figures the paper reports. Test errors come from results.json "
        "files of `filterprune run` (a baseline's and a named plan's).",
    )
    parser.add_argument("--results", action="append", default=[], metavar="FILE",
                        help="results.json of a run (repeatable)")
    parser.set_defaults(run=run, render=render)


def run(args: argparse.Namespace) -> dict:
    return {"rows": paper_table(args.results)}


def _error(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render(result: dict) -> str:
    header = ["model", "error %", "paper", "scratch %", "paper", "MACs", "paper", "pruned",
              "params", "paper", "pruned"]
    rows = [header]
    for row in result["rows"]:
        reported = row["reported"]
        pruned = row["macs_reduction"] > 0
        rows.append([
            row["name"], _error(row["error"]), _error(reported["error"]),
            _error(row["scratch_error"]), _error(reported["scratch_error"]),
            f"{row['macs']:.2E}", f"{reported['macs']:.2E}",
            f"{row['macs_reduction']:.1%}" if pruned else "",
            f"{row['params_conv_linear']:.2E}", f"{reported['params']:.2E}",
            f"{row['params_reduction']:.1%}" if pruned else "",
        ])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(r, widths, strict=True)))
             for r in rows]
    return "\n".join(lines + [
        "MACs = multiply-accumulates of conv and linear layers per image (the paper's FLOP); "
        "params = conv and linear weights and biases; 'paper' = Li et al. 2017, Table 1."
    ])
