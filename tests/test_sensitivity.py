"""Sensitivity analysis without copies: the same outputs and accuracies as pruned copies."""

import json

import pytest
import torch
from test_graph_general import (
    BottleneckNet,
    ConcatNet,
    LinearSENet,
    ResNeXtBlockNet,
    randomize_bn,
)

import filterprune
from filterprune.analysis import sensitivity_plans, top1_by_copies, top1_shared_prefix
from filterprune.checkpoint import save_model
from filterprune.cli import main
from filterprune.engine import PrunedVariants, apply_plan, trace
from filterprune.errors import FilterpruneError
from filterprune.models import create_model
from filterprune.pipeline.analysis import sensitivity
from filterprune.pipeline.config import load_config
from filterprune.pipeline.run import initial_model
from filterprune.pipeline.session import prepare
from filterprune.training import evaluate

RATIOS = [0.0, 0.5, 0.9]


@pytest.mark.parametrize(
    ("make", "shape", "residual"),
    [
        (ConcatNet, (3, 3, 4, 4), "inner"),  # concatenation, BN follower, Linear after flatten
        (LinearSENet, (3, 3, 8, 8), "coupled"),  # a gate joining a conv and a Linear
        (BottleneckNet, (3, 3, 8, 8), "coupled"),  # residual stages pruned together
        (ResNeXtBlockNet, (3, 3, 6, 6), "coupled"),  # grouped conv read per conv group
        (lambda: create_model("mobilenetv2", num_classes=4, width_multiplier=0.25),
         (2, 3, 16, 16), "inner"),  # depthwise followers
        (lambda: create_model("vgg16-lite", num_classes=4), (2, 3, 16, 16), "inner"),
    ],
)
def test_variant_outputs_equal_pruned_copies(make, shape, residual):
    torch.manual_seed(0)
    model = randomize_bn(make())
    x = torch.randn(shape)
    graph = trace(model, x[:1], residual=residual)
    plans = sensitivity_plans(model, graph, list(graph.layers), RATIOS, "l1")
    outputs = PrunedVariants(model, graph, plans)(x)
    assert sorted((key, n) for key, n, _ in outputs) == sorted(
        (key, n) for key in graph.layers for n in range(len(RATIOS)))
    with torch.no_grad():
        for key, n, y in outputs:
            expected = apply_plan(model, plans[key][n], graph).eval()(x)
            torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
            if n == 0:  # ratio 0 removes nothing
                torch.testing.assert_close(y, model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("name", "shape"), [("scnnb", (1, 28, 28)), ("vgg16-lite", (3, 16, 16))])
def test_shared_prefix_top1_equals_copies(name, shape):
    torch.manual_seed(0)
    model = randomize_bn(create_model(name, num_classes=10, in_channels=shape[0],
                                      **({"input_size": shape[1]} if name == "scnnb" else {})))
    images = torch.randn(40, *shape)
    with torch.no_grad():  # labels the unpruned model gets right: pruning can only lose
        labels = model(images).argmax(1)
    batches = [(images[i : i + 16], labels[i : i + 16]) for i in range(0, 40, 16)]
    graph = trace(model, images[:1])
    plans = sensitivity_plans(model, graph, list(graph.layers), [0.1, 0.5, 0.9], "l2")
    fast = top1_shared_prefix(model, graph, plans, batches)
    reference = top1_by_copies(model, graph, plans, lambda m: evaluate(m, batches)["top1"])
    assert fast == reference
    assert list(fast) == list(graph.layers)
    assert any(a < 100 for accuracies in fast.values() for a in accuracies)


def test_pipeline_methods_agree(config):
    base = load_config(config, ["sensitivity.ratios=[0.5, 0.9]", "data.eval_batch_size=30"])
    results = {}
    for method in ("shared-prefix", "copies"):
        session = prepare(base.model_copy(update={"sensitivity": base.sensitivity.model_copy(
            update={"method": method})}), progress=False)
        model = initial_model(session, print)
        graph = trace(model, session.spec.example_input())
        results[method] = sensitivity(session, model, graph, [0.5, 0.9], lambda line: None)
    assert results["shared-prefix"] == results["copies"]
    assert list(results["copies"]["layers"]) == ["features.0", "features.4"]


def test_the_run_gives_the_numbers_of_the_public_sensitivity(config):
    session = prepare(load_config(config, ["data.eval_batch_size=30"]), progress=False)
    model = initial_model(session, print)
    graph = trace(model, session.spec.example_input())
    run = sensitivity(session, model, graph, [0.5, 0.9], lambda line: None)
    # the run measures on the validation split: 10% of each class of the training set
    assert run["split"] == "validation" and session.validation_batches.num_samples == 20
    public = filterprune.sensitivity(model, session.spec.example_input(),
                                     data=session.validation_batches, ratios=[0.5, 0.9])
    assert run["layers"] == public.layers and run["ratios"] == public.ratios


def test_without_a_validation_split_the_sensitivity_is_on_the_test_split(config):
    session = prepare(load_config(config, ["data.validation=0"]), progress=False)
    model = initial_model(session, print)
    run = sensitivity(session, model, trace(model, session.spec.example_input()), [0.5],
                      lambda line: None)
    public = filterprune.sensitivity(model, session.spec.example_input(),
                                     data=session.test_batches, ratios=[0.5])
    assert run["split"] == "test" and run["layers"] == public.layers
    assert session.train_batches.num_samples == 200  # nothing held out of the training set


def test_the_validation_split_is_held_out_of_training(config):
    session = prepare(load_config(config), progress=False)
    assert session.train_batches.num_samples == 180 and session.test_batches.num_samples == 100
    validation = session.validation_batches
    assert validation.labels.bincount().tolist() == [2] * 10  # 10% of each class
    train = {tuple(image.flatten().tolist()) for image in session.train_batches.images}
    held = {tuple(image.flatten().tolist()) for image in validation.images}
    assert len(train) == 180 and len(held) == 20 and not train & held  # noisy: all distinct


def test_unknown_method_is_rejected(config):
    with pytest.raises(FilterpruneError, match="sensitivity.method"):
        load_config(config, ["sensitivity.method=fast"])


class DataDependent(torch.nn.Module):
    """Wraps a model with control flow on values: torch.fx cannot trace it, the recorder can."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x) if x.abs().sum() >= 0 else -self.net(x)


def test_models_fx_cannot_trace_fall_back_to_copies(config):
    session = prepare(load_config(config, ["data.eval_batch_size=30"]), progress=False)
    plain = initial_model(session, print)
    wrapped = DataDependent(plain)
    assert not PrunedVariants.supports(wrapped) and PrunedVariants.supports(plain)
    lines = []
    graph = trace(wrapped, session.spec.example_input())  # recorded
    result = sensitivity(session, wrapped, graph, [0.5], lines.append)
    assert "evaluating pruned copies" in lines[0]
    reference = sensitivity(session, plain, trace(plain, session.spec.example_input()), [0.5],
                            lambda line: None)
    assert result["layers"] == {f"net.{name}": top1 for name, top1 in reference["layers"].items()}


@pytest.mark.slow  # ~14 s on a loaded 2-core machine: 21 groups, then the command again
def test_coupled_groups_are_analysed_once_by_the_run_and_the_command(config, tmp_path, capsys):
    overrides = ["model.name=resnet20-dwse", "prune.residual=coupled", "sensitivity.ratios=[0.5]",
                 "data.eval_batch_size=50"]
    session = prepare(load_config(config, overrides), progress=False)
    model = initial_model(session, print)
    graph = trace(model, session.spec.example_input(), residual="coupled")
    result = sensitivity(session, model, graph, [0.5], lambda line: None)
    groups = {id(group): group for group in graph.layers.values()}.values()
    assert len(result["layers"]) == len(groups) < len(graph.layers)
    assert sorted(result["members"].values()) == sorted(
        list(g.members) for g in groups if len(g.members) > 1)
    path = save_model(tmp_path / "resnet20-dwse.safetensors", model, session.spec)
    argv = ["sensitivity", str(config), "--checkpoint", str(path), "--json"]
    assert main([*argv, *(a for o in overrides for a in ("--set", o))]) == 0
    assert json.loads(capsys.readouterr().out)["layers"] == result["layers"]


def test_the_random_criterion_follows_the_seed_of_the_run_and_stage(config):
    weight = torch.randn(16, 3, 3, 3)

    def scores(seed, stage):
        session = prepare(load_config(config, ["prune.criterion=random", f"seed={seed}"]),
                          progress=False)
        return session.criterion(stage)(weight)

    assert torch.equal(scores(1, "pruned-50"), scores(1, "pruned-50"))
    assert not torch.equal(scores(1, "pruned-50"), scores(2, "pruned-50"))
    assert not torch.equal(scores(1, "pruned-50"), scores(1, "pruned-30"))
    assert prepare(load_config(config), progress=False).criterion("pruned-50") == "l1"
