"""The dependency analysis on hand-built nets: concatenation, SE gates, grouped and depthwise
convs, bottlenecks with projections, ignored modules, residual policies and coupled plans."""

import copy
import warnings

import pytest
import torch
from torch import nn

import filterprune
from filterprune.engine import PruningPlan, apply_plan, trace
from filterprune.engine.graph import ChannelGroup, Segment, layout_index
from filterprune.errors import FilterpruneError, FilterpruneWarning
from filterprune.models import Bottleneck


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Gives BatchNorms non-trivial statistics and affine parameters; returns it in eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model.eval()


def masked_reference(model: nn.Module, plan: PruningPlan, graph) -> nn.Module:
    """The unpruned model with the removed channels zeroed at the input of every layer reading
    them: a pruned group's channels reach nothing else (else it would be blocked)."""
    masked = copy.deepcopy(model)
    modules = dict(masked.named_modules())
    for name, layout in graph.inputs.items():
        index = layout_index(layout, plan.kept)
        if index is None:
            continue
        layer = modules[name]
        mask = torch.zeros(sum(s.entries for s in layout))
        mask[index] = 1
        if not isinstance(layer, nn.Linear):
            mask = mask.view(-1, 1, 1)  # a Linear reads the last dim (features or channels)
        modules[name].register_forward_pre_hook(lambda m, args, mask=mask: (args[0] * mask,))
    return masked


def check_pruned(model: nn.Module, x: torch.Tensor, **kwargs) -> filterprune.PruneResult:
    """Prunes at 0.3; asserts outputs equal the masked original, and forward + backward run."""
    model = randomize_bn(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FilterpruneWarning)
        result = filterprune.prune(model, x[:1], ratio=0.3, **kwargs)
    assert bool(caught) == result.coverage.short  # warned exactly when under half was reached
    reference = masked_reference(model, result.plan, result.graph)
    with torch.no_grad():
        torch.testing.assert_close(result.model.eval()(x), reference(x), rtol=1e-4, atol=1e-5)
    pruned = result.model.train()
    pruned(x).square().mean().backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in pruned.parameters())
    return result


class ConcatNet(nn.Module):
    """a (4) and b (6) concatenated into c; c's output flattened into a Linear."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(4)
        self.b = nn.Conv2d(3, 6, 1)
        self.c = nn.Conv2d(10, 5, 3, padding=1)
        self.fc = nn.Linear(5 * 4 * 4, 2)

    def forward(self, x):
        x = torch.cat([torch.relu(self.bn_a(self.a(x))), self.b(x)], dim=1)
        return self.fc(torch.flatten(self.c(x), 1))


class LinearSENet(nn.Module):
    """conv1 gated by a Linear squeeze-and-excitation (fc1 -> fc2 -> sigmoid), then conv2."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.fc1 = nn.Linear(8, 4)
        self.fc2 = nn.Linear(4, 8)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3))))))
        x = self.conv2(x * gate.view(x.size(0), -1, 1, 1))
        return self.head(x.mean((2, 3)))


def grouped_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=2),
        nn.ReLU(), nn.Conv2d(8, 6, 1), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(),
        nn.Linear(6 * 4 * 4, 3),
    )


def depthwise_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.PReLU(8),
        nn.Conv2d(8, 6, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3),
    )


class BottleneckNet(nn.Module):
    """Stem, one bottleneck with a 1x1 projection shortcut (16 -> 4 x 4 channels), pool, fc."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.block = Bottleneck(16, 4, stride=2)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(self.block(torch.relu(self.stem(x))).mean((2, 3)))


class ResNeXtBlockNet(nn.Module):
    """Stem and one ResNeXt block: 1x1 reduce, 3x3 grouped conv (4 groups), 1x1 expand, added
    to the identity shortcut."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.reduce = nn.Sequential(nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.grouped = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=4, bias=False),
                                     nn.BatchNorm2d(8), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.expand(self.grouped(self.reduce(x))))
        return self.fc(x.mean((2, 3)))


class AddNet(nn.Module):
    """Two 1x1 convs summed (a residual pair), then a consumer."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 1, bias=False)
        self.b = nn.Conv2d(1, 4, 1, bias=False)
        self.c = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.c(self.a(x) + self.b(x)).flatten(1)


NETS = [
    ("concat", ConcatNet, (2, 3, 4, 4)),
    ("linear-se", LinearSENet, (2, 3, 6, 6)),
    ("grouped", grouped_net, (2, 3, 4, 4)),
    ("depthwise", depthwise_net, (2, 3, 5, 5)),
    ("bottleneck", BottleneckNet, (2, 3, 8, 8)),
    ("resnext", ResNeXtBlockNet, (2, 3, 6, 6)),
    ("add", AddNet, (2, 1, 3, 3)),
]


@pytest.mark.parametrize("residual", ["inner", "coupled"])
@pytest.mark.parametrize("net", NETS, ids=[n[0] for n in NETS])
def test_hand_built_nets_prune_correctly(net, residual):
    torch.manual_seed(0)
    _, build, shape = net
    result = check_pruned(build(), torch.randn(shape), residual=residual)
    assert result.plan.residual == residual
    assert result.plan.kept or (build is AddNet and residual == "inner")  # only a and b there


def test_concatenation_offsets_into_the_consumer():
    graph = trace(ConcatNet(), torch.zeros(1, 3, 4, 4))
    assert list(graph.layers) == ["a", "b", "c"]
    assert [(c.name, c.offset) for c in graph.layers["a"].consumers] == [("c", 0)]
    assert [(c.name, c.offset) for c in graph.layers["b"].consumers] == [("c", 4)]
    assert graph.layers["a"].followers == ["bn_a"]
    (fc,) = graph.layers["c"].consumers
    assert (fc.kind, fc.features_per_channel) == ("linear", 16)
    plan = PruningPlan(kept={"a": [1, 3], "b": [0, 5]}, widths={"a": 4, "b": 6})
    assert layout_index(graph.inputs["c"], plan.kept).tolist() == [1, 3, 4, 9]


@pytest.mark.parametrize("seed", range(20))
def test_layout_index_keeps_the_entries_of_the_kept_channels_of_each_segment(seed):
    """Random layouts (parts of groups from a start, features per channel, unpruned runs)
    against a mask built entry by entry."""
    gen = torch.Generator().manual_seed(seed)

    def draw(n):
        return int(torch.randint(1, n + 1, (1,), generator=gen))

    groups = [ChannelGroup([f"g{i}"], draw(6)) for i in range(3)]
    kept = {g.members[0]: sorted(torch.randperm(g.out_channels, generator=gen)[
        :draw(g.out_channels)].tolist()) for g in groups[:2]}  # the third keeps all
    layout, mask = [], []
    for _ in range(draw(4)):
        group, f = groups[draw(3) - 1] if draw(4) > 1 else None, draw(3)
        if group is None:
            layout.append(Segment(None, draw(3), f))
            mask += [True] * layout[-1].channels * f
            continue
        start = draw(group.out_channels) - 1
        channels = draw(group.out_channels - start)
        layout.append(Segment(group, channels, f, start))
        keeps = kept.get(group.members[0], range(group.out_channels))
        mask += [start + c in keeps for c in range(channels) for _ in range(f)]
    index = layout_index(tuple(layout), kept)
    if not any(s.group is not None and s.group.members[0] in kept for s in layout):
        assert index is None
    else:
        assert index.dtype == torch.long
        assert index.tolist() == [i for i, keep in enumerate(mask) if keep]


def test_se_gate_couples_the_gated_conv_with_the_gate_layer():
    graph = trace(LinearSENet(), torch.zeros(1, 3, 6, 6))
    assert "multiplied by a gate" in graph.not_prunable["conv1"]
    coupled = trace(LinearSENet(), torch.zeros(1, 3, 6, 6), residual="coupled")
    assert coupled.layers["conv1"].members == ["conv1", "fc2"]
    assert [c.name for c in coupled.layers["conv1"].consumers] == ["fc1", "conv2"]
    plan = filterprune.plan_pruning(
        LinearSENet(), torch.zeros(1, 3, 6, 6), ratio=0.5, residual="coupled").plan
    assert plan.kept["conv1"] == plan.kept["fc2"] and len(plan.kept["fc2"]) == 4


def test_grouped_conv_keeps_equal_counts_in_each_of_its_groups():
    model = randomize_bn(grouped_net())
    graph = trace(model, torch.zeros(1, 3, 4, 4))
    assert list(graph.layers) == ["0", "2", "4"]
    assert (graph.layers["0"].chunks, graph.layers["2"].chunks) == (2, 2)
    with torch.no_grad():  # conv 0's filters: norms 8, 7, ..., 1 (the largest in run 1)
        model[0].weight.copy_(torch.arange(8, 0, -1.0).view(8, 1, 1, 1).expand(8, 3, 3, 3) / 27)
    result = filterprune.prune(model, torch.zeros(1, 3, 4, 4), ratio={"0": 0.5, "2": 0.3})
    assert result.plan.kept["0"] == [0, 1, 4, 5]  # the best 2 of each run, not the best 4
    assert len(result.plan.kept["2"]) == 4  # floor(8 * 0.7) = 5 -> 5 // 2 = 2 per group
    gconv = result.model[2]
    assert (gconv.in_channels, gconv.out_channels, gconv.groups) == (4, 4, 2)
    torch.testing.assert_close(gconv.weight[:2], model[2].weight[result.plan.kept["2"][:2]][:, :2])
    bad = PruningPlan(kept={"0": [0, 1, 2, 4]}, widths={"0": 8})
    with pytest.raises(FilterpruneError, match="'0' must keep the same number.*2 runs of 4"):
        apply_plan(model, bad, graph)


def test_grouped_conv_across_a_concatenation_boundary_is_blocked():
    class Across(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 5, 1)
            self.g = nn.Conv2d(8, 4, 1, groups=2)

        def forward(self, x):
            return self.g(torch.cat([self.a(x), self.b(x)], 1)).mean((2, 3))

    graph = trace(Across(), torch.zeros(1, 3, 2, 2))
    assert "across its groups' boundaries" in graph.not_prunable["a"]
    assert "across its groups' boundaries" in graph.not_prunable["g"]


def test_depthwise_conv_follows_its_input():
    model = depthwise_net()
    graph = trace(model, torch.zeros(1, 3, 5, 5))
    assert list(graph.layers) == ["0", "6"]
    assert graph.layers["0"].followers == ["1", "3", "4", "5"]
    assert "depthwise" in graph.not_prunable["3"]
    pruned = filterprune.prune(model, torch.zeros(1, 3, 5, 5), ratio={"0": 0.5}).model
    dw = pruned[3]
    assert (dw.in_channels, dw.out_channels, dw.groups, tuple(dw.weight.shape)) == (4, 4, 4,
                                                                                   (4, 1, 3, 3))
    assert pruned[5].num_parameters == 4 and pruned[6].in_channels == 4


class DepthMultiplier(nn.Module):
    """A depthwise conv with 2 filters per input channel (FastViT's patch embedding: groups =
    in channels, out = 2 x in), its output added to a 1x1 conv's and read by a conv."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.expand = nn.Conv2d(8, 16, 3, padding=1, groups=8)
        self.bn2 = nn.BatchNorm2d(16)
        self.proj = nn.Conv2d(16, 16, 1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = self.bn2(self.expand(torch.relu(self.bn(self.stem(x)))))
        return self.head(y + self.proj(y)).mean((2, 3))


def test_depthwise_conv_with_a_channel_multiplier_follows_its_input():
    result = check_pruned(DepthMultiplier(), torch.randn(2, 3, 6, 6), residual="coupled")
    group = result.graph.layers["stem"]
    assert group.members == ["stem", "proj"]  # proj's filters 2c, 2c + 1 follow channel c
    assert "2 filters per input channel" in result.graph.not_prunable["expand"]
    stem = result.plan.kept["stem"]
    assert len(stem) < 8
    pairs = [2 * c + j for c in stem for j in (0, 1)]
    assert result.plan.kept["expand"] == result.plan.kept["proj"] == pairs
    expand = result.model.expand
    assert (expand.in_channels, expand.out_channels, expand.groups) == (len(stem), 2 * len(stem),
                                                                        len(stem))


def test_bottleneck_projection_is_coupled_with_the_last_conv():
    x = torch.zeros(1, 3, 8, 8)
    inner = trace(BottleneckNet(), x)
    assert list(inner.layers) == ["stem", "block.conv1", "block.conv2"]  # stem: 2 consumers
    assert "residual" in inner.not_prunable["block.downsample.0"]
    coupled = trace(BottleneckNet(), x, residual="coupled")
    assert coupled.layers["block.conv3"].members == ["block.conv3", "block.downsample.0"]
    assert coupled.layers["block.conv3"].followers == ["block.bn3", "block.downsample.1"]
    assert "model input" not in str(coupled.not_prunable)
    assert list(coupled.layers) == ["stem", "block.conv1", "block.conv2", "block.conv3",
                                    "block.downsample.0"]


def test_coupled_scores_are_the_sum_of_the_members_scores_or_of_those_named():
    model = AddNet()
    with torch.no_grad():
        model.a.weight.copy_(torch.tensor([4.0, 0.0, 1.0, 0.0]).view(4, 1, 1, 1))
        model.b.weight.copy_(torch.tensor([0.0, 3.0, 1.0, 2.5]).view(4, 1, 1, 1))
    plan = filterprune.plan_pruning(model, torch.zeros(1, 1, 2, 2), ratio=0.5,
                                    residual="coupled").plan
    assert plan.kept == {"a": [0, 1], "b": [0, 1]}  # sums 4, 3, 2, 2.5
    assert "residual" in trace(model, torch.zeros(1, 1, 2, 2)).not_prunable["a"]
    by_b = filterprune.plan_pruning(model, torch.zeros(1, 1, 2, 2), ratio=0.5,
                                    residual="coupled", score_by=["b"]).plan
    assert by_b.kept == {"a": [1, 3], "b": [1, 3]}  # b's scores alone: 0, 3, 1, 2.5
    with pytest.raises(FilterpruneError, match=r"'d\*' in score_by"):
        filterprune.plan_pruning(model, torch.zeros(1, 1, 2, 2), ratio=0.5, score_by=["d*"])


def test_coupled_members_need_one_ratio_and_one_set_of_indices():
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(FilterpruneError, match="need one ratio.*'a' = 0.5, 'b' = 0.25"):
        filterprune.prune(AddNet(), x, ratio={"a": 0.5, "b": 0.25}, residual="coupled")
    plan = filterprune.plan_pruning(AddNet(), x, ratio={"a": 0.5}, residual="coupled").plan
    assert set(plan.kept) == {"a", "b"}  # a ratio for one member prunes the group
    with pytest.warns(FilterpruneWarning, match="reached 0% of the requested conv MACs"):
        skipped = filterprune.plan_pruning(AddNet(), x, ratio=0.5, skip=["b"], residual="coupled")
    assert skipped.plan.kept == {}  # skipping one member leaves the whole group
    bad = PruningPlan(kept={"a": [0, 1], "b": [0, 2]}, widths={"a": 4, "b": 4})
    with pytest.raises(FilterpruneError, match="'a' and 'b' share their output channels"):
        apply_plan(AddNet(), bad, trace(AddNet(), x))


class Gate(nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x  # data-dependent control flow: fx cannot trace it


class GatedNet(nn.Module):
    """conv1 -> untraceable gate -> conv2 -> softmax over channels -> conv3 -> flatten -> fc."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.gate = Gate()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv3 = nn.Conv2d(4, 6, 1)
        self.fc = nn.Linear(6 * 4 * 4, 2)

    def forward(self, x):
        x = torch.softmax(self.conv2(self.gate(self.conv1(x))), dim=1)
        return self.fc(self.conv3(x).flatten(1))


class ShapeBranchNet(nn.Module):
    """Upsamples small inputs first (control flow on the input size, which torch.fx cannot
    trace), then conv1 and conv2 added (a residual pair), conv3 and a pooled head."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        if x.shape[-1] < 8:
            x = nn.functional.interpolate(x, scale_factor=2.0)
        y = torch.relu(self.bn1(self.conv1(x)))
        y = y + self.bn2(self.conv2(y))
        return self.fc(self.conv3(y).mean((2, 3)))


def test_models_fx_cannot_trace_are_recorded_from_one_forward_pass():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(FilterpruneError, match="torch.fx cannot trace ShapeBranchNet"):
        trace(ShapeBranchNet(), x[:1], tracer="fx")
    graph = trace(ShapeBranchNet(), x[:1], residual="coupled")
    assert graph.layers["conv1"].members == ["conv1", "conv2"]
    assert graph.layers["conv1"].followers == ["bn1", "bn2"]
    assert [c.name for c in graph.layers["conv1"].consumers] == ["conv2", "conv3"]
    for residual in ("inner", "coupled"):
        check_pruned(ShapeBranchNet(), x, residual=residual)
    gated = trace(GatedNet(), x[:1])  # the gate's sum and negation read conv1's channels
    assert list(gated.layers) == ["conv3"]
    assert "sum in 'gate'" in gated.not_prunable["conv1"]
    assert "softmax" in gated.not_prunable["conv2"]
    check_pruned(GatedNet(), x)


@pytest.mark.parametrize("net", NETS, ids=[n[0] for n in NETS])
def test_recording_finds_the_groups_fx_finds(net):
    _, build, shape = net
    model = build()
    for residual in ("inner", "coupled"):
        fx_graph, recorded = (trace(model, torch.zeros(shape), residual=residual, tracer=t)
                              for t in ("fx", "record"))
        assert graph_summary(recorded) == graph_summary(fx_graph)


def graph_summary(graph) -> tuple:
    groups = {name: (g.members, g.followers, [(c.name, c.offset, c.features_per_channel)
                                              for c in g.consumers])
              for name, g in graph.layers.items()}
    return groups, graph.not_prunable


def test_ignored_module_is_left_to_itself():
    x = torch.zeros(1, 3, 4, 4)
    graph = trace(GatedNet(), x, ignore=["gate"])
    assert list(graph.layers) == ["conv3"]
    assert graph.not_prunable["conv1"] == "its channels reach ignored module 'gate'"
    with pytest.raises(FilterpruneError, match="'conv2' cannot be pruned: .*torch.softmax"):
        filterprune.prune(GatedNet(), x, ratio={"conv2": 0.5}, ignore=["gate"])
    check_pruned(GatedNet(), torch.randn(2, 3, 4, 4), ignore=["gate"])
    with pytest.raises(FilterpruneError, match="'nothing' in ignore"):
        trace(GatedNet(), x, ignore=["nothing"])


def test_ignored_conv_is_left_untouched():
    result = filterprune.prune(grouped_net(), torch.zeros(1, 3, 4, 4), ratio=0.5, ignore=["4"])
    assert set(result.plan.kept) == {"0"}  # 2's outputs reach the ignored conv
    assert result.graph.not_prunable["4"] == "it is ignored"
    assert result.model[4].in_channels == 8


def test_unknown_residual_policy_is_an_error():
    with pytest.raises(FilterpruneError, match="unknown residual policy 'outer'"):
        trace(AddNet(), torch.zeros(1, 1, 2, 2), residual="outer")


class DualPathNet(nn.Module):
    """DPN's dual path: of each block's output, the first ``num_1x1_c`` channels are added to
    the residual path (``x_s[:, :c] + out[:, :c]``), the others concatenated to the dense path;
    the first block's residual path is a projection conv."""

    def __init__(self):
        super().__init__()
        self.num_1x1_c = 4
        self.proj = nn.Conv2d(3, 8, 1)  # 4 residual + 4 dense channels
        self.conv1 = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                                   nn.Conv2d(6, 6, 1))  # 4 residual + 2 dense
        self.bn = nn.BatchNorm2d(10)
        self.conv2 = nn.Conv2d(10, 6, 3, padding=1)  # 4 residual + 2 dense
        self.head = nn.Conv2d(12, 3, 1)

    def forward(self, x):
        c = self.num_1x1_c
        x_s, out = self.proj(x), self.conv1(x)
        x = torch.cat([x_s[:, :c] + out[:, :c], x_s[:, c:], out[:, c:]], dim=1)
        out = self.conv2(torch.relu(self.bn(x)))
        x = torch.cat([x[:, :c] + out[:, :c], x[:, c:], out[:, c:]], dim=1)
        return self.head(x)


class PartialResidualNet(nn.Module):
    """ReXNet's partial residual: the shortcut is added to the first ``in_channels`` output
    channels of the block's last conv (``x[:, 0:in_channels] + shortcut``)."""

    def __init__(self):
        super().__init__()
        self.in_channels = 4
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4))
        self.conv = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        shortcut = self.stem(x)
        x = self.conv(shortcut)
        x = torch.cat([x[:, 0:self.in_channels] + shortcut, x[:, self.in_channels:]], dim=1)
        return self.head(x)


class MixedResidualNet(nn.Module):
    """MixNet's pattern: a split at the sizes of a list attribute, each part read by its own
    conv, the parts' outputs concatenated, then added to a shortcut conv and gated (SE) by
    channels made whole by one conv."""

    def __init__(self):
        super().__init__()
        self.splits = [2, 4]
        self.expand = nn.Conv2d(3, 6, 1)
        self.mix = nn.ModuleList([nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(4, 5, 3, padding=1)])
        self.shortcut = nn.Conv2d(3, 8, 1)
        self.bn = nn.BatchNorm2d(8)
        self.gate = nn.Conv2d(8, 8, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        parts = torch.split(self.expand(x), self.splits, 1)
        y = torch.cat([self.mix[0](parts[0]), self.mix[1](parts[1])], dim=1)
        y = self.bn(y + self.shortcut(x))
        y = y * torch.sigmoid(self.gate(y.mean((2, 3), keepdim=True)))
        return self.head(y)


def check_partly_joined(net: nn.Module, tracer: str) -> filterprune.PruneResult:
    """Prunes at 0.5 (coupled) and checks the pruned model equals the masked original in eval
    and in train mode (BatchNorm statistics are per channel: a removed channel changes no other)."""
    torch.manual_seed(0)
    net, x = randomize_bn(net), torch.randn(4, 3, 6, 6)
    result = filterprune.prune(net, x[:1], ratio=0.5, residual="coupled", tracer=tracer)
    reference = masked_reference(net, result.plan, result.graph)
    for train in (False, True):
        pruned, masked = copy.deepcopy(result.model).train(train), reference.train(train)
        torch.testing.assert_close(pruned(x), masked(x), rtol=1e-4, atol=1e-5)
    return result


def first(kept: list[int], n: int) -> list[int]:
    return [i for i in kept if i < n]


@pytest.mark.parametrize("tracer", ["fx", "record"])
def test_dual_path_residual_channels_are_pruned_with_both_paths_and_the_slice_rewritten(tracer):
    result = check_partly_joined(DualPathNet(), tracer)
    kept, group = result.plan.kept, result.graph.group_of("proj")
    assert group.members == ["proj", "conv1.3", "conv2"]
    assert group.runs == (4, 4, 2, 2)  # residual, proj's dense, conv1's dense, conv2's dense
    # 12 channels keep 6: 2 of each residual/dense part of 4, 1 of each part of 2.
    assert first(kept["proj"], 4) == first(kept["conv1.3"], 4) == first(kept["conv2"], 4)
    assert len(first(kept["proj"], 4)) == 2 and len(kept["proj"]) == 4
    assert len(kept["conv1.3"]) == len(kept["conv2"]) == 3
    assert result.model.num_1x1_c == 2
    assert result.model.head.in_channels == 2 + 2 + 1 + 1


@pytest.mark.parametrize("tracer", ["fx", "record"])
def test_partial_residual_prunes_the_shortcut_with_the_first_channels_only(tracer):
    result = check_partly_joined(PartialResidualNet(), tracer)
    kept, group = result.plan.kept, result.graph.group_of("conv.0")
    assert group.covers == {"stem.0": ((0, 4),)} and group.runs == (4, 4)
    assert len(kept["stem.0"]) == 2 and first(kept["conv.0"], 4) == kept["stem.0"]
    assert len(kept["conv.0"]) == 4  # 2 of the residual channels, 2 of the others
    assert result.model.in_channels == 2
    net, x = PartialResidualNet(), torch.zeros(1, 3, 6, 6)
    graph = trace(net, x, residual="coupled", tracer=tracer)
    for kept in ({"stem.0": [0, 1], "conv.0": [0, 2, 4, 5]}, {"conv.0": [0, 1, 4, 5]}):
        widths = {"stem.0": 4, "conv.0": 8}
        bad = PruningPlan(kept=kept, widths={name: widths[name] for name in kept})
        with pytest.raises(FilterpruneError, match="0' and '.*0' share their output"):
            apply_plan(net, bad, graph)


@pytest.mark.parametrize("tracer", ["fx", "record"])
def test_concatenated_parts_of_a_split_are_added_to_and_gated_by_whole_channels(tracer):
    result = check_partly_joined(MixedResidualNet(), tracer)
    kept = result.plan.kept
    assert result.graph.group_of("shortcut").members == ["mix.0", "mix.1", "shortcut", "gate"]
    shared = kept["mix.0"] + [3 + i for i in kept["mix.1"]]
    assert kept["shortcut"] == kept["gate"] == shared
    assert (len(kept["mix.0"]), len(kept["mix.1"])) == (1, 2)  # 4 * 3 // 8, 4 * 5 // 8
    assert result.model.splits == [1, 2] == [len(first(kept["expand"], 2)),
                                             len(kept["expand"]) - len(first(kept["expand"], 2))]


def test_slices_at_one_attribute_cutting_different_channels_block_with_the_attribute_named():
    class TwoCuts(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = 2
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 6, 1)
            self.head = nn.Conv2d(5, 2, 1)

        def forward(self, x):
            a, b = self.a(x), self.b(x)
            return self.head(torch.cat([a[:, :self.c], b[:, :self.c], b[:, 5:]], dim=1))

    graph = trace(TwoCuts(), torch.zeros(1, 3, 4, 4), residual="coupled")
    assert not graph.layers
    assert "sliced in the model's forward at 'c' together with other channels" in \
        graph.not_prunable["a"]
    assert "channels 5:None of 6 are taken at fixed positions" in graph.not_prunable["b"]


class InPlaceNet(nn.Module):
    """Channels written in place: ``y[:, :n] += shortcut`` (ReXNet's older form) and
    ``y[:, n:] = other`` (an assignment)."""

    def __init__(self):
        super().__init__()
        self.n = 4
        self.stem, self.conv = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 8, 3, padding=1)
        self.other, self.head = nn.Conv2d(4, 4, 1), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        s = self.stem(x)
        y = self.conv(s)
        y[:, :self.n] += s
        y[:, self.n:] = self.other(s)
        return self.head(y)


def test_channels_written_in_place_are_joined_with_what_is_written():
    result = check_partly_joined(InPlaceNet(), "auto")  # fx cannot trace item assignment
    kept = result.plan.kept
    assert kept["conv"] == kept["stem"] + [4 + i for i in kept["other"]]
    assert len(kept["stem"]) == len(kept["other"]) == 2 and result.model.n == 2


def test_score_by_a_member_covering_part_of_the_channels_leaves_the_others_to_all_members():
    torch.manual_seed(0)
    net = PartialResidualNet()
    x = torch.randn(1, 3, 6, 6)
    result = filterprune.prune(net, x, ratio=0.5, residual="coupled", score_by=["stem.0"])
    stem, conv = (net.get_submodule(n).weight.abs().sum((1, 2, 3)) for n in ("stem.0", "conv.0"))
    residual = sorted(stem.topk(2).indices.tolist())  # scored by the stem conv alone
    others = sorted((conv[4:].topk(2).indices + 4).tolist())  # the stem does not cover them
    assert others != [4, 5]  # not what scores of 0 would keep
    assert result.plan.kept["conv.0"] == residual + others


def test_partly_joined_channels_read_per_group_by_a_grouped_conv_block_with_it_named():
    net = PartialResidualNet()
    net.head = nn.Conv2d(8, 2, 1, groups=2)
    graph = trace(net, torch.zeros(1, 3, 6, 6), residual="coupled")
    assert "conv.0" not in graph.layers
    assert "read or written per group by grouped conv 'head' and are also cut into parts" in \
        graph.not_prunable["conv.0"]
