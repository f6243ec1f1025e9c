"""Tests for the Markdown report and PNG plots of a pruning run."""

import copy
import json
import re

import numpy as np
import pytest
import torch
from conftest import BASE_MACS, BASE_PARAMS, BASE_TOP1, make_results, pruned_row
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure

from filterprune.engine.coverage import BlockedLayer, Coverage
from filterprune.errors import FilterpruneError
from filterprune.pipeline.accuracy import with_intervals
from filterprune.pipeline.comparison import COMPARE_LATENCY_PNG, comparison_figures
from filterprune.pipeline.report import write_report
from filterprune.pipeline.results import (
    RetrainedBaseline,
    RunResults,
    SeedRepeat,
    pack_outcomes,
    unpack_outcomes,
)
from filterprune.stats import Interval

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = {"sensitivity.png", "filter_norms.png", "accuracy_vs_macs.png", "accuracy_vs_params.png"}


@pytest.fixture
def results():
    """Hand-written results: 2 layers, 3 ratios (given out of order)."""
    return make_results()


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The report of ``make_results()``, written once for the tests that only read it: (the
    directory, the paths written)."""
    out = tmp_path_factory.mktemp("report") / "run"  # created by write_report
    return out, write_report(make_results(), out)


def _section(text, heading):
    """Returns the text from a '## heading' line up to the next '## ' heading."""
    start = text.index(f"## {heading}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def _table(section):
    """Returns (header, rows) of the Markdown table in a section, checking it is well formed."""
    lines = [line for line in section.splitlines() if line.startswith("|")]
    assert re.fullmatch(r"\|(:?-+:?\|)+", lines[1]), lines[1]
    assert len({line.count("|") for line in lines}) == 1  # every row has the same columns
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return cells[0], cells[2:]


def test_writes_all_files(written):
    out, paths = written
    assert {p.name for p in paths} == PLOTS | {"report.md"}
    assert all(p.is_file() and p.parent == out for p in paths)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths)  # no temp files


def test_pngs_are_valid(written):
    for path in written[1]:
        if path.suffix == ".png":
            data = path.read_bytes()
            assert data.startswith(PNG_MAGIC)
            width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
            assert width > 100 and height > 100


def test_main_table(results, written):
    text = (written[0] / "report.md").read_text()
    assert text.startswith("# ") and "scnnb" in text.splitlines()[0]
    assert "fashion-mnist" in text.splitlines()[0]
    assert "torch 2.13.0" in text and "seed 0" in text
    assert "strategy `independent`, residual policy `inner`" in text
    assert "91.23" in _section(text, "Baseline") and "7.90M" in text and "4.10M" in text

    header, rows = _table(_section(text, "One-shot"))
    assert header[:8] == [
        "ratio / plan",
        "MACs",
        "MACs reduction",
        "params",
        "params reduction",
        "top-1 before retraining (test)",
        "top-1 after retraining (test)",
        "drop vs baseline (after)",
    ]
    assert not any("top-5" in h for h in header)
    expected_rows = sorted(results.pruning, key=lambda r: r.ratio)
    assert len(rows) == len(expected_rows) == 3
    for cells, row in zip(rows, expected_rows, strict=True):
        assert cells == [
            f"{row.ratio:g}",
            f"{row.macs / 1e6:.2f}M",
            f"{(1 - row.macs / BASE_MACS) * 100:.1f}%",
            f"{row.params / 1e6:.2f}M",
            f"{(1 - row.params / BASE_PARAMS) * 100:.1f}%",
            f"{row.top1_before:.2f}",
            f"{row.top1_after:.2f}",
            f"{BASE_TOP1 - row.top1_after:.2f}",
        ]
    # Spelled out: 91.23 - 90.80 = 0.43 lost; 91.23 - 91.35 = -0.12 (a gain); 1 - 3.002 / 7.9.
    by_ratio = {cells[0]: cells for cells in rows}
    assert by_ratio["0.5"][2] == "62.0%" and by_ratio["0.5"][7] == "0.43"
    assert by_ratio["0.25"][7] == "-0.12"
    assert by_ratio["0.75"][1] == "1.19M"
    assert "Wall time: 170.2 s" in text


def test_sensitivity_table_and_most_sensitive_layer(written):
    section = _section((written[0] / "report.md").read_text(), "Sensitivity")
    header, rows = _table(section)
    assert header == ["layer", "30.0%", "60.0%", "90.0%"]
    assert [cells[0] for cells in rows] == ["`features.0`", "`features.4`"]
    assert rows[1][1:] == ["91.00", "85.20", "60.30"]
    note = next(line for line in section.splitlines() if line.startswith("Most sensitive"))
    assert "`features.4`" in note and "features.0" not in note
    assert f"{BASE_TOP1 - 60.3:.2f}" in note


def test_plots_embedded_with_relative_links(written):
    text = (written[0] / "report.md").read_text()
    for name in PLOTS:
        assert f"]({name})" in text


def test_without_sensitivity(results, tmp_path):
    (tmp_path / "sensitivity.png").write_bytes(PNG_MAGIC)  # stale, from an earlier run
    results.sensitivity = None
    paths = write_report(results, tmp_path)
    assert {p.name for p in paths} == PLOTS - {"sensitivity.png"} | {"report.md"}
    assert not (tmp_path / "sensitivity.png").exists()
    text = (tmp_path / "report.md").read_text()
    assert "sensitivity.png" not in text and "Most sensitive" not in text
    assert "## Sensitivity" not in text
    _, rows = _table(_section(text, "One-shot"))
    assert len(rows) == 3


def test_top5_columns_only_when_present(results, tmp_path):
    with_top5 = copy.deepcopy(results)
    with_top5.dataset.num_classes = 100
    with_top5.baseline.top5 = 95.5
    with_top5.pruning = [
        pruned_row(0.25, 6_320_000, 3_280_000, 60.0, 70.1, top5=(85.0, 95.1)),
        pruned_row(0.5, 3_002_000, 2_009_000, 40.0, 68.0, top5=(70.0, 93.25)),
    ]
    write_report(with_top5, tmp_path)
    header, rows = _table(_section((tmp_path / "report.md").read_text(), "One-shot"))
    assert header[8:] == ["top-5 before retraining", "top-5 after retraining", "top-5 drop (after)"]
    assert rows[1][8:] == ["70.00", "93.25", f"{95.5 - 93.25:.2f}"]
    assert "top-5 95.50%" in (tmp_path / "report.md").read_text()

    write_report(results, tmp_path / "no_top5")
    text = (tmp_path / "no_top5" / "report.md").read_text()
    assert "top-5" not in text


def test_interrupted_write_keeps_previous_files(results, tmp_path, monkeypatch):
    write_report(results, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def broken_savefig(self, path, **kwargs):
        path.write_bytes(b"partial")
        raise RuntimeError("interrupted")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(RuntimeError, match="interrupted"):
        write_report(results, tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp files left


def test_the_report_says_what_share_of_the_conv_macs_pruning_reaches(results, tmp_path):
    results.coverage = Coverage(
        conv_macs=1000, requested_macs=1000, reached_macs=250, prunable_macs=250,
        blocked=(BlockedLayer("small", 50, "its channels reach the output"),
                 BlockedLayer("up", 700, "'up' is a ConvTranspose2d")))
    write_report(results, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "Pruning every layer reaches 25% of the conv MACs" in text
    assert "2 conv(s) cannot be pruned" in text
    # the largest first, each with its share and reason
    assert text.index("`up` (70.0% of the conv MACs): 'up' is a ConvTranspose2d") < text.index(
        "`small` (5.0% of the conv MACs)")


def test_results_round_trip_through_json_and_refuse_other_schema_versions(results, tmp_path):
    path = results.save(tmp_path / "results.json")
    assert RunResults.load(path) == results
    data = json.loads(path.read_text())
    assert data["schema_version"] == 2 and data["coverage"]["reached_share"] == 1.0
    del data["schema_version"]  # written before the schema existed
    path.write_text(json.dumps(data))
    with pytest.raises(FilterpruneError, match="schema version None"):
        RunResults.load(path)
    data["schema_version"] = 2
    del data["pruning"][0]["top1_after"]
    path.write_text(json.dumps(data))
    with pytest.raises(FilterpruneError, match="top1_after"):
        RunResults.load(path)


def _outcomes(right: int, n: int = 1000) -> torch.Tensor:
    """Per-image outcomes: the first ``right`` of ``n`` images right."""
    return torch.arange(n) < right


def _with_outcomes(results, baseline_right=870, after_right=(860, 861, 800)):
    """``results`` on 1,000 test images: the baseline gets the first ``baseline_right`` right,
    the pruned rows (given out of order: 0.5, 0.25, 0.75) the first ``after_right``; each
    pruned model's wrong images include the baseline's, so a pair disagrees only on the
    images between the two counts."""
    results.dataset.test_size = 1000
    results.baseline.top1 = baseline_right / 10
    results.baseline.correct = pack_outcomes(_outcomes(baseline_right))
    for row, right in zip(results.pruning, after_right, strict=True):
        row.top1_after = right / 10
        row.correct = pack_outcomes(_outcomes(right))
    return results


@pytest.mark.parametrize("n", [1, 7, 8, 1001])
def test_per_image_outcomes_pack_into_bits_and_back(n):
    correct = torch.rand(n, generator=torch.Generator().manual_seed(n)) < 0.7
    packed = pack_outcomes(correct)
    packed_bytes = (n + 7) // 8  # one bit per image
    assert len(packed) == 4 * ((packed_bytes + 2) // 3)  # base64: 4 characters per 3 bytes
    assert torch.equal(unpack_outcomes(packed, n), correct)
    with pytest.raises(FilterpruneError, match="outcomes"):
        unpack_outcomes(packed, n + 8)


def test_every_top1_has_its_wilson_interval_and_every_drop_a_paired_one(results):
    with_intervals(_with_outcomes(results))
    base = results.baseline.intervals
    assert (base.split, base.n) == ("test", 1000)
    # Wilson, 870 of 1000 (filterprune.stats docstring; Newcombe 1998 gives 0.8477-0.8894)
    assert (round(base.top1.low, 2), round(base.top1.high, 2)) == (84.77, 88.94)
    half = results.pruning[0].intervals
    assert half.top1.estimate == pytest.approx(86.0)
    assert half.top1_before.estimate == pytest.approx(70.2)
    assert half.drop.estimate == pytest.approx(1.0) and "paired" in half.drop.method
    assert half.drop_vs_retrained is None  # no control ran
    # 10 images apart, all of them lost by the pruned model (McNemar: 10 to 0): the drop is
    # surely above 0, which the unpaired interval of the same counts cannot tell
    assert half.drop.low > 0
    results.pruning[0].correct = None  # a record written before outcomes were kept
    with_intervals(results)
    unpaired = results.pruning[0].intervals.drop
    assert "unpaired" in unpaired.method and unpaired.estimate == pytest.approx(1.0)
    assert unpaired.low < 0 < unpaired.high


def test_report_shows_intervals_and_the_split(results, tmp_path):
    write_report(with_intervals(_with_outcomes(results)), tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "Top-1 87.00% (95% CI 84.77 to 88.94) on 1000 test images" in _section(
        text, "Baseline")
    _, rows = _table(_section(text, "One-shot"))
    half = next(cells for cells in rows if cells[0] == "0.5")
    iv = results.pruning[0].intervals
    assert half[6] == f"86.00 ({iv.top1.low:.2f} to {iv.top1.high:.2f})"
    assert half[7] == f"1.00 ({iv.drop.low:.2f} to {iv.drop.high:.2f})"
    assert "paired on the same images" in text and "1000 images of the test split" in text


def test_intervals_round_trip_through_results_json(results, tmp_path):
    with_intervals(_with_outcomes(results))
    path = results.save(tmp_path / "results.json")
    loaded = RunResults.load(path)
    assert loaded == results
    assert isinstance(loaded.pruning[0].intervals.drop, Interval)


def test_report_says_which_split_the_sensitivity_comes_from(results, tmp_path):
    results.dataset.validation_size = 6000
    results.sensitivity.split, results.sensitivity.baseline_top1 = "validation", 93.0
    write_report(results, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "60000 train / 6000 validation (held out of the training set" in text
    section = _section(text, "Sensitivity")
    assert "Top-1 (%) on the validation split" in section
    # the drop is from the baseline's top-1 on the same split: 93.0 - 60.3
    assert "a drop of 32.70 points" in section

    results.dataset.validation_size = 0
    results.sensitivity.split, results.sensitivity.baseline_top1 = "test", None
    write_report(results, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "no validation split held out, so the sensitivity is measured on the test split" in text
    assert "selects on the test split" in _section(text, "Sensitivity")


def test_report_shows_the_control_for_extra_training_beside_the_pruned_rows(results, tmp_path):
    _with_outcomes(results)  # baseline 870 of 1000 right; pruned 0.5: 860
    results.baseline_retrained = RetrainedBaseline(
        top1=88.0, top5=None, loss=0.3, epochs=2, train_time_s=1.0,
        correct=pack_outcomes(_outcomes(880)))
    write_report(with_intervals(results), tmp_path)
    text = (tmp_path / "report.md").read_text()
    header, rows = _table(_section(text, "One-shot"))
    assert header[8] == "drop vs baseline retrained (after)"
    control = rows[0]
    assert control[0] == "baseline retrained (control)" and control[2] == "0.0%"
    assert control[6].startswith("88.00 (") and control[7].startswith("-1.00 (")
    assert control[8] == "–"
    half = next(cells for cells in rows if cells[0] == "0.5")
    drop = results.pruning[0].intervals.drop_vs_retrained
    assert half[8] == f"2.00 ({drop.low:.2f} to {drop.high:.2f})"  # 88.0 - 86.0
    assert drop.low > 0  # 20 images apart, all lost by the pruned model
    assert "retrained for 2 epoch(s) the baseline never had" in text


def _latency(ms, low, high, reliable=True, reason="IQR 3% of the median over 9 rounds in 2 s"):
    return {"latency_ms": ms, "latency_low_ms": low, "latency_high_ms": high, "iqr_ms": 0.1,
            "images_per_s": 4 / ms * 1e3, "peak_memory_mb": 1.5, "rounds": 9,
            "reliable": reliable, "reason": reason}


def _paired(ratio, low, high, reliable=True, reason="95% interval 5% of the ratio wide"):
    return {"ratio": ratio, "low": low, "high": high, "confidence": 0.96, "rounds": 9,
            "reliable": reliable, "reason": reason}


def _deployed(results):
    """``results`` with hand-written deployment measurements of the baseline and pruned-50 at
    batch sizes 1 and 4; pruned-50's latency at batch 1 is unreliable, and its paired speed-up
    (2.00) differs from the ratio of the two medians (1.0 / 0.8 = 1.25), as under drifting
    load. Only pruned-50 stays of the pruning rows."""
    results.pruning = [row for row in results.pruning if row.stage == "pruned-50"]
    same = _paired(1.0, 0.98, 1.02)
    results.deploy = {
        "device": "cpu", "threads": 1, "batch_sizes": [1, 4], "rounds": 5, "max_spread": 0.1,
        "budget_s": 20.0, "reliable": False, "models": {
            "baseline": {"size_mb": 1.0, "metrics": {"1": _latency(1.0, 0.9, 1.1),
                                                     "4": _latency(2.0, 1.9, 2.1)},
                         "speedup": {"1": _paired(1.0, 1.0, 1.0), "4": _paired(1.0, 1.0, 1.0)},
                         "same_widths": {"1": 1.0, "4": 1.0},
                         "same_widths_interval": {"1": same, "4": same}},
            "pruned-50": {"size_mb": 0.4, "metrics": {
                "1": _latency(0.8, 0.5, 1.2, False, "IQR 40% of the median after 5 rounds in "
                              "20 s (limit 10%): machine busy"),
                "4": _latency(1.0, 0.95, 1.05)},
                "speedup": {"1": _paired(2.0, 1.9, 2.1), "4": _paired(2.0, 1.8, 2.2)},
                "same_widths": {"1": 1.0, "4": 1.0},
                "same_widths_interval": {"1": same, "4": same}},
        }}
    return results


def test_deployment_speedups_come_from_the_paired_ratios_and_unreliable_figures_are_marked(
        results, tmp_path):
    write_report(_deployed(results), tmp_path)
    text = (tmp_path / "report.md").read_text()
    section = _section(text, "Methods compared")
    assert section.splitlines()[2].startswith("**The machine was too busy")
    assert "interleaved, order-balanced rounds" in section and "under 10%" in section
    header, rows = _table(section)
    half = dict(zip(header, next(cells for cells in rows if cells[1] == "0.5"), strict=True))
    assert half["speed-up b=1 / b=4"] == "2.00 (1.90 to 2.10) / 2.00 (1.80 to 2.20)"
    assert half["latency ms b=1"] == "0.800 (0.500 to 1.200)†"
    assert half["latency ms b=4"] == "1.000 (0.950 to 1.050)"
    # MAC speed-up 7.9M / 3.002M = 2.63; 2.00 / 2.63 = 0.76
    assert half["speed-up / MAC speed-up b=1 / b=4"].startswith("0.76 (0.72 to 0.80) / 0.76")
    assert "- `pruned-50` latency b=1: IQR 40% of the median after 5 rounds" in section
    assert section.count("\n- ") == 1  # one unreliable figure, one footnote


def test_latency_plot_draws_the_intervals_as_error_bars(results):
    figures = comparison_figures(_deployed(results))
    ax = figures[COMPARE_LATENCY_PNG].axes[0]
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    spans = sorted(tuple(np.round(seg[:, 0], 3)) for c in bars for col in c.lines[2]
                   for seg in col.get_segments())
    assert spans == [(0.95, 1.05), (1.9, 2.1)]  # pruned-50 and the baseline at batch 4


def test_report_states_the_compute_setting_and_why(results, tmp_path):
    results.environment.compute = "channels-last"
    results.calibration = {"reason": "compute: auto picked channels-last: 1.20x float32 (95% "
                           "interval 1.10-1.30); images/s: float32 790, channels-last 949"}
    write_report(results, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "compute channels-last" in text.split("Environment:")[1].splitlines()[0]
    assert "compute: auto picked channels-last: 1.20x float32" in text


def test_report_gives_each_row_its_mean_and_spread_over_seeds(results, tmp_path):
    def again(seed, shift):
        base = copy.deepcopy(results.baseline)
        base.top1 += shift
        rows = copy.deepcopy(results.pruning)
        for row in rows:
            row.top1_after += shift
        return SeedRepeat(seed, base, rows)

    results.repeats = [again(1, -1.0), again(2, 1.0)]
    write_report(results, tmp_path)
    header, rows = _table(_section((tmp_path / "report.md").read_text(), "Repeated over 3 seeds"))
    assert header[0] == "ratio / plan" and [cells[0] for cells in rows] == [
        "baseline", "0.5", "0.25", "0.75"]
    # 91.23 +- 1: mean 91.23, std 1.00, t(0.975, 2) = 4.303: 4.303 / sqrt(3) = 2.484
    assert rows[0] == ["baseline", "91.23", "1.00", "(88.75 to 93.71)", "–", "–"]
    # 90.80 +- 1 after retraining, each seed 0.43 below its own baseline: no spread
    assert rows[1] == ["0.5", "90.80", "1.00", "(88.32 to 93.28)", "0.43", "(0.43 to 0.43)"]
    loaded = RunResults.load(results.save(tmp_path / "results.json"))
    assert loaded.repeats == results.repeats
