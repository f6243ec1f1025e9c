"""The engine on real timm and torchvision model code (random weights): norm+activation layers,
stochastic depth, shape queries, channel splits and slices, Conv2dSame and weight-standardised
convs. Every pruned model equals the masked original (removed channels zeroed where read)."""

import pytest
import torch
from test_graph_general import check_pruned
from torch import nn

from filterprune.engine import trace

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")


@pytest.mark.parametrize("tracer", ["fx", "record"])
def test_norm_act_layer_follows_its_input_like_batchnorm(tracer):
    from timm.layers import BatchNormAct2d

    net = nn.Sequential(nn.Conv2d(3, 16, 3), BatchNormAct2d(16), nn.Conv2d(16, 8, 3))
    result = check_pruned(net, torch.randn(2, 3, 12, 12), tracer=tracer)
    assert list(result.plan.kept) == ["0"]
    assert len(result.plan.kept["0"]) == 11  # floor(16 * 0.7)
    assert result.model[1].num_features == 11 and result.model[1].running_mean.shape == (11,)


@pytest.mark.parametrize("tracer", ["fx", "record"])
def test_stochastic_depth_and_drop_path_keep_the_channels(tracer):
    from timm.layers import DropPath
    from torchvision.ops import StochasticDepth

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
            self.sd, self.dp = StochasticDepth(0.2, "row"), DropPath(0.2)
            self.head = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            x = self.a(x)
            return self.head(self.dp(self.sd(self.b(x))) + x)

    result = check_pruned(Block(), torch.randn(2, 3, 6, 6), residual="coupled", tracer=tracer)
    assert set(result.plan.kept) == {"a", "b"}


def test_shape_queries_do_not_block():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 3)

        def forward(self, x):
            y = self.a(x)
            torch._assert(y.ndim == 4 and y.dtype == torch.float32, "4D")
            return self.b(y.view(y.size(0), y.shape[1], *y.shape[2:]))

    assert list(trace(Net(), torch.zeros(1, 3, 8, 8)).layers) == ["a"]


def test_fixed_size_channel_split_blocks_with_the_module_named():
    from timm.models.res2net import Bottle2neck

    block = nn.Sequential(Bottle2neck(16, 4, scale=4, base_width=16, act_layer=nn.ReLU,
                                      norm_layer=nn.BatchNorm2d))
    graph = trace(block, torch.zeros(1, 16, 8, 8), residual="coupled")
    reason = graph.not_prunable["0.conv1"]
    assert "split at fixed sizes" in reason and "'0' (Bottle2neck)" in reason


def test_conv2d_same_is_pruned_and_weight_standardised_conv_is_refused_with_its_name():
    from timm.layers import Conv2dSame, ScaledStdConv2d

    same = nn.Sequential(Conv2dSame(3, 8, 3, stride=2), nn.ReLU(), Conv2dSame(8, 4, 3))
    assert list(check_pruned(same, torch.randn(2, 3, 9, 9)).plan.kept) == ["0"]
    std = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), ScaledStdConv2d(8, 4, 3))
    graph = trace(std, torch.zeros(1, 3, 9, 9))
    assert "0" not in graph.layers
    assert "ScaledStdConv2d" in graph.not_prunable["0"]
    assert "weight is computed" in graph.not_prunable["0"]


@pytest.mark.parametrize("name", ["efficientnet_b0", "mobilenetv3_small_100", "regnetx_002",
                                  "repvgg_a0", "lcnet_050", "gernet_s"])
def test_timm_models_prune_exactly_and_much(name):
    import filterprune

    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5)
    x = torch.randn(2, 3, 64, 64)
    result = check_pruned(model, x, residual="coupled")
    before = filterprune.profile(model, x[:1]).macs
    assert filterprune.profile(result.model, x[:1]).macs < 0.6 * before


@pytest.mark.parametrize("name", ["efficientnet_b0", "mobilenet_v3_small", "regnet_x_400mf"])
def test_torchvision_models_prune_exactly_and_much(name):
    import filterprune

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=5)
    x = torch.randn(2, 3, 64, 64)
    result = check_pruned(model, x, residual="coupled")
    before = filterprune.profile(model, x[:1]).macs
    assert filterprune.profile(result.model, x[:1]).macs < 0.6 * before
