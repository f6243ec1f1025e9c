"""Budgets in the main job (prune.targets): each target share reached three ways side by side,
each a resumable retrained stage, recorded, reported, and checked before training."""

import pytest
import yaml
from conftest import BASE_TOP1, make_results, pruned_row

from filterprune.checkpoint import load_model
from filterprune.cli import main
from filterprune.cli.run import render
from filterprune.errors import FilterpruneError
from filterprune.pipeline.config import parse_config
from filterprune.pipeline.report import write_report
from filterprune.pipeline.results import RunResults, TargetRow, Targets
from filterprune.pipeline.run import run_pipeline

# SCNNB on 28x28 (hand-counted MACs): conv1 32x1x3x3 on 28x28, conv2 64x32x3x3 on 14x14,
# fc 3136 -> 1280, fc 1280 -> 10
CONV1, CONV2, FC1, FC2 = 32 * 9 * 784, 64 * 32 * 9 * 196, 3136 * 1280, 1280 * 10
MACS = CONV1 + CONV2 + FC1 + FC2


def fast(config, **prune) -> dict:
    data = yaml.safe_load(config.read_text())
    data["train"]["epochs"] = 1
    data["prune"] = {"ratios": [], **prune}
    data["deploy"] |= {"batch_sizes": [2], "budget_s": 0.05, "rounds": 1}
    return data


def test_each_target_is_reached_three_ways_each_a_retrained_stage(tmp_path, config):
    data = fast(config, targets=[0.5])
    out, lines = tmp_path / "run", []
    results = run_pipeline(parse_config(data), out, progress=False, log=lines.append)
    targets = results.targets
    assert targets.cost == "macs" and targets.shares == [0.5] and targets.skipped == {}
    assert [(row.target, row.way) for row in targets.rows] == [
        (0.5, "uniform"), (0.5, "global"), (0.5, "sensitivity")]
    widths = set()
    for row in targets.rows:
        stage = f"target-50-{row.way}"
        assert row.stage == stage and (out / "stages" / f"{stage}.json").is_file()
        model, spec = load_model(out / f"{stage}.safetensors")
        kept = (model.features[0].out_channels, model.features[4].out_channels)
        widths.add(kept)
        budget = row.budget
        assert budget["method"] == row.way and budget["share"] == 0.5
        assert abs(budget["achieved"] - 0.5) <= 0.01  # within one point of the target
        assert row.macs_reduction == pytest.approx(budget["achieved"], abs=1e-9)  # as measured
        for name, width, full in (("features.0", kept[0], 32), ("features.4", kept[1], 64)):
            assert budget["ratios"].get(name, 0.0) == pytest.approx(1 - width / full)
            assert row.kept.get(name, full) == width
        assert row.top1_before is not None and row.top1_after is not None
        assert row.retrain_epochs == 1 and spec.plan is not None
    assert len(widths) == 3  # three different plans
    assert targets.rows[2].budget["predicted_loss"] is not None
    assert set(results.deploy["models"]) >= {row.stage for row in targets.rows}
    report = (out / "report.md").read_text()
    assert "## Budgets: target shares of the MACs removed" in report
    assert "| 50.0% | sensitivity |" in report and "| layer | 50% uniform | 50% global |" in report
    assert (out / "budgets_accuracy_vs_macs.png").is_file()
    assert (out / "budgets_accuracy_vs_latency.png").is_file()
    assert "The deployment stage measured these models on cpu" in report
    assert RunResults.load(out / "results.json").targets == targets
    lines.clear()  # resumed: every stage is read back, nothing retrained
    again = run_pipeline(parse_config(data), out, resume=True, progress=False, log=lines.append)
    assert again.targets == targets and not any("after retraining" in line for line in lines)


def test_latency_targets_without_sensitivity_skip_that_way_and_say_so(tmp_path, config):
    # a small share: on a busy machine the predicted reach of SCNNB's latency was 26% to 40%
    data = fast(config, targets=[0.1], target_cost="latency")
    data["sensitivity"] = {"enabled": False}
    data["deploy"] = {"enabled": False, "budget_s": 0.05, "min_run_time_s": 0.002}
    out, lines = tmp_path / "run", []
    targets = run_pipeline(parse_config(data), out, progress=False, log=lines.append).targets
    assert (out / "stages" / "latency-table.json").is_file()  # measured once, its own stage
    assert targets.cost == "latency" and targets.latency_table["device"] == "cpu"
    assert set(targets.latency_table["layers"]) == {"features.0", "features.4"}
    assert all(row.budget["target"] == "latency" for row in targets.rows)
    assert targets.ways == ["uniform", "global"] and "sensitivity" in targets.skipped
    assert [row.way for row in targets.rows] == ["uniform", "global"]
    assert not (out / "target-10-sensitivity.safetensors").exists()
    skipped = [line for line in lines if "sensitivity-driven way is skipped" in line]
    assert len(skipped) == 1 and "sensitivity.enabled: false" in skipped[0]
    report = (out / "report.md").read_text()
    assert "- `sensitivity` did not run: the sensitivity analysis is disabled" in report
    assert "Latency shares are predicted from a latency table measured on cpu" in report
    assert not (out / "budgets_accuracy_vs_latency.png").exists()  # deploy off


def target_row(target, way, macs, achieved, ratios, before, after):
    row = pruned_row(0.5, macs, 2_000_000, before, after)
    fields = {**vars(row), "stage": f"target-{round(target * 100)}-{way}", "ratio": None}
    return TargetRow(**fields, target=target, way=way, budget={
        "target": "macs", "share": target, "achieved": achieved, "method": way,
        "ratios": ratios, "predicted_loss": None, "reachable": 0.95, "unmeasured": []})


def test_the_budgets_section_is_rendered_from_the_records(tmp_path):
    results = make_results()
    results.targets = Targets("macs", [0.5], ["uniform", "global"], {"sensitivity": "off"}, None, [
        target_row(0.5, "global", 3_900_000, 0.4937, {"features.0": 0.5}, 60.0, 90.5),
        target_row(0.5, "uniform", 4_200_000, 0.4684, {"features.0": 0.25, "features.4": 0.5},
                   55.25, 89.0),
    ])
    write_report(results, tmp_path)
    report = (tmp_path / "report.md").read_text()
    section = report[report.index("## Budgets"):report.index("## Plots")]
    assert "- `sensitivity` did not run: off." in section
    # uniform first (the order of the ways), drop = baseline - after, * = more than a point off
    assert (f"| 50.0% | uniform | 46.8%* | 4.20M | 2.00M | 55.25 | 89.00 | "
            f"{BASE_TOP1 - 89.0:.2f} |") in section
    assert "| 50.0% | global | 49.4% | 3.90M |" in section
    assert "\\* not within 1% of the target" in section
    assert "| layer | 50% uniform | 50% global |" in section
    assert "| `features.0` | 0.25 | 0.50 |" in section
    assert "| `features.4` | 0.50 | – |" in section  # global left it whole
    assert "budgets_accuracy_vs_macs.png" in report
    assert (tmp_path / "budgets_accuracy_vs_macs.png").is_file()
    printed = render({"out_dir": str(tmp_path), **results.to_dict()})  # the CLI's run table
    assert "50% uniform" in printed and "46.8%" in printed
    results.targets = None
    write_report(results, tmp_path)
    assert "## Budgets" not in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize(("assignment", "message"), [
    ("prune.targets=[0.5, 1.5]", "prune.targets: Value error, target 1.5 is not a share in (0, 1)"),
    ("prune.targets=[0]", "target 0 is not a share in (0, 1)"),
    ("prune.targets=[0.5, 0.501]", "repeat a whole percent"),
    ("prune.target_cost=flops", "prune.target_cost"),
])
def test_bad_targets_are_config_errors(assignment, message):
    with pytest.raises(FilterpruneError, match="invalid config") as error:
        parse_config({}, [assignment])
    assert message in str(error.value)


@pytest.mark.parametrize(("overrides", "reach"), [
    # features.0 alone, down to 1 filter: 31/32 of conv1 and of conv2's inputs removed
    (["prune.targets=[0.5]", "prune.skip=[features.4]"], 31 / 32 * (CONV1 + CONV2) / MACS),
    # features.4 alone, down to 1 filter: 63/64 of conv2 and of fc1's inputs removed
    (["prune.targets=[0.97]", "prune.skip=[features.0]"], 63 / 64 * (CONV2 + FC1) / MACS),
    # sensitivity measured up to 0.1: 28 of 32 and 57 of 64 filters kept at most
    (["prune.targets=[0.3]", "sensitivity.ratios=[0.1]"],
     1 - (CONV1 * 28 / 32 + CONV2 * 57 / 64 * 28 / 32 + FC1 * 57 / 64 + FC2) / MACS),
])
def test_an_unreachable_target_is_one_line_exit_2_before_training(tmp_path, config, capsys,
                                                                  overrides, reach):
    argv = ["run", str(config), "--out", str(tmp_path / "bad")]
    for assignment in overrides:
        argv += ["--set", assignment]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "is unreachable" in err and f"removes at most {reach:.1%}" in err, err
    assert not (tmp_path / "bad").exists()  # refused before anything was written
