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


@pytest.mark.parametrize("tracer", ["fx", "record"])
def test_res2net_split_into_equal_parts_prunes_each_part_alike(tracer):
    from timm.models.res2net import Bottle2neck

    torch.manual_seed(0)
    block = nn.Sequential(Bottle2neck(16, 4, scale=4, base_width=128, act_layer=nn.ReLU,
                                      norm_layer=nn.BatchNorm2d))  # conv1: 4 parts of 8
    result = check_pruned(block, torch.randn(2, 16, 6, 6), residual="coupled", tracer=tracer)
    kept = result.plan.kept["0.convs.0"]
    assert len(kept) == 5  # floor(8 * 0.7), in each of the 4 parts
    assert result.plan.kept["0.conv1"] == [p * 8 + i for p in range(4) for i in kept]
    assert result.model[0].width == 5 and result.model[0].conv3.in_channels == 20


class SplitBy(nn.Module):
    """A conv whose 8 channels are split into two parts of ``size`` (an attribute, also held
    by ``other``, which the forward reads too, when ``twice``) read by two convs."""

    def __init__(self, twice=False):
        super().__init__()
        self.size, self.other = 4, 4 if twice else 0
        self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(4, 2, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        left, right = torch.split(self.a(x), self.size, 1)
        y = torch.cat([self.b(left), self.c(right)], 1)
        return y * self.other if self.other else y


def test_a_split_size_held_by_no_single_attribute_blocks_with_the_module_named():
    assert check_pruned(SplitBy(), torch.randn(2, 3, 4, 4)).model.size == 2
    reason = trace(SplitBy(twice=True), torch.zeros(1, 3, 4, 4)).not_prunable["a"]
    assert "split at fixed sizes" in reason and "torch.split in the model's forward" in reason


class SplitHalves(nn.Module):
    """CSPNet's cross stage: ``x.split(self.expand_chs // 2, dim=1)``, the attribute holding
    the total of the two parts."""

    def __init__(self):
        super().__init__()
        self.expand_chs = 8
        self.exp, self.block, self.out = nn.Conv2d(3, 8, 1), nn.Conv2d(4, 4, 3, padding=1), \
            nn.Conv2d(8, 2, 1)

    def forward(self, x):
        xs, xb = self.exp(x).split(self.expand_chs // 2, dim=1)
        return self.out(torch.cat([xs, self.block(xb)], dim=1))


@pytest.mark.parametrize("tracer", ["fx", "record"])
def test_a_split_size_from_the_parts_total_is_rewritten_to_the_kept_total(tracer):
    result = check_pruned(SplitHalves(), torch.randn(2, 3, 4, 4), tracer=tracer)
    kept = result.plan.kept["exp"]
    assert len(kept) == 4 and kept[2:] == [i + 4 for i in kept[:2]]  # both halves alike
    assert result.model.expand_chs == 4


def test_cspnet_prunes_exactly_and_much():
    import filterprune

    torch.manual_seed(0)
    model = timm.create_model("cs3darknet_s", num_classes=5)
    x = torch.randn(2, 3, 32, 32)
    result = check_pruned(model, x, residual="coupled")
    assert filterprune.profile(result.model, x[:1]).macs < 0.6 * filterprune.profile(model,
                                                                                      x[:1]).macs


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


class ChannelsLastMLP(nn.Module):
    """A conv, then a Linear -> GELU -> layer scale -> Linear MLP on channels-last maps."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)
        self.gamma = nn.Parameter(torch.rand(16) + 0.5)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.conv(x).permute(0, 2, 3, 1)
        y = self.fc2(self.gamma * torch.nn.functional.gelu(self.fc1(y)))
        return self.head(y.permute(0, 3, 1, 2))


@pytest.mark.parametrize("tracer", ["fx", "record"])
def test_linear_on_channels_last_maps_is_a_pointwise_conv_and_layer_scale_follows(tracer):
    result = check_pruned(ChannelsLastMLP(), torch.randn(2, 3, 6, 6), tracer=tracer)
    assert set(result.plan.kept) == {"conv", "fc1", "fc2"}
    assert [len(result.plan.kept[n]) for n in ("conv", "fc1", "fc2")] == [5, 11, 5]
    assert result.model.gamma.shape == (11,) and result.model.fc2.in_features == 11
    assert result.model.head.in_channels == 5


def test_layernorm_over_channels_blocks_with_its_reason():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.Conv2d(8, 4, 3))
    graph = trace(net, torch.zeros(1, 3, 8, 8))
    assert "normalises over channels" in graph.not_prunable["0"] and "'1' (GroupNorm)" in \
        graph.not_prunable["0"]


def test_convnext_prunes_its_mlps_exactly_timm_and_torchvision():
    from timm.models.convnext import ConvNeXt
    from torchvision.models.convnext import CNBlockConfig
    from torchvision.models.convnext import ConvNeXt as TorchvisionConvNeXt

    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    for conv_mlp in (False, True):
        net = ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 8, 16, 16), num_classes=4,
                       conv_mlp=conv_mlp, ls_init_value=0.5)
        result = check_pruned(net, x, residual="coupled")
        assert set(result.plan.kept) == {f"stages.{i}.blocks.0.mlp.fc1" for i in range(4)}
        assert "normalises over channels" in result.graph.not_prunable["stem.0"]
    settings = [CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 1)]
    net = TorchvisionConvNeXt(settings, layer_scale=0.5, num_classes=4)
    result = check_pruned(net, x, residual="coupled")
    assert set(result.plan.kept) == {"features.1.0.block.3", "features.3.0.block.3"}
    assert result.model.features[1][0].block[5].in_features == 22  # floor(4 * 8 * 0.7)


def prune_and_check_train_mode(model, x):
    """Prunes at 0.3 (coupled); the pruned model equals the masked original in eval mode and,
    auxiliary heads included, in train mode; the original's state is left unchanged."""
    from test_graph_general import masked_reference, randomize_bn

    import filterprune

    model = randomize_bn(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    result = filterprune.prune(model, x[:1], ratio=0.3, residual="coupled")
    assert not model.training
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    reference = masked_reference(model, result.plan, result.graph)
    with torch.no_grad():
        torch.testing.assert_close(result.model.eval()(x), reference(x), rtol=1e-4, atol=1e-5)
        pruned, expected = result.model.train()(x), reference.train()(x)
    assert len(pruned) > 1  # main and auxiliary logits
    for a, b in zip(pruned, expected, strict=True):  # batch statistics of 2 images: rounding
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    return result


def test_googlenet_auxiliary_heads_are_pruned_with_the_channels_they_read():
    torch.manual_seed(0)
    net = torchvision.models.googlenet(aux_logits=True, init_weights=False, num_classes=5,
                                       dropout=0.0, dropout_aux=0.0)
    result = prune_and_check_train_mode(net, torch.randn(2, 3, 64, 64))
    assert {"aux1.conv.conv", "aux2.conv.conv"} <= set(result.plan.kept)


@pytest.mark.slow  # Inception-v3's auxiliary head needs a 299x299 input (about 10 s)
def test_inception_v3_auxiliary_head_is_pruned_with_the_channels_it_reads():
    torch.manual_seed(0)
    net = torchvision.models.inception_v3(aux_logits=True, init_weights=False, num_classes=5,
                                          dropout=0.0)
    net.AuxLogits.fc.stddev = 0.0
    result = prune_and_check_train_mode(net, torch.randn(2, 3, 299, 299))
    assert "AuxLogits.conv0.conv" in result.plan.kept


class GhostLike(nn.Module):
    """GhostNet's pattern: cat([x, depthwise(x)]) added to a conv shortcut of twice the width."""

    def __init__(self):
        super().__init__()
        self.primary, self.cheap = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1,
                                                                          groups=4)
        self.shortcut, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = self.primary(x)
        return self.head(torch.cat([y, self.cheap(y)], dim=1) + self.shortcut(x))


@pytest.mark.parametrize("tracer", ["fx", "record"])
def test_a_conv_added_to_repeated_channels_keeps_the_same_filters_in_each_copy(tracer):
    result = check_pruned(GhostLike(), torch.randn(2, 3, 6, 6), residual="coupled",
                          tracer=tracer)
    primary = result.plan.kept["primary"]
    assert len(primary) == 2  # floor(4 * 0.7)
    assert result.plan.kept["shortcut"] == primary + [i + 4 for i in primary]
    assert result.graph.group_of("shortcut").covers == {"shortcut": ((0, 4), (0, 4))}


def small_res2net():
    from timm.models.res2net import Bottle2neck
    from timm.models.resnet import ResNet

    return ResNet(Bottle2neck, [1, 1, 1, 1], base_width=26, block_args={"scale": 4},
                  num_classes=5)


@pytest.mark.parametrize("build", [lambda: timm.create_model("ghostnet_050", num_classes=5),
                                   small_res2net], ids=["ghostnet", "res2net"])
def test_ghostnet_and_res2net_prune_exactly_and_much(build):
    import filterprune

    torch.manual_seed(0)
    model = build()
    x = torch.randn(2, 3, 32, 32)
    result = check_pruned(model, x, residual="coupled")
    before = filterprune.profile(model, x[:1]).macs
    assert filterprune.profile(result.model, x[:1]).macs < 0.6 * before


@pytest.mark.parametrize("tracer", ["fx", "record"])
def test_unequal_split_parts_are_read_by_their_own_layers_and_sizes_rewritten(tracer):
    from timm.layers import MixedConv2d

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 12, 1), MixedConv2d(12, 12, [3, 5, 7], depthwise=True),
                        nn.ReLU(), MixedConv2d(12, 8, [1, 1]), nn.Conv2d(8, 4, 1))
    assert net[1].splits == [4, 4, 4] and net[3].splits == [6, 6]
    net[1].splits = [2, 3, 7]  # unequal parts: 3 depthwise convs of 2, 3 and 7 channels
    for conv, n in zip(net[1].values(), net[1].splits, strict=True):
        conv.weight.data = conv.weight.data.repeat(3, 1, 1, 1)[:n]
        conv.in_channels = conv.out_channels = conv.groups = n
    result = check_pruned(net, torch.randn(2, 3, 8, 8), tracer=tracer)
    kept = result.plan.kept["0"]
    assert len(kept) == 8  # floor(12 * 0.7)
    parts = [sum(lo <= i < lo + n for i in kept) for lo, n in ((0, 2), (2, 3), (5, 7))]
    assert min(parts) >= 1 and result.model[1].splits == parts
    assert result.model[3].splits == [sum(i < 6 for i in kept), sum(i >= 6 for i in kept)]
    assert {"3.0", "3.1"} <= set(result.plan.kept)  # the parts' convs are pruned too


def test_mixnet_prunes_exactly():
    import filterprune

    torch.manual_seed(0)
    model = timm.create_model("mixnet_s", num_classes=5)
    x = torch.randn(2, 3, 32, 32)
    result = check_pruned(model, x, residual="coupled")
    before = filterprune.profile(model, x[:1]).macs
    assert filterprune.profile(result.model, x[:1]).macs < 0.6 * before  # split parts join


@pytest.mark.parametrize(("name", "attribute"), [("dpn68", "num_1x1_c"),
                                                 ("rexnet_100", "in_channels")])
def test_channels_partly_joined_by_slices_prune_exactly_and_much(name, attribute):
    """DPN's dual path (``x_s[:, :c] + out[:, :c]``) and ReXNet's partial residual
    (``x[:, :in_chs] + shortcut``): the slice bounds are rewritten to the kept counts."""
    import filterprune

    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5)
    x = torch.randn(2, 3, 32, 32)
    result = check_pruned(model, x, residual="coupled")
    before = filterprune.profile(model, x[:1]).macs
    assert filterprune.profile(result.model, x[:1]).macs < 0.6 * before
    sliced = [(m, p) for m, p in zip(model.modules(), result.model.modules(), strict=True)
              if type(m).__name__ in ("DualPathBlock", "LinearBottleneck")
              and getattr(m, "use_shortcut", True)]  # ReXNet slices only with a shortcut
    assert sliced and all(getattr(p, attribute) < getattr(m, attribute) for m, p in sliced)


def prune_approximately(net, x):
    """Prunes with exact=False; the pruned model runs forward and backward in train mode."""
    import filterprune

    result = filterprune.prune(net.eval(), x[:1], ratio=0.3, residual="coupled", exact=False)
    result.model.train()(x).square().mean().backward()
    assert result.plan.approximate and set(result.plan.approximate) <= set(result.plan.kept)
    assert "pruned approximately" in result.coverage.describe()
    assert result.coverage.to_dict()["approximate"] == result.plan.approximate
    from filterprune.engine import PruningPlan

    assert PruningPlan.from_json(result.plan.to_json()).approximate == result.plan.approximate
    assert "approximate" in str(result.plan)
    return result


def test_weight_standardised_convs_prune_only_when_approximation_is_allowed():
    from timm.layers import ScaledStdConv2d

    net = nn.Sequential(ScaledStdConv2d(3, 8, 3), nn.ReLU(), ScaledStdConv2d(8, 4, 3))
    assert "0" not in trace(net, torch.zeros(1, 3, 8, 8)).layers
    result = prune_approximately(net, torch.randn(2, 3, 8, 8))
    assert list(result.plan.approximate) == ["0"]
    assert result.model[0].gain.shape == (5, 1, 1, 1) and result.model[2].in_channels == 5
    assert "weight is computed" in result.plan.approximate["0"]


def test_group_norm_keeps_its_groups_when_approximation_is_allowed():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.Conv2d(8, 4, 3))
    result = prune_approximately(net, torch.randn(2, 3, 8, 8))
    kept = result.plan.kept["0"]
    assert len(kept) == 4 and sum(i < 4 for i in kept) == 2  # floor(8 * 0.7) // 2 per group
    assert result.model[1].num_channels == 4 and result.model[1].weight.shape == (4,)


def test_nfnet_and_convnext_prune_through_norms_when_approximation_is_allowed():
    from timm.models.convnext import ConvNeXt

    import filterprune

    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    net = ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 8, 16, 16), num_classes=4, ls_init_value=0.5)
    result = prune_approximately(net, x)
    assert "stem.0" in result.plan.approximate
    assert result.model.stem[1].normalized_shape == (5,)  # floor(8 * 0.7)
    net = timm.create_model("nfnet_l0", num_classes=4)
    result = prune_approximately(net, x)
    before = filterprune.profile(net, x[:1]).macs
    assert filterprune.profile(result.model, x[:1]).macs < 0.6 * before
