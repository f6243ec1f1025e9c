"""Markdown formatting shared by the sections of report.md: counts, percentages, accuracies with
their 95% intervals, drops and tables."""

from __future__ import annotations

from collections.abc import Sequence

from filterprune.stats import Interval

MISSING = "–"


def human(count: float) -> str:
    """Formats a count with a K/M/G/T suffix and two decimals, e.g. 7_900_000 -> "7.90M"."""
    if abs(count) < 1000:
        return f"{count:g}"
    suffixes = "KMGT"
    value, exponent = float(count), 0
    while abs(round(value, 2)) >= 1000 and exponent < len(suffixes):
        value /= 1000
        exponent += 1
    return f"{value:.2f}{suffixes[exponent - 1]}"


def pct(fraction: float) -> str:
    """Formats a fraction in [0, 1] as a percentage with one decimal, e.g. 0.62 -> "62.0%"."""
    return f"{fraction * 100:.1f}%"


def acc(value: float | None) -> str:
    """Formats an accuracy in % with two decimals, or a dash when missing."""
    return MISSING if value is None else f"{value:.2f}"


def ci(value: float | None, interval: Interval | None) -> str:
    """Formats a top-1 or a drop with its 95% interval, ``"90.80 (90.21 to 91.36)"``; the value
    alone when the interval is missing."""
    return acc(value) + bracket(interval)


def bracket(interval: Interval | None) -> str:
    """``" (90.21 to 91.36)"``, or nothing without an interval."""
    return "" if interval is None else f" ({interval.low:.2f} to {interval.high:.2f})"


def drop(baseline: float | None, value: float | None) -> str:
    """Formats baseline minus value in points with two decimals (positive = accuracy lost)."""
    if baseline is None or value is None:
        return MISSING
    text = f"{baseline - value:.2f}"
    return "0.00" if text == "-0.00" else text


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Renders a Markdown table: the first column left-aligned, the others right-aligned."""
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join([":--"] + ["--:"] * (len(header) - 1)) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines
