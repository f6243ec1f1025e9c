"""Intervals for the figures a run reports: a top-1 on n test images, a drop between two models
on the same images, a mean over seeds, a median of repeated timings.

Top-1 on 1,000 images has a standard error of about 1 point near 90%, so a 0.3-point "gain"
of a pruned model is noise unless its interval says otherwise. All accuracies here are in percent
(0..100) and every interval is two-sided at ``confidence`` (default 95%).

Example:
    >>> interval_text(top1_interval(870, 1000))
    '87.00% (95% CI 84.77 to 88.94)'
    >>> interval_text(drop_interval((870, 1000), (861, 1000)), " points")
    '0.90 points (95% CI -2.10 to 3.90)'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from scipy import stats as sps

from filterprune.errors import FilterpruneError


@dataclass(frozen=True)
class Interval:
    """An estimate with a two-sided interval around it.

    Attributes:
        estimate: the figure itself (e.g. top-1 in %, a drop in points, a latency ratio).
        low: lower end of the interval.
        high: upper end.
        confidence: the interval's (nominal, or for ``median_interval`` achieved) coverage.
        method: how the interval was computed, for the report.
    """

    estimate: float
    low: float
    high: float
    confidence: float
    method: str

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies in [low, high]."""
        return self.low <= value <= self.high


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise FilterpruneError(f"confidence must be in (0, 1), got {confidence}")
    return float(sps.norm.ppf(0.5 + confidence / 2))


def _wilson(correct: int, n: int, z: float) -> tuple[float, float]:
    """Wilson score interval of a proportion, as fractions."""
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def top1_interval(correct: int, n: int, confidence: float = 0.95) -> Interval:
    """Interval of a top-1 accuracy measured on ``n`` test images, ``correct`` of them right.

    Wilson's score interval (E. B. Wilson, "Probable inference, the law of succession, and
    statistical inference", JASA 22, 1927), which keeps its coverage near 0% and 100%, where the
    normal-approximation interval collapses to a point.

    Args:
        correct: images classified right, 0..n.
        n: test images, >= 1.
        confidence: coverage in (0, 1).

    Returns:
        ``Interval`` in percent.

    Raises:
        FilterpruneError: ``n`` < 1 or ``correct`` outside [0, n].
    """
    if n < 1 or not 0 <= correct <= n:
        raise FilterpruneError(f"need 0 <= correct <= n and n >= 1, got {correct} of {n}")
    low, high = _wilson(correct, n, _z(confidence))
    return Interval(100.0 * correct / n, 100.0 * low, 100.0 * high, confidence, "Wilson score")


Outcome = torch.Tensor | tuple[int, int]


def drop_interval(reference: Outcome, other: Outcome, confidence: float = 0.95) -> Interval:
    """Interval of the top-1 drop ``reference - other`` of two models: paired when both are
    given per image on the SAME images (``evaluate(..., per_image=True)["correct"]``), else
    unpaired from the counts.

    Pairing matters: both models get most images right or wrong together, so the drop is far
    more precise than the two separate top-1 intervals suggest; only the images on which they
    disagree carry information (McNemar). The paired interval is Newcombe's hybrid score
    interval for paired proportions (R. G. Newcombe, "Improved confidence intervals for the
    difference between binomial proportions based on paired data", Statistics in Medicine 17,
    1998, method 10): the two Wilson intervals combined with the correlation phi of the paired
    outcomes (with its continuity correction, as in Altman et al., "Statistics with
    Confidence", 2000, ch. 6). Without per-image outcomes it is the same hybrid score interval
    with phi = 0 (Newcombe, "Interval estimation for the difference between independent
    proportions", Statistics in Medicine 17, 1998, method 10): valid, but wider than the paired
    one when the models were tested on the same images.

    Args:
        reference: the reference model (the baseline): bool (N,), whether it got each image
            right, or ``(correct, n)`` counts.
        other: the other model (a pruned one), the same way; per image, on the same images in
            the same order as ``reference``.
        confidence: coverage in (0, 1).

    Returns:
        ``Interval`` in percentage points; positive = ``other`` is worse; ``method`` says
        whether it was paired.

    Raises:
        FilterpruneError: per-image vectors not 1-D of one length >= 1, or counts outside
            0 <= correct <= n, n >= 1.
    """
    z = _z(confidence)
    if isinstance(reference, torch.Tensor) and isinstance(other, torch.Tensor):
        if reference.dim() != 1 or reference.shape != other.shape or len(reference) == 0:
            raise FilterpruneError(
                f"need two per-image correctness vectors (N,) of one length, got "
                f"{tuple(reference.shape)} and {tuple(other.shape)}"
            )
        ref, oth = reference.bool(), other.bool()
        n = len(ref)
        both = int((ref & oth).sum())
        only_ref = int((ref & ~oth).sum())
        only_other = int((~ref & oth).sum())
        neither = n - both - only_ref - only_other
        margins = ((both + only_ref) * (only_other + neither) * (both + only_other)
                   * (only_ref + neither))
        # phi with Newcombe's continuity correction: a positive association is reduced by n / 2
        cross = both * neither - only_ref * only_other
        cross = cross - n / 2 if cross > n / 2 else min(cross, 0)
        phi = cross / math.sqrt(margins) if margins else 0.0
        counts = [(both + only_ref, n), (both + only_other, n)]
        method = "Newcombe paired score"
    else:
        counts = [(int(o.sum()), len(o)) if isinstance(o, torch.Tensor) else o
                  for o in (reference, other)]
        for correct, n in counts:
            if n < 1 or not 0 <= correct <= n:
                raise FilterpruneError(f"need 0 <= correct <= n and n >= 1, got {correct} of {n}")
        phi, method = 0.0, "Newcombe score, unpaired"
    (c1, n1), (c2, n2) = counts
    p1, p2 = c1 / n1, c2 / n2
    (l1, u1), (l2, u2) = _wilson(c1, n1, z), _wilson(c2, n2, z)
    delta = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    epsilon = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2)
                            + (p2 - l2) ** 2))
    drop = p1 - p2
    return Interval(100.0 * drop, 100.0 * max(-1.0, drop - delta),
                    100.0 * min(1.0, drop + epsilon), confidence, method)


def interval_text(interval: Interval, unit: str = "%") -> str:
    """The interval as the report writes it, e.g. ``"87.10% (95% CI 84.88 to 89.09)"``.

    Args:
        interval: a top-1 (``unit="%"``), a drop (``unit=" points"``) or a ratio
            (``unit="x"``).
        unit: written after the estimate.
    """
    return (f"{interval.estimate:.2f}{unit} ({interval.confidence:.0%} CI {interval.low:.2f} "
            f"to {interval.high:.2f})")


@dataclass(frozen=True)
class SeedSummary:
    """A figure repeated over seeds.

    Attributes:
        mean: mean over the seeds.
        std: sample standard deviation (n - 1 denominator; 0 for one seed).
        n: number of seeds.
        interval: Student-t interval of the mean (None for one seed: no spread to go by).
    """

    mean: float
    std: float
    n: int
    interval: Interval | None


def over_seeds(values: Sequence[float], confidence: float = 0.95) -> SeedSummary:
    """Mean, spread and Student-t interval of the mean of one figure measured with several seeds
    (as airbench reports its accuracies).

    Args:
        values: one value per seed, at least one.
        confidence: coverage in (0, 1).

    Raises:
        FilterpruneError: no values.
    """
    n = len(values)
    if n == 0:
        raise FilterpruneError("over_seeds needs at least one value")
    mean = sum(values) / n
    if n == 1:
        return SeedSummary(mean, 0.0, 1, None)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    _z(confidence)
    half = float(sps.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return SeedSummary(mean, std, n, Interval(mean, mean - half, mean + half, confidence,
                                              f"Student t, {n} seeds"))


def median_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Median of repeated measurements (e.g. per-round latency ratios) with the distribution-free
    interval between two order statistics (Conover, "Practical Nonparametric Statistics", 3rd
    ed., 1999, §3.2): the narrowest symmetric pair whose coverage is at least ``confidence``,
    from the binomial(n, 1/2) distribution of how many values fall below the median. With few
    values no pair reaches it: then it is [min, max] and ``confidence`` is the coverage achieved
    (1 - 2^(1-n)), which the caller can show.

    Args:
        values: at least one measurement.
        confidence: wanted coverage in (0, 1).

    Raises:
        FilterpruneError: no values.
    """
    if not values:
        raise FilterpruneError("median_interval needs at least one value")
    _z(confidence)
    ordered = sorted(values)
    n = len(ordered)
    median = float(torch.tensor(ordered, dtype=torch.float64).quantile(0.5))
    def coverage(k: int) -> float:  # of [x_(k), x_(n-1-k)] (0-based): 1 - 2 P(Bin(n, 1/2) <= k)
        return 1 - 2 * float(sps.binom.cdf(k, n, 0.5))

    k = 0
    while k + 1 <= (n - 1) // 2 and coverage(k + 1) >= confidence:
        k += 1
    return Interval(median, ordered[k], ordered[n - 1 - k], coverage(k), "order statistics")
