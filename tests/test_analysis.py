"""filterprune.sensitivity: the library sensitivity analysis for one's own model and metric."""

import copy

import pytest
import torch
from torch import nn

import filterprune
from filterprune import SensitivityResult
from filterprune.errors import FilterpruneError


class Residual(nn.Module):
    """conv1 feeds a residual addition with conv3 (coupled under 'coupled'); conv2 is inner."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.conv3 = nn.Conv2d(6, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        a = torch.relu(self.conv1(x))
        b = self.conv3(torch.relu(self.conv2(a)))
        return self.fc((a + b).mean((2, 3)))


@pytest.fixture
def net():
    torch.manual_seed(0)
    return Residual().eval()


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(20, 3, 8, 8, generator=g), torch.randint(0, 4, (20,), generator=g))
            for _ in range(3)]


def top1(model, data):
    with torch.no_grad():
        hits = sum((model(x).argmax(1) == y).sum().item() for x, y in data)
    return 100.0 * hits / sum(len(y) for _, y in data)


def test_shared_prefix_copies_and_a_users_evaluate_agree(net, data):
    x = torch.zeros(1, 3, 8, 8)
    before = copy.deepcopy(net.state_dict())
    shared = filterprune.sensitivity(net, x, data=data, ratios=[0.25, 0.5, 0.75],
                                     method="shared-prefix")
    copies = filterprune.sensitivity(net, x, data=data, ratios=[0.25, 0.5, 0.75],
                                     method="copies")
    mine = filterprune.sensitivity(net, x, evaluate=lambda m: top1(m, data),
                                   ratios=[0.25, 0.5, 0.75])
    assert list(shared.layers) == ["conv2"]  # inner: conv1 and conv3 feed the addition
    for result in (copies, mine):
        assert result.layers.keys() == shared.layers.keys()
        for name in shared.layers:
            assert result.layers[name] == pytest.approx(shared.layers[name])
    assert shared.baseline == pytest.approx(top1(net, data))
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_each_pruned_copy_is_scored_by_the_users_metric(net):
    widths = []

    def width(model):  # a metric of any kind: here the width of the pruned conv2
        widths.append(model.conv2.out_channels)
        return -float(model.conv2.out_channels)

    result = filterprune.sensitivity(net, torch.zeros(1, 3, 8, 8), evaluate=width,
                                     ratios=[0.5, 0.0])
    assert widths == [6, 3, 6] and result.baseline == -6.0
    assert result.layers == {"conv2": [-3.0, -6.0]} and result.metric == "width"
    assert result.drops() == {"conv2": [-3.0, 0.0]}


def test_coupled_groups_are_analysed_once_and_name_their_members(net, data):
    result = filterprune.sensitivity(net, torch.zeros(1, 3, 8, 8), data=data, ratios=[0.5],
                                     residual="coupled")
    assert list(result.layers) == ["conv1", "conv2"]
    assert result.members == {"conv1": ["conv1", "conv3"]}
    only = filterprune.sensitivity(net, torch.zeros(1, 3, 8, 8), data=data, ratios=[0.5],
                                   residual="coupled", layers=["conv3"])
    assert only.layers == {"conv1": result.layers["conv1"]}


def test_the_result_round_trips_and_ranks_the_sensitive_layers(tmp_path):
    result = SensitivityResult([0.3, 0.6], {"a": [90.0, 80.0], "b": [70.0, 10.0],
                                            "c": [89.0, 88.0]}, 91.0, split="validation")
    assert result.most_sensitive(2) == ["b", "a"]
    path = result.save(tmp_path / "s.json")
    assert SensitivityResult.load(path) == result
    assert SensitivityResult.from_json(result.to_json()) == result
    assert "validation split" in result.table()
    figure = result.figure()
    assert len(figure.axes[0].lines) == 4  # three layers and the baseline
    assert result.plot(tmp_path / "s.png").stat().st_size > 0


@pytest.mark.parametrize("payload, message", [
    ({"schema": 99}, "not a sensitivity result"),
    ({"schema": 1, "ratios": [0.5], "layers": {"a": [1.0, 2.0]}, "baseline": 1.0},
     "do not match its ratios"),
])
def test_a_malformed_result_is_refused(payload, message):
    with pytest.raises(FilterpruneError, match=message):
        SensitivityResult.from_dict(payload)


@pytest.mark.parametrize("kwargs, message", [
    ({}, "exactly one of evaluate= and data="),
    ({"data": [], "evaluate": len}, "exactly one of"),
    ({"data": "gen", "ratios": [1.0]}, r"ratios must be in \[0, 1\)"),
    ({"data": "gen"}, "re-iterable"),
    ({"data": "list", "layers": ["conv1"]}, "layer 'conv1' cannot be pruned"),
    ({"data": "list", "layers": ["head*"]}, "matches no prunable layer"),
    ({"data": "list", "method": "fast"}, "unknown sensitivity method"),
    ({"evaluate": lambda m: "good"}, "evaluate must return a number"),
])
def test_bad_requests_are_one_clear_error(net, data, kwargs, message):
    if kwargs.get("data") == "gen":
        kwargs["data"] = iter(data)
    elif kwargs.get("data") == "list":
        kwargs["data"] = data
    with pytest.raises(FilterpruneError, match=message):
        filterprune.sensitivity(net, torch.zeros(1, 3, 8, 8), **kwargs)
