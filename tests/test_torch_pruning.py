"""Cross-check with Torch-Pruning (test-only dependency): removing the same channels gives the
same parameter counts and the same outputs on the zoo models."""

import copy

import pytest
import torch
from test_graph_general import randomize_bn

import filterprune
from filterprune.models import create_model, model_arguments

tp = pytest.importorskip("torch_pruning")


def torch_pruning_replay(model, plan, graph, x):
    """Prunes a copy of ``model`` with Torch-Pruning, removing what ``plan`` removes."""
    model = copy.deepcopy(model)
    dependencies = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    modules = dict(model.named_modules())
    for group in graph.groups:
        name = group.members[0]
        if name in plan.kept:
            removed = sorted(set(range(plan.widths[name])) - set(plan.kept[name]))
            tp_group = dependencies.get_pruning_group(
                modules[name], tp.prune_conv_out_channels, idxs=removed
            )
            tp_group.prune()
    return model


@pytest.mark.parametrize("residual", ["inner", "coupled"])
@pytest.mark.parametrize(
    "name", ["scnnb", "vgg16-lite", "resnet20", "resnet18", "resnet50", "mobilenetv2",
             "resnet20-dwse"],
)
def test_same_kept_channels_give_same_model_as_torch_pruning(name, residual):
    torch.manual_seed(0)
    sized = {"input_size": 32} if "input_size" in model_arguments(name) else {}
    model = randomize_bn(create_model(name, num_classes=5, **sized))
    x = torch.randn(2, 3, 32, 32)
    ours = filterprune.prune(model, x[:1], ratio=0.3, residual=residual)
    theirs = torch_pruning_replay(model, ours.plan, ours.graph, x[:1]).eval()
    assert sum(p.numel() for p in ours.model.parameters()) == sum(
        p.numel() for p in theirs.parameters()
    )
    with torch.no_grad():
        torch.testing.assert_close(ours.model.eval()(x), theirs(x), rtol=1e-5, atol=1e-6)
