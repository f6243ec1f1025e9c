"""Latency measurement (filterprune.deploy): interleaved rounds, stopping, reliability, paired
ratios, on a fake clock; and one real measurement of a tiny net."""

import math

import pytest
import torch
from torch import nn

from filterprune.deploy import interleaved_timings, measure, peak_memory_mb
from filterprune.errors import FilterpruneError


class Clock:
    """A fake timer: each call of a fake model advances it by the model's cost x the load."""

    def __init__(self, load=lambda now: 1.0):
        self.now, self.load, self.order = 0.0, load, []

    def __call__(self):
        return self.now

    def model(self, name, cost_s):
        def call():
            self.order.append(name)
            self.now += cost_s * self.load(self.now)
        return call


def test_a_steady_machine_stops_after_the_least_rounds_and_is_reliable():
    clock = Clock()
    calls = {"a": clock.model("a", 0.001), "b": clock.model("b", 0.002)}
    result = interleaved_timings(calls, min_rounds=5, min_time_s=0.01, timer=clock,
                                 batch_size=4)
    assert result.rounds == 5
    a = result.latency("a")
    assert a["latency_ms"] == pytest.approx(1.0) and a["iqr_ms"] == pytest.approx(0.0)
    assert a["images_per_s"] == pytest.approx(4000)
    assert a["reliable"] and a["reason"].startswith("IQR 0% of the median over 5 rounds")
    ratio = result.ratio("b", "a")
    assert ratio["ratio"] == pytest.approx(2.0) and ratio["reliable"]
    assert ratio["low"] == pytest.approx(2.0) and ratio["high"] == pytest.approx(2.0)
    # each timing repeats the call to last min_time_s: 10 and 5 calls, after 2 warm-up calls
    assert clock.order.count("a") == 2 + 5 * 10 and clock.order.count("b") == 2 + 5 * 5


def test_a_drifting_load_makes_latencies_unreliable_but_paired_ratios_hold():
    # other jobs come and go: the machine runs at 1/3 to 1x its speed, in cycles of 1 s
    clock = Clock(load=lambda now: 2 + math.sin(2 * math.pi * now))
    calls = {"a": clock.model("a", 0.001), "b": clock.model("b", 0.002)}
    result = interleaved_timings(calls, groups=[["a", "b"]], budget_s=2.0, max_spread=0.1,
                                 min_time_s=0.01, timer=clock)
    assert 2.0 <= result.elapsed_s < 2.1  # stopped by the budget, the last round finished
    for name in "ab":
        entry = result.latency(name)
        assert not entry["reliable"] and entry["spread"] > 0.5
        assert "(limit 10%): machine busy, or each timing too short" in entry["reason"]
    assert not result.reliable
    ratio = result.ratio("b", "a")
    assert ratio["reliable"] and ratio["low"] <= 2.0 <= ratio["high"]
    assert ratio["reason"].startswith("97% interval 2% of the ratio wide over 105 rounds")
    assert ratio["ratio"] == pytest.approx(2.0, rel=0.02)
    # the ratio of the two medians is off: a and b were not timed in the same instants
    medians = result.latency("b")["latency_ms"] / result.latency("a")["latency_ms"]
    assert abs(medians - 2.0) > abs(ratio["ratio"] - 2.0)


def test_rounds_rotate_and_reverse_so_every_pair_is_timed_in_both_orders():
    clock = Clock()
    calls = {n: clock.model(n, 0.03) for n in ["a", "a'", "b", "b'"]}
    interleaved_timings(calls, groups=[["a", "a'"], ["b", "b'"]], min_rounds=4, min_time_s=0.01,
                        timer=clock)
    rounds = clock.order[8:]  # after the warm-up and sizing calls
    assert rounds == ["a", "a'", "b", "b'", "b'", "b", "a'", "a",
                      "b", "b'", "a", "a'", "a'", "a", "b'", "b"]


def test_groups_must_hold_every_name_once():
    clock = Clock()
    calls = {"a": clock.model("a", 0.01), "b": clock.model("b", 0.01)}
    with pytest.raises(FilterpruneError, match="exactly once"):
        interleaved_timings(calls, groups=[["a"]], timer=clock)


def test_measure_reports_latency_throughput_and_the_activation_peak():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
    result = measure({"net": model}, (1, 8, 8), batch_sizes=(1, 3), budget_s=0.05,
                     min_time_s=1e-3)
    assert set(result) == {"1", "3"}
    for batch, comparison in result.items():
        row = comparison.latency("net")
        assert row["latency_ms"] > 0 and row["iqr_ms"] >= 0 and row["rounds"] >= 5
        assert row["latency_low_ms"] <= row["latency_ms"] <= row["latency_high_ms"]
        assert row["images_per_s"] == pytest.approx(int(batch) / row["latency_ms"] * 1e3)
        assert isinstance(row["reliable"], bool) and row["reason"]
    assert model.training  # mode restored
    # conv output and relu output of 3 x 4 x 6 x 6 float32 are alive together at the peak
    peak = result["3"].latency("net")["peak_memory_mb"]
    assert peak == pytest.approx(2 * 3 * 4 * 6 * 6 * 4 / 1e6)
    inplace = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(inplace=True))
    peak = peak_memory_mb(inplace, torch.zeros(3, 1, 8, 8))
    assert peak == pytest.approx(3 * 4 * 6 * 6 * 4 / 1e6)
