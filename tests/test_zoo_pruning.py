"""Every zoo model, with each residual policy: pruned at 0.3, it runs forward and backward, its
outputs equal the original's with the removed channels zeroed, and it costs fewer MACs."""

import pytest
import torch
from test_graph_general import check_pruned, graph_summary
from torch import nn

import filterprune
from filterprune.engine import trace
from filterprune.models import create_model, list_models, model_arguments

# residual="coupled" is also what a projection-shortcut stage needs; identity-only CIFAR ResNets
# with zero-padding shortcuts (option A) prune the same layers under both policies.
INNER_ONLY_CONVS = {"resnet20": 9, "resnet32": 15, "resnet44": 21, "resnet56": 27, "resnet110": 54}


@pytest.mark.parametrize("residual", ["inner", "coupled"])
@pytest.mark.parametrize("name", list_models())
def test_zoo_model_prunes_correctly(name, residual):
    torch.manual_seed(0)
    sized = {"input_size": 32} if "input_size" in model_arguments(name) else {}
    model = create_model(name, num_classes=5, **sized)
    x = torch.randn(2, 3, 32, 32)
    result = check_pruned(model, x, residual=residual)
    assert result.plan.kept
    before = filterprune.profile(model, x[:1]).macs
    assert filterprune.profile(result.model, x[:1]).macs < before
    widths = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    changed = {n for n, m in result.model.named_modules()
               if isinstance(m, nn.Conv2d) and m.out_channels != widths[n]}
    assert set(result.plan.kept) == changed  # the plan lists every conv whose width changed
    if name in INNER_ONLY_CONVS:
        assert len(result.graph.layers) == INNER_ONLY_CONVS[name]


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenetv2", "resnet20-dwse"])
def test_coupled_prunes_more_than_inner_and_lists_every_member(name):
    x = torch.zeros(1, 3, 32, 32)
    model = create_model(name, num_classes=5)
    inner = filterprune.plan_pruning(model, x, ratio=0.3).plan
    planned = filterprune.plan_pruning(model, x, ratio=0.3, residual="coupled")
    coupled, graph = planned.plan, planned.graph
    assert set(inner.kept) < set(coupled.kept)
    for group in graph.groups:
        kept = [coupled.kept.get(member) for member in group.members]
        assert all(k == kept[0] for k in kept), group.members
    shared = [g for g in graph.groups if len(g.members) > 1 and g.members[0] in coupled.kept]
    assert shared, "some residual stage must be pruned as a whole"


@pytest.mark.parametrize("name", list_models())
def test_recording_a_forward_pass_finds_the_groups_fx_finds(name):
    x = torch.zeros(1, 3, 32, 32)
    sized = {"input_size": 32} if "input_size" in model_arguments(name) else {}
    model = create_model(name, num_classes=5, **sized)
    for residual in ("inner", "coupled"):
        fx_graph, recorded = (trace(model, x, residual=residual, tracer=t)
                              for t in ("fx", "record"))
        assert graph_summary(recorded) == graph_summary(fx_graph)
