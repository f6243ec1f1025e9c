"""Budgets (issue 15): per-layer ratios chosen for a target share of MACs, params or latency, by
global ranking or from the sensitivity curves; the latency table; bad input."""

import json
import warnings

import pytest
import torch
from test_graph_general import DualPathNet, MixedResidualNet, PartialResidualNet
from torch import nn

import filterprune
from filterprune import LatencyTable, SensitivityResult
from filterprune.cli import main
from filterprune.engine import allocate, max_share, profile, trace
from filterprune.errors import FilterpruneError, FilterpruneWarning
from filterprune.models import create_model

timm = pytest.importorskip("timm")

RATIOS = [0.25, 0.5, 0.75]


def chain(width: int = 16) -> nn.Sequential:
    """Three 3x3 convs of ``width`` filters (layers '0', '2', '4') feeding a 1x1 head '6'."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(4, width, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(width, 4, 1)).eval()


def share_removed(model, pruned, x, kind):
    """The share of ``kind`` really removed, from profile of both models."""
    before, after = profile(model, x), profile(pruned, x)
    return 1 - getattr(after, kind) / getattr(before, kind)


@pytest.mark.parametrize(("name", "kwargs", "residual"), [
    ("resnet20", {}, "coupled"),
    ("vgg16-lite", {}, "inner"),
    ("mobilenetv2", {"width_multiplier": 0.5}, "inner"),
])
@pytest.mark.parametrize("kind", ["macs", "params"])
@pytest.mark.parametrize("share", [0.3, 0.6])
def test_global_ranking_removes_the_target_share_within_one_point(name, kwargs, residual, kind,
                                                                   share):
    model, x = create_model(name, **kwargs).eval(), torch.zeros(1, 3, 32, 32)
    result = filterprune.prune(model, x, target={kind: share}, residual=residual)
    real = share_removed(model, result.model, x, kind)
    assert abs(real - share) <= 0.01
    assert result.budget.achieved == pytest.approx(real, abs=1e-9)  # the cost model is exact
    assert result.budget.method == "global" and result.budget.within
    assert {n for n, r in result.budget.ratios.items() if r > 0} <= set(result.plan.kept)


def curves(model, x, sensitive: str, flat: str) -> SensitivityResult:
    """Measured-looking curves: ``sensitive`` loses 30 points per 0.25, ``flat`` 1 point."""
    layers = {sensitive: [60.0, 30.0, 10.0], flat: [89.0, 88.0, 87.0]}
    rest = {n: [85.0, 80.0, 70.0] for n in trace(model, x).layers if n not in layers}
    return SensitivityResult(RATIOS, {**layers, **rest}, baseline=90.0)


@pytest.mark.parametrize(("sensitive", "flat"), [("0", "2"), ("2", "0")])
def test_sensitivity_driven_prunes_the_insensitive_layer_more(sensitive, flat):
    model, x = chain(64), torch.zeros(1, 4, 8, 8)
    result = filterprune.prune(model, x, target={"macs": 0.3},
                               sensitivity=curves(model, x, sensitive, flat))
    ratios = result.budget.ratios
    assert ratios[flat] > ratios.get(sensitive, 0.0)
    assert sensitive not in ratios  # 30 points at 0.25: the others are always cheaper
    assert abs(share_removed(model, result.model, x, "macs") - 0.3) <= 0.01
    assert result.budget.method == "sensitivity"
    assert result.budget.predicted_loss < 5  # the flat layer and the 'rest' cost a few points


def test_sensitivity_cost_counts_the_consumers_of_a_layer():
    # '4' alone at 0.5 halves its own MACs and the head's: 16*16*9*64/2 + 4*16*64/2 MACs. A
    # per-layer sum that ignored the head would need a larger ratio for the same target.
    model, x = chain(), torch.zeros(1, 4, 8, 8)
    total = profile(model, x).macs
    own = (16 * 16 * 9 * 64) // 2
    head = (4 * 16 * 64) // 2
    share = (own + head) / total
    layers = {"4": [89.9, 89.8, 89.7]} | {n: [10.0, 5.0, 1.0] for n in ("0", "2")}
    result = filterprune.plan_pruning(model, x, target={"macs": share},
                                      sensitivity=SensitivityResult(RATIOS, layers, 90.0))
    assert result.budget.ratios == {"4": 0.5}
    assert result.budget.achieved == pytest.approx(share)


def test_global_ranking_normalised_differs_from_unnormalised():
    model, x = chain(64), torch.zeros(1, 4, 8, 8)
    with torch.no_grad():
        model[2].weight.mul_(100)  # '2' has far larger norms than '0' and '4'
    graph, costs = trace(model, x), profile(model, x)
    plain = allocate(model, graph, costs, {"macs": 0.4}, normalize=None).ratios
    mean = allocate(model, graph, costs, {"macs": 0.4}).ratios
    assert "2" not in plain  # one threshold over raw norms never reaches the large ones
    assert mean.get("2", 0) > 0 and mean != plain
    assert allocate(model, graph, costs, {"macs": 0.4}, normalize="max").within


def test_round_to_and_grouped_convs_keep_their_rules():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(64, 64, 3, padding=1, groups=4), nn.ReLU(),
                        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 4, 1)).eval()
    x = torch.zeros(1, 3, 8, 8)
    result = filterprune.prune(net, x, target={"macs": 0.4}, round_to=8)
    assert result.plan.kept and all(len(k) % 8 == 0 for k in result.plan.kept.values())
    per_run = [sum(16 * r <= i < 16 * (r + 1) for i in result.plan.kept["0"]) for r in range(4)]
    assert len(set(per_run)) == 1  # '0' is read by the grouped conv: equal counts per group
    assert result.budget.achieved == pytest.approx(share_removed(net, result.model, x, "macs"))
    assert result.budget.within


def test_errors_are_one_line():
    model, x = chain(), torch.zeros(1, 4, 8, 8)
    for target in ({"macs": 0.0}, {"macs": 1.0}, {"macs": -0.2}, {"params": 1.5}):
        with pytest.raises(FilterpruneError, match=r"not a share in \(0, 1\)"):
            filterprune.prune(model, x, target=target)
    with pytest.raises(FilterpruneError, match="unknown target 'flops'"):
        filterprune.prune(model, x, target={"flops": 0.5})
    with pytest.raises(FilterpruneError, match="exactly one of ratio= and target="):
        filterprune.prune(model, x, ratio=0.5, target={"macs": 0.5})
    with pytest.raises(FilterpruneError, match="exactly one of ratio= and target="):
        filterprune.prune(model, x)
    # only '4' left: it keeps 1 of 16 filters, saving 15/16 of its MACs and of the head's
    # (16*16*9*64 + 4*16*64) * 15/16 of 335,872 = 42.3%
    with pytest.raises(FilterpruneError, match=r"unreachable: .* at most 42\.3% of the macs"):
        filterprune.prune(model, x, target={"macs": 0.5}, skip=["0", "2"])
    with pytest.raises(FilterpruneError, match="needs a latency table"):
        filterprune.prune(model, x, target={"latency": 0.5})
    other = SensitivityResult(RATIOS, {"layer1.0.conv1": [1.0, 1.0, 1.0]}, 1.0)
    with pytest.raises(FilterpruneError, match="'layer1.0.conv1', not a prunable layer"):
        filterprune.prune(model, x, target={"macs": 0.3}, sensitivity=other)
    coupled = SensitivityResult(RATIOS, {"0": [1.0, 1.0, 1.0]}, 1.0, members={"0": ["0", "9"]})
    with pytest.raises(FilterpruneError, match=r"stands for \['0', '9'\]"):
        filterprune.prune(model, x, target={"macs": 0.3}, sensitivity=coupled)


def test_a_layer_without_a_curve_stays_whole_and_is_said():
    model, x = chain(), torch.zeros(1, 4, 8, 8)
    partial = SensitivityResult(RATIOS, {"0": [89.0, 88.0, 87.0], "2": [89.0, 88.0, 87.0]}, 90.0)
    with pytest.warns(FilterpruneWarning, match="1 layer.* left whole"):
        result = filterprune.prune(model, x, target={"macs": 0.3}, sensitivity=partial)
    assert result.budget.unmeasured == ["4"] and "4" not in result.plan.kept


def hand_table() -> LatencyTable:
    """Latency of '0' and '2' of ``chain``: width 8 is far faster than 7 (as on SIMD units)."""
    row = {4: 1.0, 7: 3.0, 8: 1.5, 12: 2.8, 16: 4.0}
    return LatencyTable({"0": dict(row), "2": dict(row)}, {"0": dict.fromkeys(row, 0.0),
                        "2": dict.fromkeys(row, 0.0)}, model_ms=10.0, model_iqr_ms=0.1,
                        device="cpu", threads=1, input_shape=[1, 4, 8, 8], min_run_time_s=0.1)


def test_latency_target_picks_measured_widths_from_the_table():
    model, x = chain(), torch.zeros(1, 4, 8, 8)
    flat = SensitivityResult(RATIOS, {"0": [89.0, 88.0, 87.0], "2": [89.0, 88.0, 87.0],
                                      "4": [50.0, 40.0, 30.0]}, 90.0)
    result = filterprune.plan_pruning(model, x, target={"latency": 0.5}, sensitivity=flat,
                                      latency=hand_table())
    widths = {n: len(result.plan.kept.get(n, range(16))) for n in ("0", "2")}
    assert set(widths.values()) <= {4, 7, 8, 12, 16}
    # saving 5 ms of 10: both at 8 (2.5 + 2.5), never 7 (slower than 8)
    assert widths == {"0": 8, "2": 8} and result.budget.achieved == pytest.approx(0.5)


def test_latency_table_measures_round_trips_and_says_its_conditions(tmp_path):
    model, x = chain(), torch.zeros(2, 4, 8, 8)
    table = filterprune.latency_table(model, x, step=8, ratios=[0.5], min_run_time_s=0.001,
                                      budget_s=0.05)
    assert sorted(table.layers) == ["0", "2", "4"]
    assert sorted(table.layers["0"]) == [8, 16]  # multiples of 8, the 0.5 width, the full one
    assert table.input_shape == [2, 4, 8, 8] and table.device == "cpu" and table.threads >= 1
    assert all(ms > 0 for row in table.layers.values() for ms in row.values())
    path = table.save(tmp_path / "table.json")
    assert LatencyTable.load(path) == table
    with pytest.raises(FilterpruneError, match="not a latency table"):
        LatencyTable.from_json(json.dumps({"schema": 99}))
    other = create_model("scnnb", in_channels=4, input_size=8)
    with pytest.raises(FilterpruneError, match="not a prunable layer of this model"):
        filterprune.prune(other, x, target={"latency": 0.3}, latency=table)


def test_cli_target_with_a_sensitivity_file(tmp_path, capsys):
    model, x = chain(), torch.zeros(1, 4, 8, 8)
    path = tmp_path / "s.json"
    curves(model, x, "0", "2").save(path)
    spec = ["--model", "scnnb", "--input-shape", "1,28,28", "--dry-run"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FilterpruneWarning)
        code = main(["prune", *spec, "--target", "macs=0.5", "--json"])
    out, _ = capsys.readouterr()
    budget = json.loads(out)["budget"]
    assert code == 0 and budget["method"] == "global"
    assert abs(json.loads(out)["macs_reduction"] - 0.5) <= 0.01
    code = main(["prune", *spec, "--target", "macs=0.5", "--sensitivity", str(path)])
    _, err = capsys.readouterr()
    assert code == 2 and "not a prunable layer of this model" in err  # a chain's result
    for bad, message in (("macs=2", "not a share in (0, 1)"), ("macs", "is not COST=S")):
        code = main(["prune", *spec, "--target", bad])
        _, err = capsys.readouterr()
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    code = main(["prune", *spec, "--target", "macs=0.5", "--ratio", "0.5"])
    assert code == 2 and "one of --ratio, --target and --plan" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["macs", "params"])
def test_sensitivity_driven_reaches_the_target_on_a_zoo_model(kind):
    model, x = create_model("resnet20").eval(), torch.zeros(1, 3, 32, 32)
    names = list(trace(model, x).layers)
    # later layers lose less: the plan should prune layer3 more than layer1
    layers = {n: [90 - (30 - 3 * i) * r for r in RATIOS] for i, n in enumerate(names)}
    result = filterprune.prune(model, x, target={kind: 0.5},
                               sensitivity=SensitivityResult(RATIOS, layers, 90.0))
    assert abs(share_removed(model, result.model, x, kind) - 0.5) <= 0.01
    ratios = result.budget.ratios
    assert ratios.get("layer3.2.conv1", 0) > ratios.get("layer1.0.conv1", 0)


def test_uniform_allocation_gives_every_layer_one_ratio_at_the_target():
    model, x = create_model("resnet20").eval(), torch.zeros(1, 3, 32, 32)
    graph, costs = trace(model, x), profile(model, x)
    budget = allocate(model, graph, costs, {"params": 0.4}, method="uniform")
    kept = {n: round((1 - r) * graph.layers[n].out_channels) for n, r in budget.ratios.items()}
    # one ratio r for all: every layer keeps floor(width * (1 - r)) of 16, 32 or 64 filters
    by_width = {graph.layers[n].out_channels: k for n, k in kept.items()}
    assert len(kept) == len(graph.layers) and len(set(kept.values())) == len(by_width) == 3
    pruned = filterprune.prune(model, x, ratio=budget.ratios).model
    assert abs(share_removed(model, pruned, x, "params") - 0.4) <= 0.01
    with pytest.raises(FilterpruneError, match="allocation method 'sensitivity'"):
        allocate(model, graph, costs, {"macs": 0.4}, method="sensitivity")
    with pytest.raises(FilterpruneError, match="allocation method 'median'"):
        allocate(model, graph, costs, {"macs": 0.4}, method="median")


def test_noisy_entries_are_flagged_and_the_cli_reads_a_table(tmp_path, capsys):
    rows = {"features.0": {16: 2.0, 32: 4.0}, "features.4": {32: 3.0, 64: 6.0}}
    spread = {"features.0": {16: 0.1, 32: 1.0}, "features.4": {32: 0.1, 64: 0.2}}
    table = LatencyTable(rows, spread, model_ms=20.0, model_iqr_ms=0.5, device="cpu",
                         threads=1, input_shape=[1, 1, 28, 28], min_run_time_s=0.1)
    assert table.noisy() == [("features.0", 32)]  # IQR 1.0 > 10% of 4.0 ms
    assert "1 noisy" in table.describe()
    path = table.save(tmp_path / "t.json")
    spec = ["--model", "scnnb", "--input-shape", "1,28,28", "--dry-run", "--json"]
    code = main(["prune", *spec, "--target", "latency=0.2", "--latency-table", str(path)])
    budget = json.loads(capsys.readouterr().out)["budget"]
    # 4 ms of 20 to save, linear between the measured widths of the table
    assert code == 0 and budget["target"] == "latency"
    assert budget["achieved"] == pytest.approx(0.2, abs=0.01)
    code = main(["prune", *spec, "--target", "latency=0.2"])
    assert code == 2 and "needs a latency table" in capsys.readouterr().err


def test_max_share_is_the_share_removed_at_the_largest_ratio_or_one_filter():
    net, x = create_model("scnnb", in_channels=1), torch.zeros(1, 1, 28, 28)
    graph, costs = trace(net, x), profile(net, x)
    # hand-counted parameters: conv 32x1x3x3 + 32, BN 64, conv 64x32x3x3 + 64, BN 128,
    # Linear 3136 -> 1280 + 1280, Linear 1280 -> 10 + 10
    params = 288 + 32 + 64 + 18432 + 64 + 128 + 3136 * 1280 + 1280 + 12800 + 10
    # features.4 at 0.5 keeps 32 of 64: half its weights, bias and BN, half of fc1's inputs
    saved = 9216 + 32 + 64 + 1568 * 1280
    assert max_share(net, graph, costs, "params", skip=["features.0"],
                     largest_ratio=0.5) == pytest.approx(saved / params)
    # one filter of 64 kept: 63/64 of conv2 and of fc1's inputs (MACs: conv2 on 14x14, fc1)
    conv2, fc1, total = 64 * 32 * 9 * 196, 3136 * 1280, costs.macs
    assert max_share(net, graph, costs, "macs", skip=["features.0"]) == pytest.approx(
        63 / 64 * (conv2 + fc1) / total)
    with pytest.raises(FilterpruneError, match="needs a latency table"):
        max_share(net, graph, costs, "latency")


def small_convnext() -> nn.Module:
    from timm.models.convnext import ConvNeXt

    return ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 8, 16, 16), num_classes=4, ls_init_value=0.5)


def small_res2net() -> nn.Module:
    from timm.models.res2net import Bottle2neck
    from timm.models.resnet import ResNet

    return ResNet(Bottle2neck, [1, 1, 1, 1], base_width=26, block_args={"scale": 4},
                  num_classes=5)


def unequal_split_net() -> nn.Module:
    """MixNet's mixed depthwise conv, split into parts of 2, 3 and 7 channels."""
    from timm.layers import MixedConv2d

    net = nn.Sequential(nn.Conv2d(3, 12, 1), MixedConv2d(12, 12, [3, 5, 7], depthwise=True),
                        nn.ReLU(), MixedConv2d(12, 8, [1, 1]), nn.Conv2d(8, 4, 1))
    net[1].splits = [2, 3, 7]
    for conv, n in zip(net[1].values(), net[1].splits, strict=True):
        conv.weight.data = conv.weight.data.repeat(3, 1, 1, 1)[:n]
        conv.in_channels = conv.out_channels = conv.groups = n
    return net


def linear_head_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 5))


@pytest.mark.parametrize(("build", "size", "linear"), [
    (lambda: timm.create_model("ghostnet_050", num_classes=5), 32, False),  # repeated channels
    (small_res2net, 32, False),  # equal splits (Res2Net)
    (unequal_split_net, 8, False),  # unequal splits (MixNet)
    (small_convnext, 32, False),  # channels-last Linears
    (linear_head_net, 8, True),  # prune_linear: the hidden Linear of a VGG-style head
    (DualPathNet, 8, False),  # channels partly joined: DPN's dual path
    (PartialResidualNet, 8, False),  # ReXNet's partial residual
    (MixedResidualNet, 8, False),  # MixNet's split parts added to whole channels
], ids=["ghostnet", "res2net", "unequal-split", "convnext", "linear-head", "dual-path",
        "partial-residual", "mixed-residual"])
@pytest.mark.parametrize("kind", ["macs", "params"])
def test_cost_model_equals_the_profile_of_the_pruned_model_on_new_layouts(build, size, linear,
                                                                          kind):
    torch.manual_seed(0)
    model, x = build().eval(), torch.randn(1, 3, size, size)
    for share in (0.2, 0.4):
        with warnings.catch_warnings():  # a tiny net's steps are coarse: the share may miss
            warnings.simplefilter("ignore", FilterpruneWarning)
            result = filterprune.prune(model, x, target={kind: share}, residual="coupled",
                                       prune_linear=linear)
        assert result.plan.kept
        assert result.budget.achieved == pytest.approx(
            share_removed(model, result.model, x, kind), abs=1e-9)
