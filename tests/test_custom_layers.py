"""Layers taught to the engine with register_layer (each channel flow) and hidden head Linears
pruned with prune_linear, exact against the masked reference (removed channels zeroed where
read)."""

import warnings

import pytest
import torch
from test_graph_general import check_pruned
from torch import nn

import filterprune
from filterprune import FilterpruneError
from filterprune.engine import register_layer, trace
from filterprune.errors import FilterpruneWarning


class Scale(nn.Module):
    """One learnt factor per channel (follows its input)."""

    def __init__(self, c):
        super().__init__()
        self.factor = nn.Parameter(torch.rand(c, 1, 1) + 0.5)

    def forward(self, x):
        return x * self.factor


class Mixer(nn.Module):
    """A 1x1 conv written as an einsum, weight (C_in, C_out): produces channels."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(c_in, c_out))
        self.shift = nn.Parameter(torch.randn(c_out))
        self.width = c_out

    def forward(self, x):
        return torch.einsum("bihw,io->bohw", x, self.kernel) + self.shift[:, None, None]


class Head(nn.Module):
    """Global average pooling and a class matrix (classes, C): consumes channels."""

    def __init__(self, c, classes):
        super().__init__()
        self.matrix = nn.Parameter(torch.randn(classes, c))

    def forward(self, x):
        return x.mean((2, 3)) @ self.matrix.t()


class ChannelSoftmax(nn.Module):
    """Softmax over the channels: blocks them."""

    def forward(self, x):
        return x.softmax(1)


register_layer(Scale, "follows", outputs={"factor": 0})
register_layer(Mixer, "produces", inputs={"kernel": 0}, outputs={"kernel": 1, "shift": 0},
               resize=lambda m: setattr(m, "width", m.kernel.shape[1]))
register_layer(Head, "consumes", inputs={"matrix": 1})
register_layer(ChannelSoftmax, "blocks")


@pytest.mark.parametrize("tracer", ["fx", "record"])
def test_custom_layers_prune_exactly_with_their_flows(tracer):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), Scale(8), Mixer(8, 10), nn.ReLU(),
                        nn.Conv2d(10, 6, 1), Head(6, 3))
    result = check_pruned(net, torch.randn(2, 3, 6, 6), tracer=tracer)
    assert set(result.plan.kept) == {"0", "2", "4"}
    pruned = result.model
    assert pruned[1].factor.shape == (5, 1, 1)  # floor(8 * 0.7)
    assert pruned[2].kernel.shape == (5, 7) and pruned[2].width == 7  # floor(10 * 0.7)
    assert pruned[4].in_channels == 7 and pruned[5].matrix.shape == (3, 4)
    kept = result.plan.kept["2"]  # the Mixer is scored by its kernel's columns (its filters)
    l1 = net[2].kernel.detach().abs().sum(0)
    assert set(kept) == set(torch.topk(l1, 7).indices.tolist())


def test_a_blocking_layer_blocks_with_its_name():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), ChannelSoftmax(), nn.Conv2d(8, 4, 3))
    reason = trace(net, torch.zeros(1, 3, 8, 8)).not_prunable["0"]
    assert "'1' (ChannelSoftmax), registered as blocking" in reason


def test_a_bad_registration_is_refused():
    with pytest.raises(FilterpruneError, match="unknown channel flow 'copies'"):
        register_layer(Scale, "copies")
    with pytest.raises(FilterpruneError, match="needs outputs"):
        register_layer(Mixer, "produces", inputs={"kernel": 0})


def vgg_head_net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 16),
                         nn.ReLU(), nn.Dropout(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 5))


def test_prune_linear_prunes_hidden_head_layers_never_the_output_one():
    x = torch.randn(2, 3, 6, 6)
    assert set(check_pruned(vgg_head_net(), x).plan.kept) == {"0"}  # off by default
    result = check_pruned(vgg_head_net(), x, prune_linear=True)
    assert {k: len(v) for k, v in result.plan.kept.items()} == {"0": 5, "3": 11, "6": 8}
    assert result.model[8].out_features == 5 and result.model[8].in_features == 8


def test_cli_prune_linear(tmp_path, capsys):
    import json

    from filterprune.cli import main

    code = main(["prune", "--model", "scnnb", "--input-shape", "1,28,28", "--ratio", "0.5",
                 "--prune-linear", "--dry-run", "--json"])
    layers = json.loads(capsys.readouterr().out)["plan"]["layers"]
    assert code == 0 and layers["classifier.1"]["width"] == 1280
    assert "classifier.4" not in layers


def test_a_target_share_prunes_registered_layers_scored_by_their_output_tensor():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), Scale(8), Mixer(8, 10), nn.ReLU(),
                        nn.Conv2d(10, 6, 1), Head(6, 3)).eval()
    x = torch.randn(1, 3, 6, 6)
    with warnings.catch_warnings():  # a tiny net's steps are coarse: the share may miss
        warnings.simplefilter("ignore", FilterpruneWarning)
        result = filterprune.prune(net, x, target={"macs": 0.3})
    assert "2" in result.budget.ratios  # the Mixer's filters were ranked with the convs'
    before, after = filterprune.profile(net, x), filterprune.profile(result.model, x)
    assert result.budget.achieved == pytest.approx(1 - after.macs / before.macs, abs=1e-9)
