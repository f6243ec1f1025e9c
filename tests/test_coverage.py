"""Never silent: the share of the requested conv MACs a plan reached, every blocked conv with
its reason, a warning under half (an error with strict=True), and the MACs of every conv type."""

import warnings

import pytest
import torch
from torch import nn

import filterprune
from filterprune.engine import profile
from filterprune.errors import FilterpruneError, FilterpruneWarning
from filterprune.models import create_model


def softmax_net() -> nn.Module:
    """c0 (3->8) feeds c2 (8->8); a channel softmax blocks c2; c4 (8->4) reaches the output."""
    return nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.Softmax(dim=1),
                         nn.Conv2d(8, 4, 1)).eval()


def test_coverage_counts_members_and_consumers_and_lists_blocked_convs():
    # per image at 2x2: c0 = 8*3*4 = 96, c2 = 8*8*4 = 256, c4 = 4*8*4 = 128 MACs
    result = filterprune.prune(softmax_net(), torch.zeros(1, 3, 2, 2), ratio=0.5)
    reach = result.coverage
    assert (reach.conv_macs, reach.requested_macs) == (480, 480)
    assert reach.reached_macs == reach.prunable_macs == 96 + 256  # c0's filters, c2's inputs
    assert reach.reached_share == pytest.approx(352 / 480)
    assert [(b.name, b.macs) for b in reach.blocked] == [("2", 256), ("4", 128)]
    assert "softmax" in reach.blocked[0].reason.lower() and "output" in reach.blocked[1].reason


def test_a_plan_reaching_under_half_warns_and_strict_raises():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.ConvTranspose2d(8, 8, 2),
                        nn.Conv2d(8, 4, 3)).eval()
    x = torch.zeros(1, 3, 8, 8)
    with pytest.warns(FilterpruneWarning, match=r"reached 0% .*'2' is a ConvTranspose2d"):
        result = filterprune.prune(net, x, ratio=0.5)
    assert result.plan.kept == {} and result.coverage.short
    with pytest.raises(FilterpruneError, match="reached 0% of the requested conv MACs"):
        filterprune.plan_pruning(net, x, ratio=0.5, strict=True)


def test_a_request_for_a_few_layers_is_measured_against_those_layers():
    model, x = create_model("resnet56"), torch.zeros(1, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FilterpruneWarning)
        one = filterprune.plan_pruning(model, x, ratio={"layer1.0.conv1": 0.5}).coverage
        everything = filterprune.plan_pruning(model, x, ratio=0.5, residual="coupled").coverage
    macs = {layer.name: layer.macs for layer in profile(model, x).layers}
    assert one.requested_macs == macs["layer1.0.conv1"] and one.reached_share == 1.0
    # coupled: only the stages whose channels the option-A shortcuts zero-pad stay whole, and
    # their convs are still reached through the inputs of the convs they feed
    assert everything.blocked and all("F.pad" in b.reason for b in everything.blocked)
    assert everything.reached_share > 0.99


def test_a_ratio_of_zero_requests_nothing_and_never_warns():
    with warnings.catch_warnings():
        warnings.simplefilter("error", FilterpruneWarning)
        reach = filterprune.prune(softmax_net(), torch.zeros(1, 3, 2, 2), ratio=0.0).coverage
    assert reach.requested_macs == 0 and reach.reached_share == 1.0


@pytest.mark.parametrize("layer, x, macs", [
    (nn.Conv1d(3, 8, 3), torch.zeros(2, 3, 16), 8 * 3 * 3 * 14),
    (nn.Conv3d(2, 4, 3), torch.zeros(1, 2, 5, 5, 5), 4 * 2 * 27 * 27),
    # transposed: every input position multiplies the whole kernel into each output channel
    (nn.ConvTranspose2d(3, 5, 2, stride=2), torch.zeros(1, 3, 4, 4), 3 * 5 * 4 * 16),
])
def test_every_conv_type_is_counted_and_refused_with_its_type(layer, x, macs):
    assert profile(layer, x).macs == macs
    net = nn.Sequential(layer, nn.ReLU(), type(layer)(layer.out_channels, 2, 1)).eval()
    with pytest.warns(FilterpruneWarning, match=f"is a {type(layer).__name__}"):
        reach = filterprune.prune(net, x, ratio=0.5).coverage
    assert len(reach.blocked) == 2 and reach.conv_macs == profile(net, x).macs


def test_grouped_transposed_convs_and_linears_on_sequences_are_counted_per_image():
    net = nn.Sequential(nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2), nn.Flatten(2),
                        nn.Linear(81, 5))
    # per image: 4 x (6 / 2) x 9 per input position (16), then 81 x 5 per row (6 rows)
    assert profile(net, torch.zeros(3, 4, 4, 4)).macs == 4 * 3 * 9 * 16 + 81 * 5 * 6
