"""Criteria of Li et al. 2017, §4.5: largest-L1, random, and activation-based (Fig. 8, 9)."""

import json

import pytest
import torch
from torch import nn

from filterprune.engine import (
    ACTIVATION_CRITERIA,
    activation_scores,
    l1_norm,
    random_criterion,
    select_filters,
    trace,
)
from filterprune.errors import FilterpruneError


def tiny_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 2, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 6, 2, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Flatten(), nn.Linear(6, 3),
    )


def test_largest_l1_removes_the_largest_filters():
    net = tiny_net()
    graph = trace(net, torch.zeros(1, 1, 3, 3))
    norms = l1_norm(net[3].weight)
    plan = select_filters(net, graph, {"3": 0.5}, "l1-largest")
    smallest_three = sorted(norms.argsort()[:3].tolist())
    assert plan.kept["3"] == smallest_three
    assert plan.criterion == "l1-largest"


def test_random_is_reproducible_by_seed_and_ignores_the_weights():
    net = tiny_net()
    graph = trace(net, torch.zeros(1, 1, 3, 3))
    kept = [select_filters(net, graph, {"3": 0.5}, random_criterion(seed)).kept["3"]
            for seed in (1, 1, 2, 3, 4)]
    assert kept[0] == kept[1]
    assert len({tuple(k) for k in kept}) > 1  # other seeds give other choices
    with torch.no_grad():
        net[3].weight.mul_(-3.0)
    assert select_filters(net, graph, {"3": 0.5}, random_criterion(1)).kept["3"] == kept[0]
    more = select_filters(net, graph, {"3": 0.8}, random_criterion(1)).kept["3"]
    assert set(more) <= set(kept[0])  # one random order of removal across ratios


def test_activation_criteria_match_a_hand_computation():
    conv = nn.Conv2d(1, 2, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]], [[[0.0, 0.0], [0.0, -2.0]]]]))
    net = nn.Sequential(conv, nn.BatchNorm2d(2), nn.ReLU())
    images = [torch.tensor([[[[1.0, 2.0, 0.0], [3.0, 4.0, 0.0], [0.0, 0.0, 5.0]]]]),
              torch.tensor([[[[0.0, -1.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 1.0]]]])]
    # Filter 0 reads the top-left pixel of each 2x2 window; filter 1, -2 x the bottom-right one.
    maps = {
        0: [[1.0, 2.0, 3.0, 4.0], [0.0, -1.0, 2.0, 0.0]],
        1: [[-8.0, 0.0, 0.0, -10.0], [0.0, 0.0, 0.0, -2.0]],
    }
    scores = activation_scores(net, images, ["0"])
    for j, per_image in maps.items():
        means, stds, l1s, l2s = [], [], [], []
        for values in per_image:
            mean = sum(values) / 4
            means.append(mean)
            stds.append((sum((v - mean) ** 2 for v in values) / 4) ** 0.5)
            l1s.append(sum(abs(v) for v in values))
            l2s.append(sum(v * v for v in values) ** 0.5)
        l2_mean = sum(l2s) / 2
        expected = {
            "mean-mean": sum(means) / 2, "mean-std": sum(stds) / 2, "mean-l1": sum(l1s) / 2,
            "mean-l2": l2_mean, "var-l2": sum((v - l2_mean) ** 2 for v in l2s) / 2,
        }
        for criterion in ACTIVATION_CRITERIA:
            assert scores[criterion]["0"][j].item() == pytest.approx(expected[criterion], rel=1e-6)
    assert net.training  # mode restored, no hook left behind
    assert not conv._forward_hooks


def test_select_filters_accepts_precomputed_scores():
    net = tiny_net()
    graph = trace(net, torch.zeros(1, 1, 3, 3))
    given = {"3": torch.tensor([5.0, 0.0, 4.0, 1.0, 3.0, 2.0])}
    plan = select_filters(net, graph, {"3": 0.5}, "mean-std", scores=given)
    assert plan.kept["3"] == [0, 2, 4]
    assert plan.criterion == "mean-std"
    with pytest.raises(FilterpruneError, match="no precomputed scores"):
        select_filters(net, graph, {"0": 0.5}, "x", scores=given)
    with pytest.raises(FilterpruneError, match="shape"):
        select_filters(net, graph, {"3": 0.5}, "x", scores={"3": torch.zeros(4)})


def test_activation_scores_rejects_non_convs_and_no_data():
    net = tiny_net()
    with pytest.raises(FilterpruneError, match="not a conv"):
        activation_scores(net, [torch.zeros(1, 1, 3, 3)], ["7"])
    with pytest.raises(FilterpruneError, match="at least one"):
        activation_scores(net, [], ["0"])


def test_criteria_command_writes_json_plot_and_table(tmp_path, config, capsys):
    from filterprune.checkpoint import ModelSpec, save_model
    from filterprune.cli import main

    torch.manual_seed(0)
    spec = ModelSpec("scnnb", {"num_classes": 10, "in_channels": 1}, (1, 1, 28, 28))
    checkpoint = save_model(tmp_path / "m.safetensors", spec.build(), spec)
    out = tmp_path / "criteria"
    argv = ["criteria", str(config), "--checkpoint", str(checkpoint), "--ratios", "0.5", "0.9",
            "--images", "64", "--out", str(out)]
    assert main(argv + ["--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (out / "criteria.png").stat().st_size > 0
    assert json.loads((out / "criteria.json").read_text())["criteria"] == result["criteria"]
    assert list(result["criteria"]) == ["l1", "l2", "random", "l1-largest", *ACTIVATION_CRITERIA]
    for per_layer in result["criteria"].values():
        assert list(per_layer) == ["features.0", "features.4"]
        assert all(len(accs) == 2 and all(0 <= a <= 100 for a in accs)
                   for accs in per_layer.values())
    assert result["images"] == 64
    assert main(argv + ["--criteria", "l1", "mean-std"]) == 0
    table = capsys.readouterr().out
    assert "mean-std" in table and "features.4" in table and "random" not in table
    assert main(argv + ["--criteria", "l3"]) == 2
    assert "unknown criterion 'l3'" in capsys.readouterr().err
    # the synthetic training set has 200 images, 20 of them held out as the validation split
    argv[argv.index("--images") + 1] = "181"
    assert main(argv) == 2
    assert "--images must be in [1, 180]" in capsys.readouterr().err
