"""Channels that move between dims in attention blocks: stacks and new dims (Selective Kernel),
views into equal parts and back (ResNeSt's split attention), matmul (global context, non-local
blocks), Conv1d across the channels (ECA), channel counts read from shapes (lambda layers).
Each pattern on a tiny hand-built net and in timm's own module; every pruned model equals the
masked original in eval and in train mode."""

import copy

import pytest
import torch
import torch.nn.functional as F
from test_graph_general import check_pruned, masked_reference
from torch import nn

import filterprune
from filterprune.engine import trace


def check_pruned_in_both_modes(model: nn.Module, x: torch.Tensor) -> filterprune.PruneResult:
    """``check_pruned`` (coupled), then the same comparison in train mode (batch statistics,
    in float64: over a batch of 2 at 1x1 they amplify rounding errors)."""
    result = check_pruned(model, x, residual="coupled")
    pruned = copy.deepcopy(result.model).double().train()
    reference = masked_reference(model, result.plan, result.graph).double().train()
    torch.testing.assert_close(pruned(x.double()), reference(x.double()))
    return result


class SelectiveKernelNet(nn.Module):
    """Selective Kernel attention as timm writes it: the input split into two paths at
    ``self.in_channels // 2`` (``out_channels`` holds the same number, unread), the paths
    stacked on a new dim 1 (B, 2, C, H, W), summed over it for the attention, whose
    (B, 2 * C, 1, 1) output is viewed as (B, 2, C, 1, 1) and softmaxed over the paths; the
    weighted paths are summed."""

    def __init__(self):
        super().__init__()
        self.in_channels = self.out_channels = 8
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.paths = nn.ModuleList(
            nn.Sequential(nn.Conv2d(4, 8, 3, padding=d, dilation=d), nn.BatchNorm2d(8), nn.ReLU())
            for d in (1, 2)
        )
        self.reduce, self.select = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 16, 1)
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        parts = torch.split(torch.relu(self.stem(x)), self.in_channels // 2, 1)
        x = torch.stack([self.paths[0](parts[0]), self.paths[1](parts[1])], dim=1)
        attn = self.select(torch.relu(self.reduce(x.sum(1).mean((2, 3), keepdim=True))))
        B, C2, H, W = attn.shape
        attn = torch.softmax(attn.view(B, 2, C2 // 2, H, W), dim=1)
        return self.head(torch.sum(x * attn, dim=1))


def test_stacked_paths_are_joined_and_the_attention_prunes_each_path_alike():
    result = check_pruned_in_both_modes(SelectiveKernelNet(), torch.randn(2, 3, 6, 6))
    group = result.graph.group_of("paths.0.0")
    assert group.members == ["paths.0.0", "paths.1.0", "select"]
    assert group.covers == {"select": ((0, 8), (0, 8))}  # its 16 filters: two copies of the 8
    kept = result.plan.kept["paths.0.0"]
    assert len(kept) == 5 and result.plan.kept["paths.1.0"] == kept  # floor(8 * 0.7)
    assert result.plan.kept["select"] == kept + [8 + i for i in kept]
    stem = result.plan.kept["stem"]  # its two parts keep the same channels
    assert len(stem) == 4 and stem[2:] == [4 + i for i in stem[:2]]
    assert result.model.in_channels == 4 and result.model.out_channels == 8
    assert "stacked with others by torch.stack" in group.coupling


def test_a_recorded_view_into_parts_blocks_as_its_sizes_are_numbers():
    reason = trace(SelectiveKernelNet(), torch.zeros(1, 3, 6, 6), tracer="record",
                   residual="coupled").not_prunable["paths.0.0"]
    assert "reshaped by Tensor.view" in reason and "tracer='record'" in reason


class SplitAttentionNet(nn.Module):
    """ResNeSt's split attention as timm writes it: a grouped conv makes radix * C channels,
    reshaped to (B, radix, C, H, W) and summed over radix for the attention; the radix
    softmax views the attention as (B, 1, radix, C), transposes it, softmaxes over radix and
    reshapes it back to (B, radix * C), then (B, radix, C, 1, 1) weights the radix parts."""

    def __init__(self):
        super().__init__()
        self.radix = 2
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv, self.bn = nn.Conv2d(8, 16, 3, padding=1, groups=2), nn.BatchNorm2d(16)
        self.fc1, self.fc2 = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 16, 1)
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(torch.relu(self.stem(x)))))
        B, RC, H, W = x.shape
        x = x.reshape((B, self.radix, RC // self.radix, H, W))
        attn = self.fc2(torch.relu(self.fc1(x.sum(dim=1).mean((2, 3), keepdim=True))))
        attn = F.softmax(attn.view(B, 1, self.radix, -1).transpose(1, 2), dim=1).reshape(B, -1)
        return self.head((x * attn.reshape((B, self.radix, RC // self.radix, 1, 1))).sum(dim=1))


def test_a_view_into_equal_parts_and_back_prunes_each_part_alike():
    result = check_pruned_in_both_modes(SplitAttentionNet(), torch.randn(2, 3, 6, 6))
    group = result.graph.group_of("conv")
    assert group.members == ["conv", "fc2"] and group.covers == {
        "conv": ((0, 8), (0, 8)), "fc2": ((0, 8), (0, 8))}  # two copies of the group's 8
    assert group.out_channels == 8 and group.followers == ["bn"]
    kept = result.plan.kept["conv"]
    assert kept[len(kept) // 2:] == [8 + i for i in kept[:len(kept) // 2]]
    assert result.plan.kept["fc2"] == kept
    assert result.model.head.in_channels == len(kept) // 2


class GlobalContextNet(nn.Module):
    """GCNet's global context block as timm writes it: a 1-channel conv gives a spatial
    softmax (B, 1, H * W, 1); ``x.reshape(B, C, H * W).unsqueeze(1) @ attn`` pools the map
    with it (channels at dim 2, a kept dim of the matmul), viewed back to (B, C, 1, 1) for a
    conv MLP whose output is added to the map."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.attn = nn.Conv2d(8, 1, 1)
        self.fc1, self.fc2 = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        B, C, H, W = x.shape
        attn = F.softmax(self.attn(x).reshape(B, 1, H * W), dim=-1).unsqueeze(3)
        context = (x.reshape(B, C, H * W).unsqueeze(1) @ attn).view(B, C, 1, 1)
        return self.head(x + self.fc2(torch.relu(self.fc1(context))))


def test_matmul_keeps_channels_that_are_a_kept_dim():
    result = check_pruned_in_both_modes(GlobalContextNet(), torch.randn(2, 3, 6, 6))
    assert result.graph.group_of("stem").members == ["stem", "fc2"]
    assert set(result.plan.kept) == {"stem", "fc2", "fc1"}
    assert "different dims of the output of operator.matmul" in \
        result.graph.not_prunable["attn"]


class SpatialSimilarity(nn.Module):
    """A non-local style product over the channels: (B, H * W, C) @ (B, C, H * W)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.head = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        y = self.a(x).flatten(2)
        z = self.b(self.a(x))
        return self.head(z * (y.transpose(1, 2) @ y).mean(1).view(z.shape[0], 1, *z.shape[2:]))


def test_channels_contracted_by_a_matmul_are_blocked_with_the_reason():
    graph = trace(SpatialSimilarity(), torch.zeros(1, 3, 4, 4))
    assert "contracted by Tensor.matmul" in graph.not_prunable["a"]
    assert list(graph.layers) == ["b"]


class EcaNet(nn.Module):
    """ECA attention as timm writes it: pooled channels viewed as a length (B, 1, C), a Conv1d
    across them, the gate viewed back to (B, C, 1, 1) and expanded over the map."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.eca = nn.Conv1d(1, 1, 3, padding=1, bias=False)
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        y = self.eca(x.mean((2, 3)).view(x.shape[0], 1, -1))
        return self.head(x * torch.sigmoid(y).view(x.shape[0], -1, 1, 1).expand_as(x))


def test_a_conv1d_across_the_channels_blocks_them_unless_approximation_is_allowed():
    x = torch.randn(2, 3, 6, 6)
    reason = trace(EcaNet(), x[:1]).not_prunable["stem"]
    assert "'eca' (Conv1d) along its length, which mixes neighbouring channels" in reason
    result = filterprune.prune(EcaNet().eval(), x[:1], ratio=0.3, exact=False)
    assert list(result.plan.approximate) == ["stem"] and "'eca' (Conv1d)" in \
        result.plan.approximate["stem"]
    assert result.model.head.in_channels == 5 and result.model(x).shape == (2, 3, 6, 6)


class PartsView(nn.Module):
    """A conv's 8 channels viewed as 2 parts of 4 and summed: the part size given as -1
    (follows the pruning) or as the number 4 (would not)."""

    def __init__(self, size):
        super().__init__()
        self.size = size
        self.conv, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(4, 3, 1)

    def forward(self, x):
        y = self.conv(x)
        return self.head(y.view(y.shape[0], 2, self.size, *y.shape[2:]).sum(1))


def test_a_view_into_parts_of_a_fixed_size_blocks():
    result = check_pruned_in_both_modes(PartsView(-1), torch.randn(2, 3, 6, 6))
    kept = result.plan.kept["conv"]
    assert len(kept) == 4 and kept[2:] == [4 + i for i in kept[:2]]  # floor(4 * 0.7) each
    graph = trace(PartsView(4), torch.zeros(1, 3, 6, 6))
    assert "reshaped by Tensor.view in the model's forward to a size fixed in the forward" in \
        graph.not_prunable["conv"] and not graph.layers


def test_a_conv_reading_channels_at_another_dim_blocks_them_and_keeps_its_own_filters():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(6, 4, 1), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.c(torch.relu(self.b(self.a(x).transpose(1, 2))))

    result = check_pruned_in_both_modes(Net(), torch.randn(2, 3, 6, 6))
    assert list(result.plan.kept) == ["b"]
    assert "reach 'b' (Conv2d) at dim 2 of its input" in result.graph.not_prunable["a"]


class CountFrom(nn.Module):
    """``b``'s output reshaped to ``a``'s channel count, read from ``a``'s shape: as the same
    shape (``b`` then follows ``a``), or from channels-last (timm's lambda layer)."""

    def __init__(self, channels_last):
        super().__init__()
        self.channels_last = channels_last
        self.a, self.b, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1), nn.Conv2d(16, 3, 1)

    def forward(self, x):
        y = self.a(x)
        B, C, H, W = y.shape
        z = self.b(x)
        z = z.flatten(2).transpose(1, 2) if self.channels_last else z
        return self.head(torch.cat([y, z.reshape(B, C, H, W)], 1))


def test_a_channel_count_read_from_a_shape_couples_or_blocks_that_map():
    result = check_pruned_in_both_modes(CountFrom(False), torch.randn(2, 3, 4, 4))
    assert result.graph.group_of("a").members == ["a", "b"]
    assert "its channel count sizes Tensor.reshape" in result.graph.group_of("a").coupling
    graph = trace(CountFrom(True), torch.zeros(1, 3, 4, 4))
    assert "its channel count sizes Tensor.reshape in the model's forward, where pruning " \
        "cannot follow it" in graph.not_prunable["a"]


@pytest.mark.parametrize("op, reason", [
    (lambda y: torch.softmax(y, dim=1), "normalises over channels"),
    (lambda y: y - y.mean(1, keepdim=True), "reduced together by Tensor.mean"),
])
def test_softmax_or_a_reduction_over_the_channels_blocks_them(op, reason):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 3)

        def forward(self, x):
            return self.b(op(self.a(x)))

    assert reason in trace(Net(), torch.zeros(1, 3, 8, 8)).not_prunable["a"]


@pytest.mark.parametrize("block, kwargs, prunable", [
    ("SelectiveKernel", {}, True),
    ("SplitAttn", {"radix": 2}, True),
    ("GlobalContext", {"fuse_add": True, "fuse_scale": True}, True),
    ("EcaModule", {}, False),
])
def test_timm_attention_blocks_prune_exactly(block, kwargs, prunable):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    block = getattr(timm.layers, block)(16, **kwargs)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), block, nn.Conv2d(16, 4, 1))
    result = check_pruned_in_both_modes(net, torch.randn(2, 3, 8, 8))
    assert ("0" in result.plan.kept) == prunable
    if not prunable:
        assert "'1.conv' (Conv1d)" in result.graph.not_prunable["0"]


@pytest.mark.parametrize("name", ["skresnet18", "resnest14d"])
def test_skresnet_and_resnest_prune_exactly_and_much(name):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    model = timm.create_model(name, num_classes=5)
    result = check_pruned_in_both_modes(model, x)
    before = filterprune.profile(model, x[:1]).macs
    assert filterprune.profile(result.model, x[:1]).macs < 0.6 * before
