"""Markdown report and PNG plots for a finished pruning run.

The report follows the analyses of Li et al. (ICLR 2017): the sorted filter norms of each layer
(Fig. 2a), the sensitivity of each layer pruned alone without retraining (Fig. 2b), and the
accuracy of the one-shot pruned models before and after retraining against their cost.

Cost is counted in MACs (multiply-accumulates of the conv and linear layers), which is what the
paper calls "FLOP"; FLOPs are 2 x MACs.
"""

from __future__ import annotations

from pathlib import Path

from filterprune._io import atomic_write, atomic_write_text
from filterprune.engine.coverage import Coverage
from filterprune.pipeline.budget_section import BUDGET_TITLES, budget_figures, budget_lines
from filterprune.pipeline.comparison import TITLES as COMPARISON_TITLES
from filterprune.pipeline.comparison import comparison_figures, comparison_lines
from filterprune.pipeline.figures import (
    accuracy_vs_cost_figure,
    filter_norms_figure,
    sensitivity_figure,
)
from filterprune.pipeline.markdown import MISSING, acc, bracket, ci, drop, human, pct, table
from filterprune.pipeline.results import (
    Baseline,
    DatasetInfo,
    PrunedRow,
    RetrainedBaseline,
    RunResults,
    ScratchRow,
    SensitivityTable,
)
from filterprune.stats import Interval, interval_text, over_seeds

REPORT_NAME = "report.md"
SENSITIVITY_PNG = "sensitivity.png"
FILTER_NORMS_PNG = "filter_norms.png"
ACCURACY_VS_MACS_PNG = "accuracy_vs_macs.png"
ACCURACY_VS_PARAMS_PNG = "accuracy_vs_params.png"

_DPI = 120


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
        FILTER_NORMS_PNG: filter_norms_figure(results.filter_norms),
        ACCURACY_VS_MACS_PNG: accuracy_vs_cost_figure(pruning, baseline, "macs", "MACs"),
        ACCURACY_VS_PARAMS_PNG: accuracy_vs_cost_figure(pruning, baseline, "params", "parameters"),
    }
    if sensitivity is not None:
        figures = {SENSITIVITY_PNG: sensitivity_figure(
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
        f"{human(baseline.macs)} MACs, {human(baseline.params)} params; trained "
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
        lines += [""] + comparison_lines(results)
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
            human(row.macs),
            pct(row.macs_reduction),
            human(row.params),
            pct(row.params_reduction),
            ci(row.top1_before, iv and iv.top1_before),
            ci(row.top1_after, iv and iv.top1),
            _ci_drop(baseline.top1, row.top1_after, iv and iv.drop),
        ]
        if control is not None:
            cells.append(_ci_drop(control.top1, row.top1_after, iv and iv.drop_vs_retrained))
        if with_top5:
            cells += [
                acc(row.top5_before),
                acc(row.top5_after),
                drop(baseline.top5, row.top5_after),
            ]
        rows.append(cells)
    return table(header, rows)


def _ci_drop(reference: float, value: float, interval: Interval | None) -> str:
    """A drop from ``reference`` with its interval (``_drop``, ``_ci``)."""
    return drop(reference, value) + bracket(interval)


def _control_row(control: RetrainedBaseline, baseline: Baseline, with_top5: bool) -> list[str]:
    """The row of the baseline retrained as the pruned models are (the control)."""
    iv = control.intervals
    cells = ["baseline retrained (control)", human(baseline.macs), pct(0),
             human(baseline.params), pct(0), ci(baseline.top1, _top1_interval(baseline)),
             ci(control.top1, iv and iv.top1),
             _ci_drop(baseline.top1, control.top1, iv and iv.drop), MISSING]
    if with_top5:
        cells += [acc(baseline.top5), acc(control.top5), drop(baseline.top5, control.top5)]
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
               bracket(summary.interval).strip()]
        if drop is None:
            return [*row, MISSING, MISSING]
        lost = over_seeds(drop)
        return [*row, f"{lost.mean:.2f}", bracket(lost.interval).strip()]

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
    return lines + table(["ratio / plan", "top-1 mean", "std", "95% CI of the mean",
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
         ci(row.top1, _top1_interval(row)),
         ci(pruned[row.pruned].top1_after, _top1_interval(pruned[row.pruned]))]
        for row in sorted(scratch, key=lambda row: (-pruned[row.pruned].macs, row.kind))
    ]
    lines = ["The pruned architecture re-initialised at random and trained with the baseline's "
             "settings: scratch-E for the baseline's epochs, scratch-B for its compute (epochs x "
             "baseline MACs / pruned MACs; Liu et al. 2019).", ""]
    return lines + table(
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
    header = ["layer"] + [pct(r) for r in ratios]
    rows = [[f"`{name}`"] + [acc(v) for v in accs] for name, accs in layers.items()]
    lines = [f"Top-1 (%) on the {sensitivity.split} split with the given fraction of the "
             "layer's filters removed"
             + (" (no validation split was held out: choosing layers from it selects on the test "
                "split, which also gives the reported accuracies)."
                if sensitivity.split == "test" else
                ", held out of the training set so that choosing layers from it leaves the test "
                "split for the reported accuracies."), ""]
    lines += table(header, rows)
    if layers and ratios:
        last = max(range(len(ratios)), key=ratios.__getitem__)
        name = min(layers, key=lambda layer: layers[layer][last])
        top1 = layers[name][last]
        lines += [
            "",
            f"Most sensitive layer: `{name}` (top-1 {top1:.2f}% with {pct(ratios[last])} of its "
            f"filters removed, a drop of {drop(baseline_top1, top1)} points vs baseline).",
        ]
    return lines


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


