"""Methods beyond one-shot L1 (clustering, soft pruning, distillation) and deployment metrics."""


import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import make_results
from test_graph_general import PartialResidualNet, randomize_bn
from torch import nn
from torch.nn.utils import prune as torch_prune

from filterprune.checkpoint import load_model
from filterprune.deploy import rebuilt
from filterprune.engine import (
    apply_plan,
    cluster_representatives,
    select_by_clustering,
    select_filters,
    trace,
    zero_pruned,
)
from filterprune.errors import FilterpruneError
from filterprune.models import create_model
from filterprune.pipeline.config import parse_config
from filterprune.pipeline.report import write_report
from filterprune.pipeline.results import MethodRow, RunResults
from filterprune.pipeline.run import run_pipeline
from filterprune.training import TrainSettings, train
from filterprune.training.distill import distillation_loss

X = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def scnnb_with_copies() -> nn.Module:
    """SCNNB whose first conv's filters 16..31 are 0.5 x filters 0..15 (redundant by direction)."""
    torch.manual_seed(0)
    model = create_model("scnnb", in_channels=1)
    conv = model.features[0]
    with torch.no_grad():
        conv.weight[16:] = 0.5 * conv.weight[:16]
    return model


def test_clustering_keeps_one_filter_of_each_redundant_pair():
    model = scnnb_with_copies()
    graph = trace(model, X)
    plan = select_by_clustering(model, graph, {"features.0": 0.5})
    # each pair (i, i + 16) is one cluster; its larger filter (the original, i) is kept
    assert plan.kept["features.0"] == list(range(16))
    assert plan.criterion == "cluster-weights"
    # L1 keeps the larger half too, but clustering differs once the copies are the larger ones
    with torch.no_grad():
        model.features[0].weight[16:] *= 4
    plan = select_by_clustering(model, graph, {"features.0": 0.5})
    assert plan.kept["features.0"] == list(range(16, 32))


def test_clustering_a_group_whose_members_cover_parts_of_it_clusters_each_part():
    torch.manual_seed(0)
    net = PartialResidualNet()  # stem.0 covers channels 0..3, conv.0 channels 0..7
    with torch.no_grad():
        for conv in (net.stem[0], net.conv[0]):
            conv.weight[2:4] = 0.5 * conv.weight[0:2]  # residual channels 2, 3 repeat 0, 1
        net.conv[0].weight[6:8] = 0.5 * net.conv[0].weight[4:6]
    x = torch.randn(1, 3, 6, 6)
    graph = trace(net, x, residual="coupled")
    plan = select_by_clustering(net, graph, {"conv.0": 0.5})
    assert plan.kept["stem.0"] == [0, 1] and plan.kept["conv.0"] == [0, 1, 4, 5]
    assert apply_plan(net, plan, graph)(x).shape == (1, 2, 6, 6)


def test_clustering_by_feature_maps_uses_the_given_descriptors():
    model = create_model("scnnb", in_channels=1)
    graph = trace(model, X)
    rows = torch.randn(4, 10)
    features = {"features.0": torch.cat([rows, 3 * rows, rows.repeat(6, 1)]),
                "features.4": torch.randn(64, 10)}
    plan = select_by_clustering(model, graph, {"features.0": 0.875}, features)  # keeps 4
    # four directions: each cluster keeps its largest member, the 3x copies at 4..7
    assert plan.kept["features.0"] == [4, 5, 6, 7]
    assert plan.criterion == "cluster-features"
    with pytest.raises(FilterpruneError, match="no feature maps given for layer 'features.0'"):
        select_by_clustering(model, graph, {"features.0": 0.5},
                             {"features.4": features["features.4"]})
    with pytest.raises(FilterpruneError, match="have 5 rows, the layer has 32 filters"):
        select_by_clustering(model, graph, {"features.0": 0.5}, {"features.0": torch.ones(5, 3)})


def test_cluster_representatives_returns_exactly_k_and_handles_zero_filters():
    descriptors = torch.zeros(6, 3)
    descriptors[0] = 1
    for keep in range(1, 7):
        kept = cluster_representatives(descriptors, keep)
        assert len(kept) == keep and kept == sorted(set(kept))
    with pytest.raises(FilterpruneError, match="cannot keep 7 of 6"):
        cluster_representatives(descriptors, 7)


@pytest.mark.parametrize("name,shape",
                         [("scnnb", (1, 1, 28, 28)), ("resnet20-dwse", (1, 3, 32, 32))])
def test_soft_pruning_zeroes_the_filters_the_plan_removes_and_keeps_training_them(name, shape):
    torch.manual_seed(0)
    model = randomize_bn(create_model(name, in_channels=shape[1]))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.bias.data.abs_()  # positive shifts: ReLU passes the gradient of zeroed channels
    x = torch.randn(2, *shape[1:])
    graph = trace(model, x, residual="coupled")
    ratios = dict.fromkeys(graph.layers, 0.5)
    plan = select_filters(model, graph, ratios)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert zero_pruned(model, plan, graph) is model
    modules = dict(model.named_modules())
    for layer, kept in plan.kept.items():
        weight = modules[layer].weight
        removed = sorted(set(range(weight.shape[0])) - set(kept))
        if layer in graph.followers:  # depthwise followers are left alone
            assert torch.equal(weight, before[f"{layer}.weight"])
        else:
            assert weight[removed].abs().sum() == 0
            assert torch.equal(weight[kept], before[f"{layer}.weight"][kept])
    # the L1 plan of the soft-pruned model removes exactly the zeroed filters (methods.py relies
    # on it to remove them at the end)
    assert select_filters(model, graph, ratios).kept == plan.kept
    # the zeroed filters keep receiving gradients (Soft Filter Pruning trains them)
    model.train()
    F.cross_entropy(model(x), torch.tensor([0, 1])).backward()
    layer = next(n for n in plan.kept if n not in graph.followers)
    removed = sorted(set(range(modules[layer].out_channels)) - set(plan.kept[layer]))
    assert modules[layer].weight.grad[removed].abs().sum() > 0


def test_distillation_loss_is_cross_entropy_plus_scaled_kl():
    torch.manual_seed(0)
    teacher, x, labels = nn.Linear(5, 3), torch.randn(8, 5), torch.randint(0, 3, (8,))
    logits = torch.randn(8, 3)
    assert torch.allclose(distillation_loss(teacher, 2.0, 0.0)(logits, x, labels),
                          F.cross_entropy(logits, labels))
    # a student equal to its teacher pays nothing for the soft term
    assert distillation_loss(teacher, 3.0, 1.0)(teacher(x), x, labels).abs().item() < 1e-6
    t = 2.0
    p_teacher = F.softmax(teacher(x) / t, 1)
    kl = (p_teacher * (p_teacher.log() - F.log_softmax(logits / t, 1))).sum(1).mean()
    expected = 0.3 * F.cross_entropy(logits, labels) + 0.7 * t * t * kl
    assert torch.allclose(distillation_loss(teacher, t, 0.7)(logits, x, labels), expected)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    with pytest.raises(FilterpruneError, match="temperature"):
        distillation_loss(teacher, 0.0)


def test_train_calls_the_loss_and_epoch_hooks():
    torch.manual_seed(0)
    model, batches = nn.Linear(4, 2), [(torch.randn(6, 4), torch.randint(0, 2, (6,)))] * 2
    calls, epochs = [], []

    def loss_fn(logits, images, labels):
        calls.append(images.shape[0])
        return F.cross_entropy(logits, labels)

    train(model, batches, TrainSettings(epochs=3, lr=0.1), progress=False, loss_fn=loss_fn,
          on_epoch_end=epochs.append)
    assert calls == [6] * 6 and epochs == [1, 2, 3]


def test_rebuilt_drops_masks_and_hooks_and_computes_the_same():
    torch.manual_seed(0)
    model = randomize_bn(create_model("scnnb", in_channels=1))
    torch_prune.l1_unstructured(model.features[0], "weight", amount=0.5)
    fresh = rebuilt(model)
    torch.testing.assert_close(fresh(X), model(X))
    conv = fresh.features[0]
    assert type(conv) is nn.Conv2d and not conv._forward_pre_hooks
    assert "weight" in dict(conv.named_parameters()) and not hasattr(conv, "weight_mask")


def test_duplicate_method_names_are_refused():
    with pytest.raises(FilterpruneError, match="method names must be unique"):
        parse_config({"methods": [{"name": "a", "kind": "sfp"}, {"name": "a", "kind": "l1"}]})
    with pytest.raises(FilterpruneError, match="methods.0.kind"):
        parse_config({"methods": [{"name": "a", "kind": "magic"}]})
    with pytest.raises(FilterpruneError, match="deploy.batch_sizes.1"):
        parse_config({"deploy": {"batch_sizes": [1, 0]}})


@pytest.mark.slow  # every method and deployment in one run: ~16 s
def test_one_run_compares_every_method(tmp_path, config):
    data = yaml.safe_load(config.read_text())
    data["prune"]["ratios"] = [0.5]
    data["sensitivity"] = {"enabled": False}
    data["methods"] = [
        {"name": "l1-kd", "kind": "l1", "distill": True},
        {"name": "sfp", "kind": "sfp"},
        {"name": "unstructured", "kind": "unstructured", "scope": "global"},
        {"name": "cluster", "kind": "cluster", "describe": "features", "online": True},
    ]
    data["deploy"] |= {"max_spread": 1e-9}  # no machine is that steady: every latency unreliable
    out, lines = tmp_path / "run", []
    results = run_pipeline(parse_config(data), out, progress=False, log=lines.append)
    pruned = results.pruning[0]
    assert list(results.methods) == ["l1-kd", "sfp", "unstructured", "cluster"]
    for name, (row,) in results.methods.items():
        assert row.stage == f"{name}-50" and (out / f"{name}-50.safetensors").is_file()
        assert (out / "stages" / f"{name}-50.json").is_file()
    for name in ("l1-kd", "sfp", "cluster"):
        (row,) = results.methods[name]
        assert row.macs == pruned.macs and row.kept["features.0"] == 16
        model, spec = load_model(out / f"{name}-50.safetensors")
        assert model.features[0].out_channels == 16 and spec.plan is not None
    (dense,) = results.methods["unstructured"]
    assert dense.macs == results.baseline.macs and dense.kept == {}
    model, _ = load_model(out / "unstructured-50.safetensors")
    convs = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    zeros = sum((w == 0).sum().item() for w in convs) / sum(w.numel() for w in convs)
    assert zeros == pytest.approx(dense.zeroed_conv_weights, abs=1e-3)
    # filter pruning at 0.5 keeps conv1 16x1x3x3, conv2 32x16x3x3 of 32x1x3x3, 64x32x3x3
    assert dense.zeroed_conv_weights == pytest.approx(1 - 4752 / 18720, abs=1e-3)
    deploy = results.deploy
    stages = ["baseline", "pruned-50", "l1-kd-50", "sfp-50", "unstructured-50", "cluster-50"]
    assert list(deploy["models"]) == stages
    for stage in stages:
        entry = deploy["models"][stage]
        assert set(entry["metrics"]) == {"1", "4"} == set(entry["same_widths"])
        size = (out / f"{stage}.safetensors").stat().st_size
        assert entry["size_mb"] == pytest.approx(size / 1e6)
        for batch in ("1", "4"):  # timed paired with the same widths built directly
            assert isinstance(entry["metrics"][batch]["reliable"], bool)
            assert entry["metrics"][batch]["reason"] and entry["metrics"][batch]["rounds"] >= 3
            interval = entry["same_widths_interval"][batch]
            assert interval["ratio"] == entry["same_widths"][batch]
            assert interval["low"] <= interval["ratio"] <= interval["high"]
    assert deploy["models"]["baseline"]["speedup"]["4"]["ratio"] == 1.0  # paired with itself
    assert not deploy["reliable"] and not deploy["models"]["baseline"]["metrics"]["1"]["reliable"]
    assert "machine busy" in deploy["models"]["baseline"]["metrics"]["1"]["reason"]
    busy = [line for line in lines if "too busy to measure latency reliably" in line]
    assert len(busy) == 1 and "compare the paired ratios" in busy[0]
    assert deploy["models"]["pruned-50"]["size_mb"] < 0.6 * deploy["models"]["baseline"]["size_mb"]
    assert deploy["models"]["unstructured-50"]["size_mb"] == pytest.approx(
        deploy["models"]["baseline"]["size_mb"], rel=0.01)
    report = (out / "report.md").read_text()
    assert "## Methods compared" in report and "| sfp | 0.5 |" in report
    assert (out / "compare_accuracy_vs_latency.png").is_file()
    assert RunResults.load(out / "results.json").methods == results.methods


def test_without_methods_and_deployment_the_report_has_no_comparison(tmp_path):
    results = make_results()  # no methods, no deployment
    assert results.methods == {} and results.deploy is None
    write_report(results, tmp_path)
    assert "Methods compared" not in (tmp_path / "report.md").read_text()
    assert not (tmp_path / "compare_accuracy_vs_macs.png").exists()
    results.methods = {"sfp": [MethodRow(**vars(results.pruning[0]), method="sfp", kind="sfp")]}
    write_report(results, tmp_path)
    assert "| sfp | 0.5 |" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "compare_accuracy_vs_macs.png").is_file()


class Interrupted(Exception):
    pass


@pytest.mark.slow
def test_interrupted_method_stages_resume_to_the_same_models(tmp_path, config, monkeypatch):
    """SFP (its zeroing), unstructured (its masks) and online clustering, each stopped after its
    first retraining epoch and resumed, end with the weights of an uninterrupted run."""
    from safetensors.torch import load_file

    import filterprune.training.loop as loop

    data = yaml.safe_load(config.read_text())
    data["prune"]["ratios"] = [0.5]
    data["retrain"]["epochs"] = 2
    data |= {"sensitivity": {"enabled": False}, "deploy": {"enabled": False}, "methods": [
        {"name": "sfp", "kind": "sfp"},
        {"name": "unstructured", "kind": "unstructured"},
        {"name": "online", "kind": "cluster", "describe": "features", "online": True},
    ]}
    cfg = parse_config(data)
    quiet = {"progress": False, "log": lambda _: None}
    run_pipeline(cfg, tmp_path / "whole", **quiet)

    save = loop.save_training_state
    targets = {"sfp-50", "unstructured-50", "online-50"}

    def save_then_stop(path, *args, **kwargs):
        save(path, *args, **kwargs)
        stage = path.name.removesuffix(".state.safetensors")
        if stage in targets:
            targets.remove(stage)
            raise Interrupted(stage)

    monkeypatch.setattr(loop, "save_training_state", save_then_stop)
    stopped = []
    for _ in range(4):
        try:
            run_pipeline(cfg, tmp_path / "resumed", resume=bool(stopped), **quiet)
            break
        except Interrupted as e:
            stopped.append(str(e))
    assert stopped == ["sfp-50", "unstructured-50", "online-50"]
    for stage in stopped:
        whole = load_file(str(tmp_path / "whole" / f"{stage}.safetensors"))
        resumed = load_file(str(tmp_path / "resumed" / f"{stage}.safetensors"))
        assert whole.keys() == resumed.keys()
        assert all(torch.equal(whole[k], resumed[k]) for k in whole), stage


def test_distill_hooks_follow_the_switch_and_leave_the_baseline_alone():
    from types import SimpleNamespace

    from filterprune.pipeline.pruned import distill_hooks

    session = SimpleNamespace(config=parse_config({"distill": {"temperature": 2.0, "alpha": 1.0}}),
                              device=torch.device("cpu"))
    baseline = nn.Linear(4, 3)
    assert distill_hooks(session, baseline, False) == {}
    loss_fn = distill_hooks(session, baseline, True)["loss_fn"]
    x = torch.randn(5, 4)
    assert loss_fn(baseline(x), x, torch.zeros(5, dtype=torch.long)).abs().item() < 1e-6
    assert baseline.training and all(p.requires_grad for p in baseline.parameters())
