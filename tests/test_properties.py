"""Property-based tests: random small ConvNets, ratios and plans never break the engine."""

import warnings

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import filterprune
from filterprune.engine import PruningPlan, apply_plan, trace
from filterprune.errors import FilterpruneWarning

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def convnets(draw):
    """A Sequential of 1-4 conv blocks (random widths, kernels, groups (grouped or depthwise
    convs), optional BN and pooling), then a
    flatten or a global pool, and a Linear; with its input size."""
    channels = draw(st.integers(1, 3))
    size = draw(st.sampled_from([4, 6, 8]))
    layers, c, s = [], channels, size
    for _ in range(draw(st.integers(1, 4))):
        out = draw(st.integers(1, 8))
        k = draw(st.sampled_from([1, 3]))
        groups = draw(st.sampled_from([g for g in range(1, 5) if c % g == 0 and out % g == 0]))
        layers.append(nn.Conv2d(c, out, k, padding=k // 2, groups=groups,
                                bias=draw(st.booleans())))
        if draw(st.booleans()):
            layers.append(nn.BatchNorm2d(out))
        layers.append(draw(st.sampled_from([nn.ReLU, nn.Identity, nn.Dropout, nn.Tanh]))())
        if s >= 2 and draw(st.booleans()):
            layers.append(nn.MaxPool2d(2))
            s //= 2
        c = out
    if draw(st.booleans()):
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 5)]
    else:
        layers += [nn.Flatten(), nn.Linear(c * s * s, 5)]
    return nn.Sequential(*layers).eval(), (channels, size)


@SETTINGS
@given(net=convnets(), data=st.data())
def test_any_valid_ratio_prunes_without_crashing(net, data):
    model, (channels, size) = net
    x = torch.randn(2, channels, size, size)
    graph = trace(model, x[:1])
    ratio_in = st.floats(0, 1, exclude_max=True, allow_nan=False)
    per_layer = st.fixed_dictionaries({n: ratio_in for n in graph.layers})
    ratio = data.draw(st.one_of(ratio_in, per_layer))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FilterpruneWarning)
        result = filterprune.prune(
            model, x[:1], ratio=ratio, criterion=data.draw(st.sampled_from(["l1", "l2"])),
            strategy=data.draw(st.sampled_from(["independent", "greedy"])),
            round_to=data.draw(st.sampled_from([1, 1, 2, 4])))
    assert bool(caught) == result.coverage.short
    modules = dict(result.model.named_modules())
    for name, layer in graph.layers.items():
        kept = result.plan.kept.get(name, range(layer.out_channels))
        assert 1 <= len(kept) == modules[name].out_channels <= layer.out_channels
    with torch.no_grad():
        assert result.model(x).shape == (2, 5)
    assert PruningPlan.from_json(result.plan.to_json()) == result.plan


@SETTINGS
@given(net=convnets(), data=st.data())
def test_any_valid_plan_applies_and_keeps_output_shapes(net, data):
    """Random kept indices (the same number in each run of a group grouped convs read)."""
    model, (channels, size) = net
    x = torch.randn(3, channels, size, size)
    graph = trace(model, x[:1])
    kept, widths = {}, {}
    for name, layer in graph.layers.items():
        n, run = layer.out_channels, layer.out_channels // layer.chunks  # same count per run
        k = data.draw(st.integers(1, run))
        indices = [start + i for start in range(0, n, run) for i in data.draw(
            st.lists(st.integers(0, run - 1), min_size=k, max_size=k, unique=True))]
        if len(indices) < n:
            kept[name], widths[name] = sorted(indices), n
    pruned = apply_plan(model, PruningPlan(kept, widths), graph)
    with torch.no_grad():
        out = pruned(x)
    assert out.shape == (3, 5) and torch.isfinite(out).all()
    for name, indices in kept.items():
        assert dict(pruned.named_modules())[name].out_channels == len(indices)
