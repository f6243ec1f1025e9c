"""Markdown report and PNG plots for a finished pruning run.

The report follows the analyses of Li et al. (ICLR 2017): the sorted filter norms of each layer
(Fig. 2a), the sensitivity of each layer pruned alone without retraining (Fig. 2b), and the
accuracy of the one-shot pruned models before and after retraining against their cost.

Cost is counted in MACs (multiply-accumulates of the conv and linear layers), which is what the
paper calls "FLOP"; FLOPs are 2 x MACs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from filterprune._io import atomic_write, atomic_write_text
from filterprune.engine.budget import TOLERANCE
from filterprune.engine.coverage import Coverage
from filterprune.pipeline.comparison import TITLES as COMPARISON_TITLES
from filterprune.pipeline.comparison import comparison_figures, comparison_lines
from filterprune.pipeline.results import (
    Baseline,
    DatasetInfo,
    PrunedRow,
    RetrainedBaseline,
    RunResults,
    ScratchRow,
    SensitivityTable,
    Targets,
)
from filterprune.stats import Interval, interval_text, over_seeds

REPORT_NAME = "report.md"
SENSITIVITY_PNG = "sensitivity.png"
FILTER_NORMS_PNG = "filter_norms.png"
ACCURACY_VS_MACS_PNG = "accuracy_vs_macs.png"
ACCURACY_VS_PARAMS_PNG = "accuracy_vs_params.png"

_DPI = 120
_MISSING = "–"


def write_report(results: RunResults, out_dir: str | Path) -> list[Path]:
    """Writes report.md and the PNG plots into out_dir; returns the paths written.

    Everything is rendered before anything is written. Every file is written to a temporary file
    in ``out_dir`` and then moved into place, so an interrupted run never leaves a half-written
    file; the plots are written before report.md, which links them. When
    ``results.sensitivity`` is None no sensitivity plot is drawn, and once report.md is in
    place a stale ``sensitivity.png`` left in ``out_dir`` by an earlier run is removed, so the
    directory never shows a plot that does not belong to its report.

    Args:
        results: The results of a pipeline run.
        out_dir: The directory to write into; created if missing.

    Returns:
        The paths written, plots first and report.md last.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pruning = sorted(results.pruning, key=lambda row: -row.macs)
    sensitivity = results.sensitivity
    baseline = results.baseline

    figures = {
        FILTER_NORMS_PNG: _filter_norms_figure(results.filter_norms),
        ACCURACY_VS_MACS_PNG: _accuracy_vs_cost_figure(pruning, baseline, "macs", "MACs"),
        ACCURACY_VS_PARAMS_PNG: _accuracy_vs_cost_figure(pruning, baseline, "params", "parameters"),
    }
    if sensitivity is not None:
        figures = {SENSITIVITY_PNG: _sensitivity_figure(
            sensitivity, _sensitivity_baseline(sensitivity, baseline)), **figures}
    if _compares(results):
        figures |= comparison_figures(results)
    figures |= budget_figures(results)
    text = _render_markdown(results, pruning, list(figures))

    written = []
    for name, fig in figures.items():
        path = out / name
        written.append(
            atomic_write(path, lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=_DPI))
        )
    written.append(atomic_write_text(out / REPORT_NAME, text))
    if sensitivity is None:
        (out / SENSITIVITY_PNG).unlink(missing_ok=True)
    return written


def _compares(results: RunResults) -> bool:
    """Whether the report has the methods/deployment section (filterprune.pipeline.comparison)."""
    return bool(results.methods) or results.deploy is not None


# --- formatting -------------------------------------------------------------------------------


def _human(count: float) -> str:
    """Formats a count with a K/M/G/T suffix and two decimals, e.g. 7_900_000 -> "7.90M"."""
    if abs(count) < 1000:
        return f"{count:g}"
    suffixes = "KMGT"
    value, exponent = float(count), 0
    while abs(round(value, 2)) >= 1000 and exponent < len(suffixes):
        value /= 1000
        exponent += 1
    return f"{value:.2f}{suffixes[exponent - 1]}"


def _pct(fraction: float) -> str:
    """Formats a fraction in [0, 1] as a percentage with one decimal, e.g. 0.62 -> "62.0%"."""
    return f"{fraction * 100:.1f}%"


def _acc(value: float | None) -> str:
    """Formats an accuracy in % with two decimals, or a dash when missing."""
    return _MISSING if value is None else f"{value:.2f}"


def _ci(value: float | None, interval: Interval | None) -> str:
    """Formats a top-1 or a drop with its 95% interval, ``"90.80 (90.21 to 91.36)"``; the value
    alone when the interval is missing."""
    return _acc(value) + _bracket(interval)


def _bracket(interval: Interval | None) -> str:
    """``" (90.21 to 91.36)"``, or nothing without an interval."""
    return "" if interval is None else f" ({interval.low:.2f} to {interval.high:.2f})"


def _drop(baseline: float | None, value: float | None) -> str:
    """Formats baseline minus value in points with two decimals (positive = accuracy lost)."""
    if baseline is None or value is None:
        return _MISSING
    text = f"{baseline - value:.2f}"
    return "0.00" if text == "-0.00" else text


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Renders a Markdown table: the first column left-aligned, the others right-aligned."""
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join([":--"] + ["--:"] * (len(header) - 1)) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


# --- markdown ---------------------------------------------------------------------------------


def _render_markdown(results: RunResults, pruning: list[PrunedRow], plots: list[str]) -> str:
    """Renders report.md.

    Args:
        results: The results of the run.
        pruning: The pruning rows, largest MACs first.
        plots: The file names of the plots written, in the order to embed them.

    Returns:
        The Markdown text.
    """
    dataset = results.dataset
    baseline = results.baseline
    env = vars(results.environment)
    lines = [
        f"# Filter pruning report: {results.model} on {dataset.name}",
        "",
        f"Criterion `{results.criterion}`, strategy `{results.strategy}`, residual policy "
        f"`{results.residual}`; dataset "
        f"{dataset.name} ({_splits(dataset)}, {dataset.num_classes} classes).",
        "",
        "Environment: " + ", ".join(f"{key} {value}" for key, value in env.items()) + ".",
        "",
        *([] if results.calibration is None else [results.calibration["reason"] + ".", ""]),
        *_coverage_lines(results.coverage),
        'MACs are the multiply-accumulates of the conv and linear layers (the paper\'s "FLOP"; '
        "FLOPs = 2 x MACs). `ratio` is the fraction of filters removed from every pruned layer.",
        "",
        "## Baseline",
        "",
    ]
    top5 = "" if baseline.top5 is None else f", top-5 {baseline.top5:.2f}%"
    lines += [
        f"Top-1 {_top1_text(baseline)}{top5}{_images(baseline)}, "
        f"{_human(baseline.macs)} MACs, {_human(baseline.params)} params; trained "
        f"{baseline.epochs} epochs in {baseline.train_time_s:.1f} s.",
        "",
        f"## {_schedule_title(pruning)} pruning of all layers",
        "",
    ]
    lines += _pruning_table(pruning, baseline, results.baseline_retrained)
    epochs = sorted({row.retrain_epochs for row in pruning})
    if epochs:
        lines += ["", f"Retraining epochs per pruned model: {', '.join(map(str, epochs))}."]
    lines += _interval_notes(results)
    if results.repeats:
        lines += _seeds_section(results)
    if results.scratch:
        lines += ["", "## Pruned architectures trained from scratch (controls)", ""]
        lines += _scratch_table(results.scratch, pruning)

    sensitivity = results.sensitivity
    if sensitivity is not None:
        retrained = sensitivity.retrain_epochs
        how = f"retrained {retrained} epochs" if retrained else "no retraining"
        lines += ["", f"## Sensitivity of each layer pruned alone ({how})", ""]
        lines += _sensitivity_section(sensitivity, _sensitivity_baseline(sensitivity, baseline))

    if _compares(results):
        lines += [""] + comparison_lines(results, _human, _table, _ci)
    lines += budget_lines(results)

    titles = {
        SENSITIVITY_PNG: "Sensitivity to pruning",
        FILTER_NORMS_PNG: "Sorted filter L1 norms",
        ACCURACY_VS_MACS_PNG: "Top-1 accuracy vs MACs",
        ACCURACY_VS_PARAMS_PNG: "Top-1 accuracy vs parameters",
        **COMPARISON_TITLES,
        **BUDGET_TITLES,
    }
    lines += ["", "## Plots"]
    for name in plots:
        lines += ["", f"![{titles[name]}]({name})"]
    lines += ["", f"Wall time: {results.wall_time_s:.1f} s (every session of the run).", ""]
    return "\n".join(lines)


def _splits(dataset: DatasetInfo) -> str:
    """``"4500 train / 500 validation / 1000 test images"`` and what each split is for."""
    if not dataset.validation_size:
        return (f"{dataset.train_size} train / {dataset.test_size} test images; no validation "
                "split held out, so the sensitivity is measured on the test split")
    return (f"{dataset.train_size} train / {dataset.validation_size} validation (held out of "
            f"the training set; the sensitivity is measured on it) / {dataset.test_size} test "
            "images (the reported accuracies)")


def _top1_text(record) -> str:
    """``"87.00% (95% CI 84.77 to 88.94)"``, or ``"87.00%"`` without an interval."""
    interval = _top1_interval(record)
    return f"{record.top1:.2f}%" if interval is None else interval_text(interval)


def _top1_interval(record) -> Interval | None:
    return None if record.intervals is None else record.intervals.top1


def _images(record) -> str:
    """``" on 10000 test images"``, when the record's intervals say."""
    iv = record.intervals
    return "" if iv is None else f" on {iv.n} {iv.split} images"


def _interval_notes(results: RunResults) -> list[str]:
    """How the intervals are computed, and what the control for extra training is."""
    iv = results.baseline.intervals
    lines = []
    if iv is not None:
        paired = all(row.correct is not None for row in [results.baseline, *results.pruning])
        lines += ["", f"Top-1 in % on the {iv.n} images of the {iv.split} split, with its 95% "
                  "interval in brackets (Wilson score); each drop (points, positive = accuracy "
                  "lost) with its 95% interval "
                  + ("paired on the same images (Newcombe), narrower than the two top-1 "
                     "intervals suggest." if paired else
                     "(unpaired: a record without per-image outcomes; resume or rerun the run "
                     "for paired ones).")]
    control = results.baseline_retrained
    if control is not None:
        lines += ["", f"The pruned models are retrained for {control.epochs} epoch(s) the "
                  "baseline never had; the control row is the baseline retrained the same way, "
                  "and each row's drop from it is what pruning costs beyond what extra training "
                  "gains."]
    return lines


def _pruning_table(
    pruning: list[PrunedRow], baseline: Baseline, control: RetrainedBaseline | None = None
) -> list[str]:
    """Renders the main table, one row per pruning point after the control for extra training
    (when it ran); top-5 columns when any is known."""
    with_top5 = baseline.top5 is not None or any(
        value is not None for row in pruning for value in (row.top5_before, row.top5_after)
    )
    header = [
        "ratio / plan",
        "MACs",
        "MACs reduction",
        "params",
        "params reduction",
        "top-1 before retraining (test)",
        "top-1 after retraining (test)",
        "drop vs baseline (after)",
    ]
    if control is not None:
        header.append("drop vs baseline retrained (after)")
    if with_top5:
        header += ["top-5 before retraining", "top-5 after retraining", "top-5 drop (after)"]
    rows = [] if control is None else [_control_row(control, baseline, with_top5)]
    for row in pruning:
        iv = row.intervals
        cells = [
            row.label,
            _human(row.macs),
            _pct(row.macs_reduction),
            _human(row.params),
            _pct(row.params_reduction),
            _ci(row.top1_before, iv and iv.top1_before),
            _ci(row.top1_after, iv and iv.top1),
            _ci_drop(baseline.top1, row.top1_after, iv and iv.drop),
        ]
        if control is not None:
            cells.append(_ci_drop(control.top1, row.top1_after, iv and iv.drop_vs_retrained))
        if with_top5:
            cells += [
                _acc(row.top5_before),
                _acc(row.top5_after),
                _drop(baseline.top5, row.top5_after),
            ]
        rows.append(cells)
    return _table(header, rows)


def _ci_drop(reference: float, value: float, interval: Interval | None) -> str:
    """A drop from ``reference`` with its interval (``_drop``, ``_ci``)."""
    return _drop(reference, value) + _bracket(interval)


def _control_row(control: RetrainedBaseline, baseline: Baseline, with_top5: bool) -> list[str]:
    """The row of the baseline retrained as the pruned models are (the control)."""
    iv = control.intervals
    cells = ["baseline retrained (control)", _human(baseline.macs), _pct(0),
             _human(baseline.params), _pct(0), _ci(baseline.top1, _top1_interval(baseline)),
             _ci(control.top1, iv and iv.top1),
             _ci_drop(baseline.top1, control.top1, iv and iv.drop), _MISSING]
    if with_top5:
        cells += [_acc(baseline.top5), _acc(control.top5), _drop(baseline.top5, control.top5)]
    return cells


def _seeds_section(results: RunResults) -> list[str]:
    """Each row's top-1 after retraining and drop from its seed's baseline over the seeds
    (``filterprune.stats.over_seeds``: mean, sample standard deviation, Student-t interval)."""
    runs = [(results.environment.seed, results.baseline, results.pruning)] + [
        (r.seed, r.baseline, r.pruning) for r in results.repeats]
    seeds = [seed for seed, _, _ in runs]

    def cells(label: str, top1: list[float], drop: list[float] | None) -> list[str]:
        summary = over_seeds(top1)
        row = [label, f"{summary.mean:.2f}", f"{summary.std:.2f}",
               _bracket(summary.interval).strip()]
        if drop is None:
            return [*row, _MISSING, _MISSING]
        lost = over_seeds(drop)
        return [*row, f"{lost.mean:.2f}", _bracket(lost.interval).strip()]

    rows = [cells("baseline", [base.top1 for _, base, _ in runs], None)]
    for i, row in enumerate(results.pruning):
        rows.append(cells(row.label, [pruning[i].top1_after for _, _, pruning in runs],
                          [base.top1 - pruning[i].top1_after for _, base, pruning in runs]))
    lines = ["", f"## Repeated over {len(runs)} seeds", "",
             f"The baseline and the sweep trained with seeds {', '.join(map(str, seeds))} (the "
             "tables above are seed "
             f"{seeds[0]}'s): top-1 after retraining on the test split, its mean, sample "
             "standard deviation and the 95% Student-t interval of the mean over the seeds; the "
             "drop is each seed's baseline minus its pruned model.", ""]
    return lines + _table(["ratio / plan", "top-1 mean", "std", "95% CI of the mean",
                           "drop mean", "95% CI of the drop"], rows)


def _schedule_title(pruning: list[PrunedRow]) -> str:
    """"One-shot" or "Iterative" (Li et al. 2017, §3.4), from the rows' schedule."""
    iterative = any(row.schedule == "iterative" for row in pruning)
    return "Iterative" if iterative else "One-shot"


def _scratch_table(scratch: list[ScratchRow], pruning: list[PrunedRow]) -> list[str]:
    """Renders the from-scratch controls (scratch-E, scratch-B) next to pruned + retrained."""
    pruned = {row.stage: row for row in pruning}
    rows = [
        [pruned[row.pruned].label, f"scratch-{row.kind}", str(row.epochs),
         _ci(row.top1, _top1_interval(row)),
         _ci(pruned[row.pruned].top1_after, _top1_interval(pruned[row.pruned]))]
        for row in sorted(scratch, key=lambda row: (-pruned[row.pruned].macs, row.kind))
    ]
    lines = ["The pruned architecture re-initialised at random and trained with the baseline's "
             "settings: scratch-E for the baseline's epochs, scratch-B for its compute (epochs x "
             "baseline MACs / pruned MACs; Liu et al. 2019).", ""]
    return lines + _table(
        ["ratio / plan", "control", "epochs", "top-1 from scratch", "top-1 pruned + retrained"],
        rows
    )


def _sensitivity_baseline(sensitivity: SensitivityTable, baseline: Baseline) -> float:
    """The baseline's top-1 on the sensitivity's split (its test top-1 in older records)."""
    return baseline.top1 if sensitivity.baseline_top1 is None else sensitivity.baseline_top1


def _sensitivity_section(sensitivity: SensitivityTable, baseline_top1: float) -> list[str]:
    """Renders the sensitivity table (layers x ratios, top-1 % on its split) and names the most
    sensitive layer; ``baseline_top1`` is the baseline's on that split.

    The most sensitive layer is the one with the largest accuracy drop at the highest ratio.
    """
    ratios = list(sensitivity.ratios)
    layers = sensitivity.layers
    header = ["layer"] + [_pct(r) for r in ratios]
    rows = [[f"`{name}`"] + [_acc(v) for v in accs] for name, accs in layers.items()]
    lines = [f"Top-1 (%) on the {sensitivity.split} split with the given fraction of the "
             "layer's filters removed"
             + (" (no validation split was held out: choosing layers from it selects on the test "
                "split, which also gives the reported accuracies)."
                if sensitivity.split == "test" else
                ", held out of the training set so that choosing layers from it leaves the test "
                "split for the reported accuracies."), ""]
    lines += _table(header, rows)
    if layers and ratios:
        last = int(np.argmax(ratios))
        name = min(layers, key=lambda layer: layers[layer][last])
        top1 = layers[name][last]
        lines += [
            "",
            f"Most sensitive layer: `{name}` (top-1 {top1:.2f}% with {_pct(ratios[last])} of its "
            f"filters removed, a drop of {_drop(baseline_top1, top1)} points vs baseline).",
        ]
    return lines


# --- plots ------------------------------------------------------------------------------------


def _layer_colors(n: int) -> list:
    """Returns n distinct colours: tab10 up to 10 layers, then samples of viridis."""
    if n <= 10:
        return [f"C{i}" for i in range(n)]
    return list(colormaps["viridis"](np.linspace(0, 0.95, n)))


def _legend(ax, n: int) -> None:
    """Adds a legend sized for n entries."""
    ax.legend(fontsize=8 if n <= 8 else 7, ncol=1 if n <= 8 else 2)


def _sensitivity_figure(sensitivity: SensitivityTable, baseline_top1: float) -> Figure:
    """Top-1 vs % of filters removed, one curve per layer pruned alone (Li et al. Fig. 2b)."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    x = np.asarray(sensitivity.ratios, dtype=float) * 100
    layers = sensitivity.layers
    for (name, accs), color in zip(layers.items(), _layer_colors(len(layers)), strict=True):
        ax.plot(x, accs, marker="o", markersize=3, color=color, label=name)
    ax.axhline(baseline_top1, color="black", linestyle="--", linewidth=1, label="baseline")
    ax.set_xlabel("filters pruned away (%)")
    ax.set_ylabel(f"top-1 accuracy on the {sensitivity.split} split (%)")
    ax.set_title("Sensitivity to pruning (each layer alone, no retraining)")
    ax.grid(alpha=0.3)
    _legend(ax, len(layers) + 1)
    fig.tight_layout()
    return fig


def _filter_norms_figure(filter_norms: dict) -> Figure:
    """Sorted normalised filter L1 norms vs filter index as a fraction (Li et al. Fig. 2a)."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for (name, norms), color in zip(
        filter_norms.items(), _layer_colors(len(filter_norms)), strict=True
    ):
        ax.plot(np.linspace(0, 1, len(norms)), norms, color=color, label=f"{name} ({len(norms)})")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("filter index / number of filters (sorted by L1 norm)")
    ax.set_ylabel("L1 norm / max L1 norm")
    ax.set_title("Sorted filter L1 norms per layer")
    ax.grid(alpha=0.3)
    _legend(ax, len(filter_norms))
    fig.tight_layout()
    return fig


def _accuracy_vs_cost_figure(
    pruning: list[PrunedRow], baseline: Baseline, key: str, label: str
) -> Figure:
    """Top-1 before and after retraining vs the cost of the pruned models, baseline marked.

    Args:
        pruning: The pruning rows, largest MACs first.
        baseline: The baseline of the results.
        key: The cost field of the rows and the baseline: "macs" or "params".
        label: The cost name for the axis label.

    Returns:
        The figure.
    """
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    x = [getattr(row, key) / 1e6 for row in pruning]
    ax.plot(x, [row.top1_before for row in pruning], marker="o", label="before retraining")
    ax.plot(x, [row.top1_after for row in pruning], marker="s", label="after retraining")
    for xi, row in zip(x, pruning, strict=True):
        ax.annotate(
            row.label,
            (xi, row.top1_after),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=7,
        )
    ax.plot(
        getattr(baseline, key) / 1e6,
        baseline.top1,
        marker="*",
        markersize=14,
        color="black",
        linestyle="none",
        label="baseline",
    )
    ax.set_xlabel(f"{label} (millions)")
    ax.set_ylabel("top-1 accuracy on the test split (%)")
    ax.set_title(f"Top-1 accuracy vs {label} (labels: ratio of filters removed, or plan)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _coverage_lines(reach: Coverage) -> list[str]:
    """What share of the conv MACs pruning reaches, and the largest blocked convs (3 at most)."""
    lines = [f"Pruning every layer reaches {reach.reached_share:.0%} of the conv MACs "
             f"(a conv is reached when its filters or its inputs shrink)."]
    blocked = sorted(reach.blocked, key=lambda b: -b.macs)
    if blocked:
        lines[0] += f" {len(blocked)} conv(s) cannot be pruned; the largest:"
        lines += [f"- `{b.name}` ({b.macs / reach.conv_macs:.1%} of the conv MACs): "
                  f"{b.reason}" for b in blocked[:3]]
    return [*lines, ""]


# --- budgets (filterprune.pipeline.targets) ---------------------------------------------------

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
        table = targets.latency_table
        lines += ["", f"Latency shares are predicted from a latency table measured on "
                  f"{table['device']} ({table['threads']} thread(s), input "
                  f"{tuple(table['input_shape'])}, model {table['model_ms']:.3f} ms): sums of "
                  "per-layer savings, an estimate (the deployment stage, when enabled, "
                  "measures the models)."]
    rows = sorted(targets.rows, key=lambda row: (row.target, targets.ways.index(row.way)))
    missed = [row for row in rows
              if abs(row.budget["achieved"] - row.target) > TOLERANCE + 1e-9]
    lines += [""] + _table(
        ["target", "way", f"achieved {cost} reduction", "MACs", "params",
         "top-1 before retraining", "top-1 after retraining", "drop vs baseline (after)"],
        [[_pct(row.target), row.way,
          _pct(row.budget["achieved"]) + ("*" if row in missed else ""),
          _human(row.macs), _human(row.params), _acc(row.top1_before), _acc(row.top1_after),
          _drop(baseline.top1, row.top1_after)] for row in rows])
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
    lines += ["", f"Chosen ratio (fraction of filters removed) of each layer; {_MISSING}: left "
              "whole.", ""]
    lines += _table(["layer"] + [row.label for row in rows],
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
    return _MISSING if ratio is None else f"{ratio:.2f}"


def _budget_figure(targets: Targets, baseline_top1: float, baseline_x: float, x_of,
                   label: str) -> Figure:
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for i, way in enumerate(targets.ways):
        mine = sorted((row for row in targets.rows if row.way == way), key=x_of)
        x = [x_of(row) for row in mine]
        ax.plot(x, [row.top1_after for row in mine], marker="o", color=f"C{i}",
                label=f"{way}, after retraining")
        ax.plot(x, [row.top1_before for row in mine], marker="x", linestyle="--",
                color=f"C{i}", alpha=0.6, label=f"{way}, before retraining")
    ax.plot(baseline_x, baseline_top1, marker="*", markersize=14, color="black",
            linestyle="none", label="baseline")
    ax.set_xlabel(label)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"Top-1 vs {label.split(' (')[0]} at target budgets, per way of choosing")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
