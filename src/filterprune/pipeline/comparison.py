"""The comparison section of report.md: methods x ratios with measured deployment metrics.

One row per method and ratio (the one-shot sweep is the method ``<criterion> one-shot``, e.g.
``l1 one-shot``; the others come from ``methods:``, filterprune.pipeline.methods), with top-1
after retraining, MACs, parameters and, when the deployment stage ran
(filterprune.pipeline.deployment), latency at the smallest and largest batch size, throughput,
the measured speed-up over the baseline, the MAC speed-up (baseline MACs / MACs) and their
ratio: how much of the MAC reduction became real speed. Two plots draw top-1 against MACs and
against latency, one line per method.
"""

from __future__ import annotations

from matplotlib.figure import Figure

from filterprune.pipeline.results import Baseline, PrunedRow, RunResults

COMPARE_MACS_PNG = "compare_accuracy_vs_macs.png"
COMPARE_LATENCY_PNG = "compare_accuracy_vs_latency.png"
TITLES = {COMPARE_MACS_PNG: "Top-1 vs MACs, per method",
          COMPARE_LATENCY_PNG: "Top-1 vs measured latency, per method"}


def method_rows(results: RunResults) -> dict[str, list[PrunedRow]]:
    """Method name -> its rows, largest MACs first, the one-shot sweep first (``l1 one-shot``;
    method names have no spaces, so it cannot clash with one)."""
    methods = {f"{results.criterion} one-shot": results.pruning, **results.methods}
    return {name: sorted(rows, key=lambda row: -row.macs) for name, rows in methods.items()}


def comparison_figures(results: RunResults) -> dict[str, Figure]:
    """The plots of the section: top-1 vs MACs and, with deployment metrics, vs latency."""
    methods = method_rows(results)
    baseline = results.baseline
    figures = {COMPARE_MACS_PNG: _figure(
        methods, baseline.top1, baseline.macs / 1e6, lambda row: row.macs / 1e6,
        "MACs (millions)")}
    deploy = results.deploy
    if deploy is not None:
        models = deploy["models"]
        batch = str(deploy["batch_sizes"][-1])
        figures[COMPARE_LATENCY_PNG] = _figure(
            methods, baseline.top1, models["baseline"]["metrics"][batch]["latency_ms"],
            lambda row: models[row.stage]["metrics"][batch]["latency_ms"],
            f"latency at batch {batch} (ms, median)")
    return figures


def comparison_lines(results: RunResults, fmt_count, table, fmt_top1) -> list[str]:
    """The Markdown of the section (``fmt_count``, ``table`` and ``fmt_top1`` (a top-1 and its
    interval) are report.py's formatters)."""
    methods = method_rows(results)
    baseline = results.baseline
    deploy = results.deploy
    header = ["method", "ratio / plan", "top-1 test (95% CI)", "MACs", "params"]
    lines = ["## Methods compared", ""]
    if deploy is not None:
        small, large = (str(b) for b in (deploy["batch_sizes"][0], deploy["batch_sizes"][-1]))
        both = f"b={small} / b={large}"
        header += [f"latency ms b={small}", f"latency ms b={large}", f"images/s b={large}",
                   f"speed-up {both}", "MAC speed-up", f"speed-up / MAC speed-up {both}",
                   f"vs same widths built directly {both}", f"peak MB b={large}", "size MB"]
        lines += [
            f"Measured on {deploy['device']} with {deploy['threads']} thread(s): latency is the "
            "median of one forward pass (IQR in brackets) in the fastest of "
            f"{deploy['rounds']} interleaved rounds; speed-up = baseline latency / "
            "latency; MAC speed-up = baseline MACs / MACs; their ratio is the share of the MAC "
            "reduction that became real speed. \"vs same widths\" is the "
            "latency over that of the same network built directly at its widths (1.00 = "
            "nothing left behind by pruning). Peak MB: tensor memory of one forward pass beyond "
            "the weights; size MB: the safetensors model file.", ""]
    def top1(record, value: float) -> str:
        return fmt_top1(value, None if record.intervals is None else record.intervals.top1)

    rows = [_row("baseline", None, top1(baseline, baseline.top1), baseline, baseline, deploy,
                 "baseline", fmt_count)]
    for name, method in methods.items():
        rows += [_row(name, row.label, top1(row, row.top1_after), row, baseline, deploy,
                      row.stage, fmt_count) for row in method]
    lines += table(header, rows)
    if any(getattr(row, "zeroed_conv_weights", None) is not None
           for rows in methods.values() for row in rows):
        lines += ["", "Unstructured rows zero that share of the conv weights but stay dense: "
                  "their MACs and latency are the baseline's."]
    return lines


def _row(name: str, label: str | None, top1: str, row: PrunedRow | Baseline,
         baseline: Baseline, deploy: dict | None, stage: str, fmt_count) -> list[str]:
    """One table row; ``label`` is the pruning point (None for the baseline), ``top1`` its
    formatted top-1."""
    cells = [name, label or "–", top1, fmt_count(row.macs), fmt_count(row.params)]
    if deploy is None:
        return cells
    model = deploy["models"].get(stage)
    if model is None:  # a run resumed from results without this model's file
        return cells + ["–"] * 9
    metrics = model["metrics"]
    base = deploy["models"]["baseline"]["metrics"]
    small, large = (str(b) for b in (deploy["batch_sizes"][0], deploy["batch_sizes"][-1]))
    mac_speedup = baseline.macs / row.macs
    speed = {b: base[b]["latency_ms"] / metrics[b]["latency_ms"] for b in (small, large)}
    return cells + [
        f"{metrics[small]['latency_ms']:.3f} ({metrics[small]['iqr_ms']:.3f})",
        f"{metrics[large]['latency_ms']:.3f} ({metrics[large]['iqr_ms']:.3f})",
        f"{metrics[large]['images_per_s']:.0f}",
        f"{speed[small]:.2f} / {speed[large]:.2f}",
        f"{mac_speedup:.2f}",
        f"{speed[small] / mac_speedup:.2f} / {speed[large] / mac_speedup:.2f}",
        f"{model['same_widths'][small]:.2f} / {model['same_widths'][large]:.2f}",
        f"{metrics[large]['peak_memory_mb']:.2f}",
        f"{model['size_mb']:.3f}",
    ]


def _figure(methods: dict[str, list[PrunedRow]], baseline_top1: float, baseline_x: float, x_of,
            label: str) -> Figure:
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for name, rows in methods.items():
        if rows:
            ax.plot([x_of(row) for row in rows], [row.top1_after for row in rows],
                    marker="o", label=name)
    ax.plot(baseline_x, baseline_top1, marker="*", markersize=14, color="black",
            linestyle="none", label="baseline")
    ax.set_xlabel(label)
    ax.set_ylabel("top-1 accuracy after retraining, test split (%)")
    ax.set_title(f"Top-1 vs {label.split(' (')[0]}, one line per method")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
