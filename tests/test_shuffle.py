"""Channel shuffle (ShuffleNet): a view of the channels as (g, C / g), a transpose or permute
and a view back interleave the g parts, so the parts keep the same entries; a shuffled map read
by a conv, cut by ``chunk`` or by a slice, and concatenated with a conv's output before the next
shuffle. Pruned at 0.3, outputs equal the original's with the removed channels zeroed (eval),
and it runs forward and backward in train mode (``check_pruned``)."""

import itertools

import pytest
import torch
import torchvision
from test_graph_general import check_pruned
from torch import nn

import filterprune
from filterprune.engine import trace
from filterprune.engine.nodes import layout_part
from filterprune.engine.spaces import ChannelSpaces


def shuffle(x: torch.Tensor, groups: int, permute: bool) -> torch.Tensor:
    b, c, h, w = x.shape
    x = x.view(b, groups, c // groups, h, w)
    x = x.permute(0, 2, 1, 3, 4) if permute else x.transpose(1, 2)
    return x.reshape(b, c, h, w)


def branch(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, stride, 1, groups=c_out, bias=False), nn.BatchNorm2d(c_out),
        nn.Conv2d(c_out, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
    )


class Unit(nn.Module):
    """A ShuffleNet v2 unit: stride 1 halves its input (``chunk`` or slices at ``self.half``)
    and concatenates the first half with a branch of the second; stride 2 concatenates two
    branches of its input; then the channels are shuffled in ``groups``."""

    def __init__(self, c_in: int, c_out: int, stride: int, groups: int, split: str,
                 permute: bool):
        super().__init__()
        self.stride, self.groups, self.split, self.permute = stride, groups, split, permute
        self.half = c_out // 2
        if stride == 2:
            self.branch1 = nn.Sequential(
                nn.Conv2d(c_in, c_in, 3, 2, 1, groups=c_in, bias=False), nn.BatchNorm2d(c_in),
                nn.Conv2d(c_in, c_out // 2, 1, bias=False), nn.BatchNorm2d(c_out // 2), nn.ReLU(),
            )
        self.branch2 = branch(c_in if stride == 2 else c_out // 2, c_out // 2, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 2:
            out = torch.cat((self.branch1(x), self.branch2(x)), 1)
        else:
            if self.split == "chunk":
                x1, x2 = x.chunk(2, dim=1)
            else:
                x1, x2 = x[:, :self.half], x[:, self.half:]
            out = torch.cat((x1, self.branch2(x2)), 1)
        return shuffle(out, self.groups, self.permute)


class ShuffleNet(nn.Module):
    def __init__(self, widths: tuple[int, int], units: int, groups: int, split: str = "chunk",
                 permute: bool = False):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 12, 3, 2, 1), nn.BatchNorm2d(12), nn.ReLU())
        layers, c_in = [], 12
        for width in widths:
            layers.append(Unit(c_in, width, 2, groups, split, permute))
            layers += [Unit(width, width, 1, groups, split, permute) for _ in range(units)]
            c_in = width
        self.stages = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Conv2d(c_in, 32, 1), nn.BatchNorm2d(32), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


def shuffled_convs(model: nn.Module) -> list[str]:
    """The convs whose outputs are shuffled: the last 1x1 of each branch."""
    return [f"{name}.{i}" for name, m in model.named_modules() if isinstance(m, Unit)
            for i in ("branch1.2", "branch2.5") if i != "branch1.2" or m.stride == 2]


@pytest.mark.parametrize(("net", "coarse"), [
    (ShuffleNet((24, 48), 3, 2), False),  # halves of 12 shuffled channels: 6, 3, then 1.5
    (ShuffleNet((20, 40), 2, 2, permute=True), False),
    (ShuffleNet((24, 48), 2, 2, split="slice"), False),
    # g=3: a third of the concatenation straddles both halves, so the shuffled channels of a
    # stage collapse into few (exact but coarse): pruned or not, they must not be blocked
    (ShuffleNet((36, 72), 2, 3), True),
], ids=["g2-chunk", "g2-permute", "g2-slice", "g3-chunk"])
def test_shufflenet_prunes_exactly_through_the_shuffle(net, coarse):
    x = torch.randn(2, 3, 32, 32)
    result = check_pruned(net, x, residual="coupled")
    convs = shuffled_convs(net)
    assert set(convs) <= set(result.graph.layers)
    before = filterprune.profile(net, x[:1]).macs
    assert filterprune.profile(result.model, x[:1]).macs < 0.7 * before
    if not coarse:
        assert all(len(result.plan.kept[name]) < result.graph.layers[name].filters(name)
                   for name in convs)


def test_shuffled_channels_are_tied_with_the_part_they_are_paired_with():
    """Shuffled channel i of the first stage is entries 2i, 2i+1 (the first half's channel i,
    the branch's filter i): the next unit's branch filters 2i and 2i+1 follow channel i."""
    net = ShuffleNet((24,), 1, 2)
    group = trace(net, torch.zeros(1, 3, 32, 32), residual="coupled").group_of(
        "stages.0.branch2.5")
    first, second = group.channels("stages.0.branch2.5"), group.channels("stages.1.branch2.5")
    assert group.channels("stages.0.branch1.2").tolist() == first.tolist()
    assert second.tolist() == first[:6].repeat_interleave(2).tolist()


def test_slice_inside_a_shuffled_channel_is_blocked_with_its_reason():
    net = ShuffleNet((24,), 3, 2, split="slice")  # the third slice cuts 12 entries of 1.5 channels
    graph = trace(net, torch.zeros(1, 3, 32, 32), residual="coupled")
    assert "stages.0.branch2.5" not in graph.layers
    reason = graph.not_prunable["stages.0.branch2.5"]
    assert "inside the features of one channel" in reason and "stages.3" in reason
    assert "stages.1.branch2.0" in graph.layers  # the branches' inner channels are not affected


def test_torchvision_shufflenet_prunes_exactly_with_its_stages():
    model = torchvision.models.shufflenet_v2_x0_5(num_classes=5)
    x = torch.randn(2, 3, 64, 64)
    result = check_pruned(model, x, residual="coupled")
    assert not result.graph.not_prunable.keys() - {
        name for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1}  # depthwise only
    before = filterprune.profile(model, x[:1]).macs
    assert filterprune.profile(result.model, x[:1]).macs < 0.6 * before


def test_halves_of_an_odd_shuffled_layout_keep_equal_entries_whatever_is_pruned():
    """5 channels of 2 entries halve into a0 a0 a1 a1 a2 | a2 a3 a3 a4 a4: a0 and a3, a1 and
    a4 are tied, a2 (one entry in each half) is free."""
    spaces = ChannelSpaces()
    a = spaces.new_space(5)
    halves = [layout_part(((a, 5, 2, 0),), 0, 5), layout_part(((a, 5, 2, 0),), 5, 10)]
    spaces.balance(halves, "chunk")
    width, _, pieces = spaces.coordinates()
    channel = [first + i for first, count in pieces[a] for i in range(count)]
    assert width[a] == 3 and channel == [0, 1, 2, 0, 1]
    for kept in itertools.product((False, True), repeat=3):  # every choice of kept channels
        counts = [sum(f for space, n, f, start in half for c in range(start, start + n)
                      if kept[channel[c]]) for half in halves]
        assert counts[0] == counts[1]
