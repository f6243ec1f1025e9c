"""``filterprune prune (--checkpoint M | --model SPEC) (--ratio R | --target COST=S)``: remove
filters from a model."""

from __future__ import annotations

import argparse
from pathlib import Path

from filterprune.analysis import SensitivityResult
from filterprune.checkpoint import save_model
from filterprune.cli._common import add_model_arguments, model_from_args
from filterprune.engine import (
    RESIDUAL_POLICIES,
    PruningPlan,
    apply_plan,
    plan_pruning,
    profile,
    trace,
)
from filterprune.engine.criteria import CRITERIA
from filterprune.engine.plan import STRATEGIES, RatioSpec
from filterprune.errors import FilterpruneError
from filterprune.latency_table import LatencyTable


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "prune", parents=[common], help="prune the filters of a model",
        description="Score filters, keep the best ones at the given ratios and save the smaller "
        "model with its plan (OUT and OUT's .plan.json). Li et al. 2017, §3.",
    )
    add_model_arguments(parser, "model to prune")
    parser.add_argument(
        "--ratio", action="append", default=[], metavar="R | NAME=R",
        help="fraction of filters removed, in [0, 1): one value for all prunable convs, or "
        "NAME=R per layer name or glob pattern (repeatable, e.g. 'layer1.*.conv1=0.3')",
    )
    parser.add_argument(
        "--target", metavar="COST=S",
        help="instead of --ratio: remove the share S in (0, 1) of the model's macs, params or "
        "latency (e.g. macs=0.5); per-layer ratios by global ranking, or from --sensitivity",
    )
    parser.add_argument("--sensitivity", metavar="JSON",
                        help="with --target: a sensitivity result of this model (filterprune "
                        "sensitivity --json output); the ratios follow its curves")
    parser.add_argument("--latency-table", metavar="JSON",
                        help="with --target latency=S: the model's latency table on the target "
                        "device (filterprune.latency_table(...).save)")
    parser.add_argument("--skip", action="append", default=[], metavar="NAME",
                        help="layer name or pattern left unpruned (repeatable)")
    parser.add_argument("--criterion", default="l1", choices=sorted(CRITERIA))
    parser.add_argument("--strategy", default="independent", choices=STRATEGIES)
    parser.add_argument(
        "--residual", default="inner", choices=RESIDUAL_POLICIES,
        help="inner: only convs whose outputs no other layer shares (not those added to a "
        "shortcut); coupled: also the channels of residual stages, all members at once",
    )
    parser.add_argument(
        "--score-by", action="append", default=[], metavar="NAME",
        help="with --residual coupled: the member layers (names or patterns, repeatable) whose "
        "scores choose a shared group's filters, e.g. '*.downsample.0' (pruned-C)",
    )
    parser.add_argument("--prune-linear", action="store_true",
                        help="also prune the hidden Linear layers of classifier heads (never "
                        "the output layer); the paper prunes convs only")
    parser.add_argument("--allow-approximate", action="store_true",
                        help="also prune through LayerNorm/GroupNorm over channels and "
                        "weight-standardised convs (the pruned model then differs beyond the "
                        "removed channels; the plan marks those layers approximate)")
    parser.add_argument("--round-to", type=int, default=1,
                        help="round kept filter counts to a multiple of this")
    parser.add_argument("--strict", action="store_true",
                        help="fail (exit 2) instead of warning when the pruning reaches less "
                        "than half of the requested conv MACs")
    parser.add_argument("--plan", help="apply this plan (JSON) instead of choosing filters")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan and the resulting costs; write nothing")
    parser.add_argument("--out",
                        help="pruned model file (default with --checkpoint: "
                        "<checkpoint>-pruned.safetensors)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.set_defaults(run=run, render=render)


def parse_ratio(values: list[str]) -> RatioSpec:
    """``["0.5"]`` -> 0.5; ``["a=0.3", "b.*=0.5"]`` -> {"a": 0.3, "b.*": 0.5}.

    Raises:
        FilterpruneError: a value that is not a number.
    """
    def number(text: str) -> float:
        try:
            return float(text)
        except ValueError:
            raise FilterpruneError(f"ratio '{text}' is not a number") from None

    if len(values) == 1 and "=" not in values[0]:
        return number(values[0])
    pairs = [value.rpartition("=") for value in values]
    if any(not sep or not name for name, sep, _ in pairs):
        raise FilterpruneError("with several --ratio values, each must be NAME=R")
    return {name: number(ratio) for name, _, ratio in pairs}


def parse_target(text: str) -> dict[str, float]:
    """``"macs=0.5"`` -> {"macs": 0.5} (the cost and share are checked by ``prune``).

    Raises:
        FilterpruneError: not COST=S with S a number.
    """
    kind, sep, share = text.partition("=")
    if sep and kind:
        try:
            return {kind: float(share)}
        except ValueError:
            pass
    raise FilterpruneError(f"--target '{text}' is not COST=S, e.g. macs=0.5")


def run(args: argparse.Namespace) -> dict:
    if sum(map(bool, (args.ratio, args.plan, args.target))) != 1:
        raise FilterpruneError("give one of --ratio, --target and --plan")
    if (args.sensitivity or args.latency_table) and not args.target:
        raise FilterpruneError("--sensitivity and --latency-table go with --target")
    if args.out is not None:
        out = Path(args.out)
    elif args.checkpoint is not None:
        out = Path(args.checkpoint).with_name(f"{Path(args.checkpoint).stem}-pruned.safetensors")
    elif not args.dry_run:
        raise FilterpruneError("give --out FILE for the pruned model")
    if not args.dry_run and out.exists() and not args.overwrite:
        raise FilterpruneError(f"{out} exists (use --overwrite)")
    model, spec = model_from_args(args)
    example = spec.example_input()
    reach = budget = None
    if args.plan:
        graph = trace(model, example, residual=args.residual, prune_linear=args.prune_linear,
                      exact=not args.allow_approximate)
        plan = PruningPlan.load(args.plan)
    else:
        choice = ({"ratio": parse_ratio(args.ratio)} if args.ratio else {
            "target": parse_target(args.target),
            "sensitivity": SensitivityResult.load(args.sensitivity) if args.sensitivity else None,
            "latency": LatencyTable.load(args.latency_table) if args.latency_table else None})
        planned = plan_pruning(
            model, example, **choice, criterion=args.criterion,
            strategy=args.strategy, skip=args.skip, round_to=args.round_to,
            residual=args.residual, score_by=args.score_by, strict=args.strict,
            prune_linear=args.prune_linear, exact=not args.allow_approximate,
        )
        plan, graph, reach, budget = (planned.plan, planned.graph, planned.coverage,
                                      planned.budget)
    pruned = apply_plan(model, plan, graph)
    before, after = graph.profile, profile(pruned, example)  # before: counted while tracing
    result = {
        "plan": plan.to_dict(), "plan_text": str(plan),
        "macs_before": before.macs, "macs_after": after.macs,
        "params_before": before.params, "params_after": after.params,
        "macs_reduction": 1 - after.macs / before.macs,
        "params_reduction": 1 - after.params / before.params,
        "coverage": None if reach is None else reach.to_dict(),
        "budget": None if budget is None else budget.to_dict(),
    }
    if not args.dry_run:
        spec.plan = plan if spec.plan is None else spec.plan.then(plan)
        save_model(out, pruned, spec)
        plan.save(out.with_suffix(".plan.json"))
        result["checkpoint"] = str(out)
    return result


def render(result: dict) -> str:
    lines = [result["plan_text"],
             f"MACs   {result['macs_before']:,} -> {result['macs_after']:,} "
             f"(-{result['macs_reduction']:.1%})",
             f"params {result['params_before']:,} -> {result['params_after']:,} "
             f"(-{result['params_reduction']:.1%})"]
    if result["coverage"] is not None:
        reach = result["coverage"]
        lines.append(f"reached {reach['reached_share']:.0%} of the requested conv MACs "
                     f"({reach['prunable_share']:.0%} of all conv MACs are prunable; "
                     f"{len(reach['blocked'])} conv(s) blocked, listed in --json)")
    if result["budget"] is not None:
        budget = result["budget"]
        lines.append(f"{budget['method']} allocation for {budget['target']}="
                     f"{budget['share']:g}: removed {budget['achieved']:.1%}"
                     + (" (predicted from the latency table)"
                        if budget["target"] == "latency" else ""))
    if "checkpoint" in result:
        lines.append(f"saved {result['checkpoint']}")
    return "\n".join(lines)
