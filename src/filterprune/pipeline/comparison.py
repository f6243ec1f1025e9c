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

from filterprune.pipeline.figures import finish, mark_baseline, new_figure
from filterprune.pipeline.markdown import ci, human, table
from filterprune.pipeline.results import Baseline, PrunedRow, RunResults

COMPARE_MACS_PNG = "compare_accuracy_vs_macs.png"
COMPARE_LATENCY_PNG = "compare_accuracy_vs_latency.png"
DAGGER = "†"
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
        methods, baseline.top1, (baseline.macs / 1e6,) * 3, lambda row: (row.macs / 1e6,) * 3,
        "MACs (millions)")}
    deploy = results.deploy
    if deploy is not None:
        models = deploy["models"]
        batch = str(deploy["batch_sizes"][-1])
        def latency(stage: str) -> tuple[float, float, float]:
            m = models[stage]["metrics"][batch]
            return m["latency_ms"], m["latency_low_ms"], m["latency_high_ms"]

        figures[COMPARE_LATENCY_PNG] = _figure(
            methods, baseline.top1, latency("baseline"), lambda row: latency(row.stage),
            f"latency at batch {batch} (ms, median; bars: 95% interval)")
    return figures


def comparison_lines(results: RunResults) -> list[str]:
    """The Markdown of the section."""
    methods = method_rows(results)
    baseline = results.baseline
    deploy = results.deploy
    header = ["method", "ratio / plan", "top-1 test (95% CI)", "MACs", "params"]
    lines = ["## Methods compared", ""]
    unreliable: dict[str, str] = {}  # what -> why, for the footnotes
    if deploy is not None:
        small, large = (str(b) for b in (deploy["batch_sizes"][0], deploy["batch_sizes"][-1]))
        both = f"b={small} / b={large}"
        header += [f"latency ms b={small}", f"latency ms b={large}", f"images/s b={large}",
                   f"speed-up {both}", "MAC speed-up", f"speed-up / MAC speed-up {both}",
                   f"vs same widths built directly {both}", f"peak MB b={large}", "size MB"]
        lines += _deploy_notes(deploy)

    def top1(record, value: float) -> str:
        return ci(value, None if record.intervals is None else record.intervals.top1)

    rows = [_row("baseline", None, top1(baseline, baseline.top1), baseline, baseline, deploy,
                 "baseline", human, unreliable)]
    for name, method in methods.items():
        rows += [_row(name, row.label, top1(row, row.top1_after), row, baseline, deploy,
                      row.stage, human, unreliable) for row in method]
    lines += table(header, rows)
    if unreliable:
        lines += ["", f"{DAGGER} unreliable (the timings were too noisy; the figure is shown, "
                  "not trusted):"]
        lines += [f"- {what}: {why}" for what, why in unreliable.items()]
    if any(getattr(row, "zeroed_conv_weights", None) is not None
           for rows in methods.values() for row in rows):
        lines += ["", "Unstructured rows zero that share of the conv weights but stay dense: "
                  "their MACs and latency are the baseline's."]
    return lines


def _deploy_notes(deploy: dict) -> list[str]:
    """How the deployment figures were measured, after one line when the machine was too busy."""
    lines = []
    if not deploy["reliable"]:
        lines += ["**The machine was too busy to measure latency reliably** (marked "
                  f"{DAGGER} below): compare the paired speed-ups and \"vs same widths\", which "
                  "hold when absolute times do not.", ""]
    spread = deploy.get("max_spread")
    until = ("the spread is small" if spread is None else
             f"every latency's spread (IQR / median) is under {spread:.0%}")
    budget = deploy.get("budget_s")
    lines += [
        f"Measured on {deploy['device']} with {deploy['threads']} thread(s) in interleaved, "
        "order-balanced rounds (every model timed once per round, the order rotated) until "
        f"{until} or the budget{'' if budget is None else f' of {budget:g} s'} per batch size "
        f"is spent (at least {deploy['rounds']} rounds). Latency: the median over the rounds, "
        "its 95% interval in brackets. Speed-up: baseline latency / latency and \"vs same "
        "widths\": latency / that of the same network built directly at its widths (1.00 = "
        "nothing left behind by pruning), each the median of the rounds' paired ratios with "
        "its 95% interval. MAC speed-up = baseline MACs / MACs; speed-up / MAC speed-up is the "
        "share of the MAC reduction that became real speed. Peak MB: tensor memory of one "
        "forward pass beyond the weights; size MB: the safetensors model file.", ""]
    return lines


def _mark(entry: dict, what: str, unreliable: dict[str, str]) -> str:
    """A dagger when ``entry`` (a latency or ratio entry) is unreliable, its reason recorded
    under ``what``."""
    if entry.get("reliable", True):
        return ""
    unreliable[what] = entry.get("reason", "no reason recorded")
    return DAGGER


def _ratio(entry: dict, what: str, unreliable: dict[str, str], scale: float = 1.0) -> str:
    """A paired ratio entry (``filterprune.deploy.Comparison.ratio``) divided by ``scale``,
    with its interval: ``"1.52 (1.48 to 1.57)"``, daggered when unreliable."""
    return (f"{entry['ratio'] / scale:.2f} ({entry['low'] / scale:.2f} to "
            f"{entry['high'] / scale:.2f}){_mark(entry, what, unreliable)}")


def _row(name: str, label: str | None, top1: str, row: PrunedRow | Baseline,
         baseline: Baseline, deploy: dict | None, stage: str, human,
         unreliable: dict[str, str]) -> list[str]:
    """One table row; ``label`` is the pruning point (None for the baseline), ``top1`` its
    formatted top-1; the reasons of its unreliable figures are added to ``unreliable``."""
    cells = [name, label or "–", top1, human(row.macs), human(row.params)]
    if deploy is None:
        return cells
    model = deploy["models"].get(stage)
    if model is None:  # a run resumed from results without this model's file
        return cells + ["–"] * 9
    metrics = model["metrics"]
    small, large = (str(b) for b in (deploy["batch_sizes"][0], deploy["batch_sizes"][-1]))
    mac_speedup = baseline.macs / row.macs

    def latency(b: str) -> str:
        m = metrics[b]
        return (f"{m['latency_ms']:.3f} ({m['latency_low_ms']:.3f} to {m['latency_high_ms']:.3f})"
                + _mark(m, f"`{stage}` latency b={b}", unreliable))

    def pair(key: str, what: str, scale: float = 1.0) -> str:
        return " / ".join(_ratio(model[key][b], f"`{stage}` {what} b={b}", unreliable, scale)
                          for b in (small, large))

    return cells + [
        latency(small),
        latency(large),
        f"{metrics[large]['images_per_s']:.0f}",
        pair("speedup", "speed-up"),
        f"{mac_speedup:.2f}",
        pair("speedup", "speed-up", mac_speedup),
        pair("same_widths_interval", "vs same widths"),
        f"{metrics[large]['peak_memory_mb']:.2f}",
        f"{model['size_mb']:.3f}",
    ]


def _figure(methods: dict[str, list[PrunedRow]], baseline_top1: float,
            baseline_x: tuple[float, float, float], x_of, label: str) -> Figure:
    """Top-1 after retraining against a cost, one line per method; ``x_of(row)`` and
    ``baseline_x`` give the cost and its interval ``(value, low, high)``, drawn as error bars
    where it has one."""
    fig, ax = new_figure()

    def draw(points: list[tuple[float, float, float]], top1: list[float], **style) -> None:
        x = [p[0] for p in points]
        xerr = [[p[0] - p[1] for p in points], [p[2] - p[0] for p in points]]
        ax.errorbar(x, top1, xerr=xerr, capsize=3, **style)

    for name, rows in methods.items():
        if rows:
            draw([x_of(row) for row in rows], [row.top1_after for row in rows], marker="o",
                 label=name)
    value, low, high = baseline_x
    mark_baseline(ax, value, baseline_top1, xerr=[[value - low], [high - value]], capsize=3)
    return finish(fig, ax, label, "top-1 accuracy after retraining, test split (%)",
                  f"Top-1 vs {label.split(' (')[0]}, one line per method", len(methods) + 1)
