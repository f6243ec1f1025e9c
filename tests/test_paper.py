"""The paper's named plans, its layer numbering and Table 1, against the figures Li et al. 2017
print (Table 1; §4.1-§4.4)."""

import json
from pathlib import Path

import pytest
import torch
from conftest import make_results, pruned_row

from filterprune.cli import main
from filterprune.cli.run import render
from filterprune.engine import apply_plan, l1_norm, profile
from filterprune.errors import FilterpruneError
from filterprune.models import create_model
from filterprune.paper import BASELINES, NAMED_PLANS, named_plan, paper_layer_ids
from filterprune.pipeline.config import load_config, parse_config
from filterprune.pipeline.results import RunResults

# Li et al. 2017, Table 1, as printed: FLOP (= MACs) and parameters pruned, %.
PRINTED_REDUCTIONS = {
    "vgg16-pruned-A": (34.2, 64.0),
    "resnet56-pruned-A": (10.4, 9.4),
    "resnet56-pruned-B": (27.6, 13.7),
    "resnet110-pruned-A": (15.9, 2.3),
    "resnet110-pruned-B": (38.6, 32.4),
    "resnet34-pruned-A": (15.5, 7.6),
    "resnet34-pruned-B": (24.2, 10.8),
    "resnet34-pruned-C": (7.5, 7.2),
}


def test_paper_layer_ids_follow_the_papers_numbering():
    ids = paper_layer_ids(create_model("resnet56"))
    assert ids["conv1"] == 1 and ids["layer1.0.conv1"] == 2 and ids["layer1.0.conv2"] == 3
    assert ids["layer2.0.conv1"] == 20 and max(ids.values()) == 55  # 6 * 9 + 1 convs
    vgg = paper_layer_ids(create_model("vgg16"))
    assert vgg["features.0"] == 1 and len(vgg) == 13
    resnet34 = paper_layer_ids(create_model("resnet34"))
    assert "layer2.0.downsample.0" not in resnet34  # projection shortcuts are not numbered
    assert resnet34["layer2.0.conv1"] == 8 and resnet34["layer4.2.conv2"] == 33


@pytest.mark.parametrize("name", [n for n in NAMED_PLANS if not n.startswith("resnet34")])
def test_named_plans_reproduce_table_1(name):
    plan = named_plan(name)
    baseline = BASELINES[plan.model]
    model, x = baseline.build(), baseline.example_input()
    before, after = profile(model, x), profile(apply_plan(model, *plan.plan(model, x)), x)
    macs_cut, params_cut = PRINTED_REDUCTIONS[name]
    assert 100 * (1 - after.macs / before.macs) == pytest.approx(macs_cut, abs=0.15)
    assert 100 * (1 - after.params_conv_linear / before.params_conv_linear) == pytest.approx(
        params_cut, abs=0.15)
    assert after.macs == pytest.approx(plan.reported.macs, rel=0.005)
    assert after.params_conv_linear == pytest.approx(plan.reported.params, rel=0.01)


def test_resnet56_pruned_b_keeps_the_papers_widths():
    model, x = BASELINES["resnet56"].build(), BASELINES["resnet56"].example_input()
    plan, _ = named_plan("resnet56-pruned-B").plan(model, x)
    skipped = {"layer1.7.conv1", "layer1.8.conv1", "layer2.0.conv1", "layer2.7.conv1",
               "layer3.0.conv1", "layer3.8.conv1"}  # layers 16, 18, 20, 34, 38, 54
    first_convs = {f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(9)}
    assert set(plan.kept) == first_convs - skipped
    kept = {name: len(k) for name, k in plan.kept.items()}
    assert {kept[n] for n in kept if n.startswith("layer1")} == {6}  # floor(16 * 0.4)
    assert {kept[n] for n in kept if n.startswith("layer2")} == {22}  # floor(32 * 0.7)
    assert {kept[n] for n in kept if n.startswith("layer3")} == {57}  # floor(64 * 0.9)


def test_resnet34_pruned_c_chooses_by_the_projection_shortcut():
    torch.manual_seed(0)
    model = create_model("resnet34", num_classes=10)
    plan, _ = named_plan("resnet34-pruned-C").plan(model, torch.zeros(1, 3, 64, 64))
    members = [f"layer3.{b}.conv2" for b in range(6)] + ["layer3.0.downsample.0"]
    assert set(plan.kept) == set(members)
    norms = l1_norm(model.get_submodule("layer3.0.downsample.0").weight)
    best = sorted(torch.topk(norms, 204).indices.tolist())  # floor(256 * 0.8)
    assert all(plan.kept[m] == best for m in members)


def test_named_plan_errors():
    with pytest.raises(FilterpruneError, match="named plan 'vgg16-pruned-Z'.*vgg16-pruned-A"):
        named_plan("vgg16-pruned-Z")
    with pytest.raises(FilterpruneError, match="'vgg16-pruned-A' is for model vgg16, not resnet56"):
        parse_config({"model": {"name": "resnet56"}, "prune": {"plans": ["vgg16-pruned-A"]}})
    with pytest.raises(FilterpruneError, match="prune.plans: .*unknown named plan 'A'"):
        parse_config({"model": {"name": "vgg16"}, "prune": {"plans": ["A"]}})
    config = parse_config({"model": {"name": "vgg16"}, "prune": {"plans": ["vgg16-pruned-A"]}})
    assert config.prune.ratios == []  # the plans replace the default sweep
    both = parse_config({"model": {"name": "vgg16"},
                         "prune": {"plans": ["vgg16-pruned-A"], "ratios": [0.5]}})
    assert both.prune.ratios == [0.5]


def test_summary_of_a_named_plan(capsys):
    assert main(["summary", "--model", "vgg16", "--plan", "vgg16-pruned-A", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["input_shape"] == [1, 3, 32, 32]
    assert result["macs"] == pytest.approx(2.06e8, rel=0.005)
    assert result["params_conv_linear"] == pytest.approx(5.4e6, rel=0.01)
    assert main(["summary", "--model", "resnet56", "--plan", "vgg16-pruned-A"]) == 2
    assert "is for vgg16, not resnet56" in capsys.readouterr().err


@pytest.mark.slow
def test_paper_table_command_fills_errors_from_results(tmp_path, capsys):
    results = make_results()
    results.model, results.baseline.top1 = "resnet56", 93.0
    results.pruning = [pruned_row(0, 6_000_000, 3_000_000, 50.0, 92.5, plan="resnet56-pruned-B"),
                       pruned_row(0.5, 3_000_000, 2_000_000, 40.0, 90.0)]
    path = results.save(tmp_path / "results.json")
    assert main(["paper-table", "--results", str(path), "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)["rows"]}
    assert list(rows) == ["vgg16", "vgg16-pruned-A", "resnet56", "resnet56-pruned-A",
                          "resnet56-pruned-B", "resnet110", "resnet110-pruned-A",
                          "resnet110-pruned-B", "resnet34", "resnet34-pruned-A",
                          "resnet34-pruned-B", "resnet34-pruned-C"]
    assert rows["resnet56"]["error"] == pytest.approx(7.0)
    assert rows["resnet56-pruned-B"]["error"] == pytest.approx(7.5)
    assert rows["resnet56-pruned-A"]["error"] is None and rows["vgg16"]["error"] is None
    for name, (macs_cut, params_cut) in PRINTED_REDUCTIONS.items():
        assert 100 * rows[name]["macs_reduction"] == pytest.approx(macs_cut, abs=0.15), name
        assert 100 * rows[name]["params_reduction"] == pytest.approx(params_cut, abs=0.2), name
    assert main(["paper-table"]) == 0
    text = capsys.readouterr().out
    assert "resnet34-pruned-C" in text and "27.52" in text
    path.write_text("{not json")
    assert main(["paper-table", "--results", str(path)]) == 2
    assert "cannot read results file" in capsys.readouterr().err
    path.write_text(json.dumps({"model": "resnet56", "baseline": {"top1": 93.0}}))
    assert main(["paper-table", "--results", str(path)]) == 2  # written before schema_version
    assert "schema version None" in capsys.readouterr().err


@pytest.mark.slow  # a resnet56 run: ~30 s on a loaded 2-core machine
def test_run_prunes_by_a_named_plan(tmp_path, data_dir, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({
        "model": {"name": "resnet56"},
        "data": {"name": "fashion-mnist", "data_dir": str(data_dir), "eval_batch_size": 50,
                 "train_subset": 100},
        "train": {"epochs": 1, "batch_size": 50}, "retrain": {"epochs": 1, "batch_size": 50},
        "prune": {"plans": ["resnet56-pruned-A", "resnet56-pruned-B"], "ratios": [0.5],
                  "residual": "coupled"},
        "sensitivity": {"enabled": False}, "deploy": {"enabled": False}, "scratch": ["E"],
        "compute": {},  # float32: the calibration is tested elsewhere
    }))
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["dataset"]["train_size"] == 100  # the subset trained on
    text = render(printed)  # the table printed without --json
    assert "resnet56-pruned-B" in text.splitlines()[3] and "0.5" in text.splitlines()[4]
    a, b, half = printed["pruning"]
    assert (a["plan"], b["plan"], half["plan"]) == ("resnet56-pruned-A", "resnet56-pruned-B", None)
    assert (a["residual"], half["residual"]) == ("inner", "coupled")  # a named plan's own policy
    assert (a["ratio"], half["ratio"]) == (None, 0.5)
    assert len(a["kept"]) == 27 - 4 and set(a["kept"].values()) == {14, 28, 57}
    assert a["macs"] > b["macs"] > half["macs"]
    for stage in ("resnet56-pruned-A", "resnet56-pruned-B", "pruned-50"):
        assert (out / f"{stage}.safetensors").is_file()
    assert "resnet56-pruned-B" in (out / "report.md").read_text()
    scratch = RunResults.load(out / "results.json").scratch
    assert [(c.plan, c.kind) for c in scratch] == [
        ("resnet56-pruned-A", "E"), ("resnet56-pruned-B", "E"), (None, "E")]
    assert (out / "scratch-E-resnet56-pruned-B.safetensors").is_file()


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    config = load_config(path)
    assert config.prune.plans or config.prune.ratios  # something to prune
