"""The pruning engine: tracing, ratios, criteria, strategies, surgery, plans and profiling."""

import copy

import pytest
import torch
from test_graph_general import randomize_bn
from torch import nn

import filterprune
from filterprune.engine import (
    PruningPlan,
    apply_plan,
    kept_count,
    l1_norm,
    l2_norm,
    profile,
    resolve_ratios,
    select_filters,
    trace,
)
from filterprune.errors import FilterpruneError
from filterprune.models import create_model


def small_net() -> nn.Sequential:
    """conv(3->8) on 8x8, pool, conv(8->16) on 4x4, flatten, linear(256->10)."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 10),
    )


class BranchNet(nn.Module):
    """conv1 feeds two convs whose outputs are added, then a view-flatten into a Linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.a = nn.Conv2d(6, 4, 1)
        self.b = nn.Conv2d(6, 4, 3, padding=1)
        self.conv3 = nn.Conv2d(4, 5, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(5)
        self.fc = nn.Linear(5 * 2 * 2, 3)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = self.a(x) + self.b(x)
        x = nn.functional.max_pool2d(self.bn3(self.conv3(x)), 2)
        return self.fc(x.view(x.size(0), -1))


def masked_reference(model: nn.Module, plan: PruningPlan, graph) -> nn.Module:
    """The unpruned model with removed channels zeroed after their BatchNorm (or conv)."""
    masked = copy.deepcopy(model)
    modules = dict(masked.named_modules())
    for name, kept in plan.kept.items():
        layer = graph.layers[name]
        mask = torch.zeros(layer.out_channels)
        mask[kept] = 1
        last = layer.followers[-1] if layer.followers else name
        modules[last].register_forward_hook(
            lambda m, args, out, mask=mask: out * mask[None, :, None, None]
        )
    return masked


CASES = [
    ("small", small_net, (2, 3, 8, 8)),
    ("branch", BranchNet, (2, 3, 4, 4)),
    ("scnnb", lambda: create_model("scnnb", in_channels=1), (2, 1, 28, 28)),
    ("vgg16-lite", lambda: create_model("vgg16-lite"), (2, 3, 32, 32)),
    ("resnet20", lambda: create_model("resnet20"), (2, 3, 32, 32)),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("strategy", ["independent", "greedy"])
def test_pruned_outputs_equal_original_with_removed_channels_zeroed(case, strategy):
    torch.manual_seed(0)
    _, build, shape = case
    model = randomize_bn(build())
    x = torch.randn(shape)
    result = filterprune.prune(model, x[:1], ratio=0.4, strategy=strategy)
    assert result.plan.kept, "something must be pruned"
    reference = masked_reference(model, result.plan, result.graph)
    with torch.no_grad():
        torch.testing.assert_close(result.model.eval()(x), reference(x), rtol=1e-4, atol=1e-5)
    for name, kept in result.plan.kept.items():
        assert dict(result.model.named_modules())[name].out_channels == len(kept)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_zero_ratio_leaves_outputs_identical(case):
    torch.manual_seed(0)
    _, build, shape = case
    model = randomize_bn(build())
    x = torch.randn(shape)
    result = filterprune.prune(model, x[:1], ratio=0.0)
    assert result.plan.kept == {}
    with torch.no_grad():
        assert torch.equal(result.model.eval()(x), model(x))


def test_input_model_is_left_unchanged():
    model = create_model("resnet20").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = filterprune.prune(model, torch.randn(2, 3, 32, 32), ratio=0.5)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN statistics included
    assert model.training
    assert result.model is not model


def test_pruned_model_trains_forward_and_backward():
    model = create_model("vgg16-lite")
    pruned = filterprune.prune(model, torch.zeros(1, 3, 32, 32), ratio=0.5).model.train()
    loss = pruned(torch.randn(4, 3, 32, 32)).logsumexp(1).mean()
    loss.backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in pruned.parameters())


def test_graph_finds_consumers_norms_and_flatten_sizes():
    graph = trace(small_net(), torch.zeros(1, 3, 8, 8))
    assert list(graph.layers) == ["0", "4"]
    assert graph.layers["0"].followers == ["1"]
    assert [(c.name, c.kind) for c in graph.layers["0"].consumers] == [("4", "conv")]
    (linear,) = graph.layers["4"].consumers
    assert (linear.name, linear.kind, linear.features_per_channel) == ("8", "linear", 16)
    assert graph.inputs["4"][0].group is graph.layers["0"]


def test_graph_reports_residual_and_output_convs_as_not_prunable():
    graph = trace(create_model("resnet20"), torch.zeros(1, 3, 32, 32))
    assert [n for n in graph.layers] == [f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3)]
    assert "residual" in graph.not_prunable["layer1.0.conv2"]
    assert "residual" in graph.not_prunable["conv1"]
    branch = trace(BranchNet(), torch.zeros(1, 3, 4, 4))
    assert sorted(c.name for c in branch.layers["conv1"].consumers) == ["a", "b"]
    assert "residual" in branch.not_prunable["a"]
    assert branch.layers["conv3"].consumers[0].features_per_channel == 4  # view-flatten of 2x2


def test_untraceable_model_is_recorded_or_a_clear_error():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else x

    with pytest.raises(FilterpruneError, match="torch.fx cannot trace DataDependent"):
        trace(DataDependent(), torch.zeros(1, 3, 8, 8), tracer="fx")
    assert "model output" in trace(DataDependent(), torch.ones(1, 3, 8, 8)).not_prunable["conv"]
    with pytest.raises(FilterpruneError, match="running it on the example inputs failed"):
        trace(DataDependent(), torch.ones(1, 2, 8, 8))
    with pytest.raises(FilterpruneError, match="unknown tracer 'jit'"):
        trace(DataDependent(), torch.ones(1, 3, 8, 8), tracer="jit")


@pytest.mark.parametrize(
    ("n", "ratio", "round_to", "expected"),
    [(64, 0.1, 1, 57), (64, 0.5, 1, 32), (10, 0.3, 1, 7), (10, 0.7, 1, 3), (16, 0.99, 1, 1),
     (3, 0.9, 1, 1), (64, 0.1, 8, 56), (64, 0.3, 8, 48), (64, 0.95, 8, 8), (4, 0.5, 8, 4)],
)
def test_kept_count_follows_the_documented_rounding(n, ratio, round_to, expected):
    assert kept_count(n, ratio, round_to) == expected


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, "0.5", True, float("nan")])
def test_invalid_ratio_raises_value_error_naming_it(bad):
    with pytest.raises(ValueError, match=f"ratio {bad!r}"):
        filterprune.prune(small_net(), torch.zeros(1, 3, 8, 8), ratio=bad)
    with pytest.raises(ValueError, match=f"ratio {bad!r}"):
        filterprune.prune(small_net(), torch.zeros(1, 3, 8, 8), ratio={"0": bad})


def test_ratios_by_name_pattern_and_skip():
    graph = trace(create_model("resnet20"), torch.zeros(1, 3, 32, 32))
    ratios = resolve_ratios(
        graph, {"layer1.*.conv1": 0.5, "layer*.0.conv1": 0.2, "layer2.1.conv1": 0.7},
        skip=["layer3.*"],
    )
    assert ratios == {
        "layer1.0.conv1": 0.2, "layer1.1.conv1": 0.5, "layer1.2.conv1": 0.5,
        "layer2.0.conv1": 0.2, "layer2.1.conv1": 0.7,
    }
    assert resolve_ratios(graph, 0.3, skip=["layer1.0.conv1"]) == {
        n: 0.3 for n in graph.layers if n != "layer1.0.conv1"
    }


@pytest.mark.parametrize(
    ("spec", "message"),
    [({"nothing.*": 0.5}, "unknown layer or pattern 'nothing.*'"),
     ({"layer1.0.conv2": 0.5}, "'layer1.0.conv2' cannot be pruned.*residual"),
     ({"layer1.*.conv2": 0.5}, "cannot be pruned.*residual"),
     ({"fc": 0.5}, "unknown layer or pattern 'fc'")],
)
def test_bad_layer_names_are_clear_errors(spec, message):
    graph = trace(create_model("resnet20"), torch.zeros(1, 3, 32, 32))
    with pytest.raises(FilterpruneError, match=message):
        resolve_ratios(graph, spec)


def test_criteria_score_each_filter():
    w = torch.zeros(3, 2, 1, 2)
    w[0] = torch.tensor([[[1.0, -2.0]], [[0.0, 2.0]]])
    w[1] = 3.0
    assert l1_norm(w).tolist() == [5.0, 12.0, 0.0]
    assert l2_norm(w).tolist() == [3.0, 6.0, 0.0]


def test_smallest_l1_filters_are_removed():
    model = small_net()
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(8.0)[:, None, None, None].expand(8, 3, 3, 3) - 4.5)
    # |w| per filter: 4.5 3.5 2.5 1.5 0.5 0.5 1.5 2.5 -> keep the four largest, lower index on ties
    plan = filterprune.plan_pruning(model, torch.zeros(1, 3, 8, 8), ratio={"0": 0.5}).plan
    assert plan.kept == {"0": [0, 1, 2, 7]}


def test_greedy_and_independent_pick_different_filters():
    """Li et al. 2017 §3.3: greedy ignores kernels that read feature maps already removed."""
    model = nn.Sequential(
        nn.Conv2d(1, 2, 1, bias=False), nn.ReLU(), nn.Conv2d(2, 2, 1, bias=False), nn.Flatten(),
        nn.Linear(2 * 4 * 4, 3),
    )
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, 5.0]).view(2, 1, 1, 1))  # filter 0 goes
        # filter 0 of layer 2 is large only on the input channel that layer 1 loses
        model[2].weight.copy_(torch.tensor([[10.0, 1.0], [0.0, 3.0]]).view(2, 2, 1, 1))
    x = torch.zeros(1, 1, 4, 4)
    independent = filterprune.plan_pruning(model, x, ratio=0.5, strategy="independent").plan
    greedy = filterprune.plan_pruning(model, x, ratio=0.5, strategy="greedy").plan
    assert independent.kept == {"0": [1], "2": [0]}
    assert greedy.kept == {"0": [1], "2": [1]}


def test_unknown_criterion_and_strategy_are_errors():
    graph = trace(small_net(), torch.zeros(1, 3, 8, 8))
    with pytest.raises(FilterpruneError, match="unknown criterion 'l3'"):
        select_filters(small_net(), graph, {"0": 0.5}, criterion="l3")
    with pytest.raises(FilterpruneError, match="unknown strategy 'random'"):
        select_filters(small_net(), graph, {"0": 0.5}, strategy="random")


def test_plan_json_round_trip_and_replay():
    model = randomize_bn(create_model("vgg16-lite"))
    x = torch.randn(2, 3, 32, 32)
    result = filterprune.prune(model, x[:1], ratio={"features.1?": 0.3, "features.0": 0.5},
                               strategy="greedy")
    text = result.plan.to_json()
    again = PruningPlan.from_json(text)
    assert again == result.plan
    assert again.to_json() == text
    replayed = apply_plan(model, again, trace(model, x[:1]))
    with torch.no_grad():
        assert torch.equal(replayed.eval()(x), result.model.eval()(x))
    assert "features.0" in str(again) and "0.50" in str(again)


@pytest.mark.parametrize(
    "layers",
    [{"0": {"width": 8, "kept": [3, 1]}}, {"0": {"width": 8, "kept": []}},
     {"0": {"width": 8, "kept": [0, 8]}}, {"0": {"kept": [1]}}],
)
def test_malformed_plans_are_rejected(layers):
    with pytest.raises(FilterpruneError, match="malformed pruning plan"):
        PruningPlan.from_dict({"layers": layers})


def test_plan_that_does_not_fit_the_model_is_rejected():
    plan = PruningPlan(kept={"0": [0, 1]}, widths={"0": 16})
    with pytest.raises(FilterpruneError, match="'0' has 8 filters"):
        apply_plan(small_net(), plan, trace(small_net(), torch.zeros(1, 3, 8, 8)))


def test_plans_compose():
    first = PruningPlan(kept={"a": [1, 3, 5, 7]}, widths={"a": 8})
    second = PruningPlan(kept={"a": [0, 2], "b": [4]}, widths={"a": 4, "b": 6})
    assert first.then(second).kept == {"a": [1, 5], "b": [4]}
    assert first.then(second).widths == {"a": 8, "b": 6}


def test_profile_matches_hand_computed_counts():
    x = torch.zeros(1, 3, 8, 8)
    cost = profile(small_net(), x)
    # conv 8*3*9*8*8, conv 16*8*9*4*4, linear 256*10
    assert [layer.macs for layer in cost.layers] == [13824, 18432, 2560]
    assert cost.macs == 34816 and cost.flops == 2 * 34816
    assert cost.params_conv_linear == (8 * 27 + 8) + (16 * 72 + 16) + (2560 + 10)
    assert cost.params == cost.params_conv_linear + 2 * 8 + 2 * 16  # BatchNorm weight and bias
    assert cost.layers[1].output_shape == (16, 4, 4)
    pruned = filterprune.prune(small_net(), x, ratio=0.5).model
    half = profile(pruned, torch.zeros(4, 3, 8, 8))  # per image, whatever the batch
    assert half.macs == 4 * 3 * 9 * 64 + 8 * 4 * 9 * 16 + 128 * 10
    assert half.params == (4 * 27 + 4) + 8 + (8 * 36 + 8) + 16 + (1280 + 10)


@pytest.mark.parametrize(
    ("name", "paper_macs"), [("vgg16", 3.13e8), ("resnet56", 1.25e8), ("resnet110", 2.53e8)]
)
def test_macs_match_the_paper_table_1(name, paper_macs):
    """Li et al. 2017, Table 1 ("FLOP" = MACs), to the three digits it prints."""
    macs = profile(create_model(name), torch.zeros(1, 3, 32, 32)).macs
    assert float(f"{macs:.2e}") == paper_macs


def test_vgg16_pruned_a_matches_the_paper():
    """Table 1: VGG-16-pruned-A, 50% of conv 1 and convs 8-13 -> 2.06E8 MACs, 5.40E6 params.

    The paper's 5.40E6 is the count of every learnable parameter (BatchNorm included); conv and
    linear weights and biases alone give 5.39E6.
    """
    model = create_model("vgg16")
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    ratio = {name: 0.5 for name in [convs[0], *convs[7:13]]}
    pruned = filterprune.prune(model, torch.zeros(1, 3, 32, 32), ratio=ratio).model
    cost = profile(pruned, torch.zeros(1, 3, 32, 32))
    assert float(f"{cost.macs:.2e}") == 2.06e8
    assert float(f"{cost.params:.2e}") == 5.40e6
    assert float(f"{cost.params_conv_linear:.2e}") == 5.39e6
