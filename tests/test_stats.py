"""Intervals of top-1, paired drops, seed means and medians, against published or hand values."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from filterprune.errors import FilterpruneError
from filterprune.stats import (
    drop_interval,
    interval_text,
    median_interval,
    over_seeds,
    top1_interval,
)
from filterprune.training import evaluate


def paired(both: int, only_ref: int, only_other: int, neither: int):
    """Per-image correctness of two models from the four cells of their paired 2x2 table."""
    ref = [True] * (both + only_ref) + [False] * (only_other + neither)
    other = [True] * both + [False] * only_ref + [True] * only_other + [False] * neither
    return torch.tensor(ref), torch.tensor(other)


@pytest.mark.parametrize("correct, n, low, high", [
    (9, 10, 59.58, 98.21),   # Newcombe 1998 (Stat. Med. 17:873), Table I, method 3 (Wilson)
    (0, 10, 0.00, 27.75),    # the same table: the interval does not collapse at 0%
    (21, 24, 69.00, 95.66),  # by hand: centre (0.875 + 0.08003) / 1.16006 = 0.82326, half 0.13330
])
def test_wilson_interval(correct, n, low, high):
    interval = top1_interval(correct, n)
    assert interval.estimate == pytest.approx(100 * correct / n)
    assert (interval.low, interval.high) == (pytest.approx(low, abs=0.01),
                                             pytest.approx(high, abs=0.01))


def test_wilson_interval_narrows_with_more_images():
    small, large = top1_interval(87, 100), top1_interval(8700, 10000)
    assert large.high - large.low < (small.high - small.low) / 3
    with pytest.raises(FilterpruneError):
        top1_interval(11, 10)


def test_paired_drop_interval_matches_newcombe():
    """Newcombe 1998 (Stat. Med. 17:2635), Table II, (36, 12, 2, 0): method 10 gives
    0.0569 to 0.3404 for the difference 0.2."""
    interval = drop_interval(*paired(36, 12, 2, 0))
    assert interval.estimate == pytest.approx(20.0)
    assert (interval.low, interval.high) == (pytest.approx(5.69, abs=0.01),
                                             pytest.approx(34.04, abs=0.01))


def test_pairing_makes_the_drop_precise():
    """1,000 images, the models disagree on 6: the paired interval is far narrower than the
    difference of two separate Wilson intervals, and excludes a 2-point drop."""
    ref, other = paired(860, 4, 2, 134)
    interval = drop_interval(ref, other)
    assert interval.estimate == pytest.approx(0.2)
    assert interval.high - interval.low < 1.5 and not interval.contains(2.0)
    separate = top1_interval(864, 1000)
    assert separate.high - separate.low > 4


@pytest.mark.parametrize("reference, other, low, high", [
    ((56, 70), (48, 80), 5.24, 33.39),  # Newcombe 1998 (Stat. Med. 17:873), Table II, method 10
    ((9, 10), (3, 10), 17.05, 80.90),   # the same table
    ((5, 56), (0, 29), -3.81, 19.26),   # the same table: one proportion at 0
])
def test_unpaired_drop_interval_matches_newcombe(reference, other, low, high):
    interval = drop_interval(reference, other)
    assert interval.method == "Newcombe score, unpaired"
    assert (interval.low, interval.high) == (pytest.approx(low, abs=0.01),
                                             pytest.approx(high, abs=0.01))


def test_without_per_image_outcomes_the_drop_is_unpaired_and_wider():
    ref, other = paired(860, 4, 2, 134)
    paired_interval = drop_interval(ref, other)
    counts = drop_interval((864, 1000), other)  # one side known only by its counts
    assert counts.method == "Newcombe score, unpaired" and counts.estimate == pytest.approx(0.2)
    assert counts.high - counts.low > 3 * (paired_interval.high - paired_interval.low)
    with pytest.raises(FilterpruneError, match="0 <= correct <= n"):
        drop_interval((5, 4), (1, 4))


def test_interval_text():
    assert interval_text(top1_interval(21, 24)) == "87.50% (95% CI 69.00 to 95.66)"
    assert interval_text(drop_interval(*paired(36, 12, 2, 0)), " points") == (
        "20.00 points (95% CI 5.69 to 34.04)")


def test_drop_interval_rejects_unpaired_vectors():
    with pytest.raises(FilterpruneError, match="one length"):
        drop_interval(torch.ones(5, dtype=torch.bool), torch.ones(4, dtype=torch.bool))


def test_over_seeds_by_hand():
    """Values 1, 2, 3: mean 2, s = 1, t(0.975, 2) = 4.3027, half-width 4.3027 / sqrt(3)."""
    summary = over_seeds([1.0, 2.0, 3.0])
    assert (summary.mean, summary.std, summary.n) == (2.0, 1.0, 3)
    assert summary.interval.high - 2.0 == pytest.approx(2.4841, abs=1e-4)
    single = over_seeds([87.1])
    assert single.std == 0.0 and single.interval is None


def test_median_interval_order_statistics():
    """n = 5: only [min, max] is possible, coverage 1 - 2/32 = 0.9375. n = 20: the 6th and
    15th values (coverage 1 - 2 P(Bin(20, .5) <= 5) = 0.9586)."""
    five = median_interval([5.0, 1.0, 4.0, 2.0, 3.0])
    assert (five.estimate, five.low, five.high) == (3.0, 1.0, 5.0)
    assert five.confidence == pytest.approx(0.9375)
    twenty = median_interval([float(v) for v in range(20)])
    assert (twenty.low, twenty.high) == (5.0, 14.0)
    assert twenty.confidence == pytest.approx(0.9586, abs=1e-4)


def test_evaluate_returns_per_image_correctness():
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))  # predicts the larger coordinate
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    labels = torch.tensor([0, 0, 0])
    batches = [(images[:2], labels[:2]), (images[2:], labels[2:])]
    result = evaluate(model, batches, per_image=True)
    assert result["correct"].tolist() == [True, False, True]
    assert result["top1"] == pytest.approx(200 / 3)
    assert "correct" not in evaluate(model, batches)
