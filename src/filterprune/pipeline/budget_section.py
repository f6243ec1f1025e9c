"""The "Budgets" section of report.md (``prune.targets``, filterprune.pipeline.targets): per
target share and way of choosing the per-layer ratios, the achieved share, cost and top-1 before
and after retraining, the chosen ratio of every layer, and top-1 against MACs (and measured
latency) per way."""

from __future__ import annotations

from matplotlib.figure import Figure

from filterprune.engine.budget import TOLERANCE
from filterprune.pipeline.figures import finish, mark_baseline, new_figure
from filterprune.pipeline.markdown import MISSING, acc, drop, human, pct, table
from filterprune.pipeline.results import RunResults, Targets

BUDGETS_MACS_PNG = "budgets_accuracy_vs_macs.png"
BUDGETS_LATENCY_PNG = "budgets_accuracy_vs_latency.png"
BUDGET_TITLES = {BUDGETS_MACS_PNG: "Top-1 vs MACs, per way of choosing the ratios",
                 BUDGETS_LATENCY_PNG: "Top-1 vs measured latency, per way of choosing the ratios"}
_WAY_NAMES = {"uniform": "one ratio for every prunable layer, the nearest to the target",
              "global": "global ranking of the filters' scores normalised per layer "
                        "(Torch-Pruning's global pruning; no data)",
              "sensitivity": "the least predicted loss from the sensitivity curves (Li et al. "
                             "2017, §3.2; NNI's SensitivityPruner, NetAdapt's cost per step)"}
_COST_NAMES = {"macs": "MACs", "params": "parameters", "latency": "latency"}


def budget_lines(results: RunResults) -> list[str]:
    """The "Budgets" section: per target and way of choosing, the achieved share, cost and top-1
    before and after retraining, then the chosen ratio of every layer; none without targets."""
    targets = results.targets
    if targets is None:
        return []
    baseline, cost = results.baseline, _COST_NAMES[targets.cost]
    lines = ["", f"## Budgets: target shares of the {cost} removed", "",
             f"Each share of the baseline's {cost} removed from the same baseline, the per-layer "
             "ratios chosen each way (filterprune.engine.budget), pruned one-shot and retrained "
             "like the sweep:", ""]
    lines += [f"- `{way}`: {_WAY_NAMES[way]}" for way in targets.ways]
    lines += [f"- `{way}` did not run: {why}." for way, why in targets.skipped.items()]
    if targets.latency_table is not None:
        measured = targets.latency_table
        lines += ["", f"Latency shares are predicted from a latency table measured on "
                  f"{measured['device']} ({measured['threads']} thread(s), input "
                  f"{tuple(measured['input_shape'])}, model {measured['model_ms']:.3f} ms): "
                  "sums of per-layer savings, an estimate (the deployment stage, when enabled, "
                  "measures the models)."]
    rows = sorted(targets.rows, key=lambda row: (row.target, targets.ways.index(row.way)))
    missed = [row for row in rows
              if abs(row.budget["achieved"] - row.target) > TOLERANCE + 1e-9]
    lines += [""] + table(
        ["target", "way", f"achieved {cost} reduction", "MACs", "params",
         "top-1 before retraining", "top-1 after retraining", "drop vs baseline (after)"],
        [[pct(row.target), row.way,
          pct(row.budget["achieved"]) + ("*" if row in missed else ""),
          human(row.macs), human(row.params), acc(row.top1_before), acc(row.top1_after),
          drop(baseline.top1, row.top1_after)] for row in rows])
    if missed:
        lines += ["", f"\\* not within {TOLERANCE:.0%} of the target: the steps the "
                  "layers' filter counts (and `round_to`, the skip list, the largest measured "
                  "sensitivity ratio) allow are coarse here."]
    unmeasured = sorted({name for row in rows for name in row.budget["unmeasured"]})
    if unmeasured:
        lines += ["", "Left whole by the sensitivity-driven way (no sensitivity curve): "
                  + ", ".join(f"`{name}`" for name in unmeasured) + "."]
    deploy = results.deploy
    if deploy is not None and all(row.stage in deploy["models"] for row in rows):
        lines += ["", f"The deployment stage measured these models on {deploy['device']} "
                  f"(`{BUDGETS_LATENCY_PNG}`: latency at batch {deploy['batch_sizes'][-1]})"
                  + ("." if deploy["reliable"] else ": the machine was too busy for reliable "
                     "times (spread over `deploy.max_spread`), compare them with care.")]
    layers = [name for name in results.filter_norms
              if any(name in row.budget["ratios"] for row in rows)]
    layers += sorted({name for row in rows for name in row.budget["ratios"]} - set(layers))
    lines += ["", f"Chosen ratio (fraction of filters removed) of each layer; {MISSING}: left "
              "whole.", ""]
    lines += table(["layer"] + [row.label for row in rows],
                    [[f"`{name}`"] + [_ratio_cell(row.budget["ratios"].get(name)) for row in rows]
                     for name in layers])
    return lines


def budget_figures(results: RunResults) -> dict[str, Figure]:
    """Top-1 before and after retraining against MACs, one line per way of choosing, and
    against measured latency when the deployment stage measured every target's model; none
    without targets."""
    targets = results.targets
    if targets is None:
        return {}
    baseline = results.baseline
    figures = {BUDGETS_MACS_PNG: _budget_figure(
        targets, baseline.top1, baseline.macs / 1e6, lambda row: row.macs / 1e6,
        "MACs (millions)")}
    deploy = results.deploy
    if deploy is not None and all(row.stage in deploy["models"] for row in targets.rows):
        models, batch = deploy["models"], str(deploy["batch_sizes"][-1])
        figures[BUDGETS_LATENCY_PNG] = _budget_figure(
            targets, baseline.top1, models["baseline"]["metrics"][batch]["latency_ms"],
            lambda row: models[row.stage]["metrics"][batch]["latency_ms"],
            f"latency at batch {batch} (ms, median)")
    return figures


def _ratio_cell(ratio: float | None) -> str:
    return MISSING if ratio is None else f"{ratio:.2f}"


def _budget_figure(targets: Targets, baseline_top1: float, baseline_x: float, x_of,
                   label: str) -> Figure:
    """Top-1 before and after retraining against ``x_of(row)``, one colour per way."""
    fig, ax = new_figure()
    for i, way in enumerate(targets.ways):
        mine = sorted((row for row in targets.rows if row.way == way), key=x_of)
        x = [x_of(row) for row in mine]
        ax.plot(x, [row.top1_after for row in mine], marker="o", color=f"C{i}",
                label=f"{way}, after retraining")
        ax.plot(x, [row.top1_before for row in mine], marker="x", linestyle="--",
                color=f"C{i}", alpha=0.6, label=f"{way}, before retraining")
    mark_baseline(ax, baseline_x, baseline_top1)
    return finish(fig, ax, label, "top-1 accuracy on the test split (%)",
                  f"Top-1 vs {label.split(' (')[0]} at target budgets, per way of choosing",
                  2 * len(targets.ways) + 1)
