"""The 95% intervals of a run's accuracies: a Wilson interval beside every top-1 and a paired
interval beside every drop (filterprune.stats).

Each model record keeps whether the model got each test image right (``correct``,
``filterprune.pipeline.results.pack_outcomes``); two models tested on the same images are
compared image by image (``drop_interval``, paired), which is far more precise than two
separate intervals. A record without them (written before they were kept) falls back to the
unpaired interval from its top-1 and the number of images.
"""

from __future__ import annotations

from filterprune.pipeline.results import (
    Baseline,
    PrunedRow,
    RetrainedBaseline,
    RunResults,
    ScratchRow,
    TopIntervals,
    unpack_outcomes,
)
from filterprune.stats import Interval, Outcome, drop_interval, top1_interval

TEST = "test"

Record = Baseline | PrunedRow | ScratchRow | RetrainedBaseline


def outcome(top1: float, correct: str | None, n: int) -> Outcome:
    """The per-image outcomes of a model (bool (n,)) when its record keeps them, else its
    ``(correct, n)`` counts from ``top1`` (%)."""
    if correct is not None:
        return unpack_outcomes(correct, n)
    return round(top1 * n / 100), n


def _top1(record: Record) -> float:
    return record.top1_after if isinstance(record, PrunedRow) else record.top1


def _interval(top1: float, n: int) -> Interval:
    return top1_interval(round(top1 * n / 100), n)


def with_intervals(results: RunResults) -> RunResults:
    """Fills the ``intervals`` of every model record of ``results`` (in place; returned):
    top-1 on the ``results.dataset.test_size`` test images, the drop from the baseline and, when
    the ``baseline-retrained`` control ran, the drop from it (of the pruned, method and scratch
    rows)."""
    n = results.dataset.test_size
    base = results.baseline
    base_outcome = outcome(base.top1, base.correct, n)
    base.intervals = TopIntervals(TEST, n, _interval(base.top1, n))
    control = results.baseline_retrained
    control_outcome = None
    if control is not None:
        control_outcome = outcome(control.top1, control.correct, n)
        control.intervals = TopIntervals(
            TEST, n, _interval(control.top1, n),
            drop=drop_interval(base_outcome, control_outcome))
    rows = [*results.pruning, *(row for rows in results.methods.values() for row in rows),
            *results.scratch]
    for row in rows:
        mine = outcome(_top1(row), row.correct, n)
        row.intervals = TopIntervals(
            TEST, n, _interval(_top1(row), n),
            top1_before=_interval(row.top1_before, n) if isinstance(row, PrunedRow) else None,
            drop=drop_interval(base_outcome, mine),
            drop_vs_retrained=None if control_outcome is None
            else drop_interval(control_outcome, mine))
    return results
