"""Sensitivity with retraining (Fig. 2c), the iterative schedule (§3.4) and the from-scratch
controls (scratch-E / scratch-B, Liu et al. 2019) of ``filterprune run``."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from filterprune.checkpoint import load_model
from filterprune.pipeline.config import load_config
from filterprune.pipeline.run import run_pipeline
from filterprune.pipeline.schedules import scratch_epochs

OVERRIDES = [
    "train.epochs=2", "retrain.epochs=1", "prune.ratios=[0.5]", "prune.schedule=iterative",
    "prune.iterative_epochs=1", "sensitivity.ratios=[0.5]", "sensitivity.retrain_epochs=1",
    "scratch=[E, B]", "device=cpu", "deploy.enabled=false",
]


def quiet(message: str) -> None:
    """Drops the pipeline's log lines."""


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("schedules")
    data = {
        "model": {"name": "scnnb"},
        "data": {"name": "fashion-mnist", "data_dir": str(data_dir), "eval_batch_size": 50},
        "train": {"batch_size": 32, "lr": 0.05},
        "retrain": {"batch_size": 32, "lr": 0.01, "schedule": "constant"},
    }
    path = root / "config.yaml"
    path.write_text(json.dumps(data))
    config = load_config(path, OVERRIDES)
    out = root / "run"
    return config, out, run_pipeline(config, out, progress=False, log=quiet)


@pytest.mark.slow  # the shared run (iterative, scratch, retrained sensitivity): ~30 s
def test_iterative_prunes_each_layer_as_one_shot_would(run):
    _, out, results = run
    row = results.pruning[0]
    assert row.schedule == "iterative"
    assert row.kept == {"features.0": 16, "features.4": 32}  # floor(n * (1 - 0.5))
    steps = [json.loads((out / "stages" / f"pruned-50-step0{k}.json").read_text())
             for k in (1, 2)]
    assert [s["layers"] for s in steps] == [["features.0"], ["features.4"]]
    assert list(steps[0]["plan"]["layers"]) == ["features.0"]  # one layer at a time
    model, spec = load_model(out / "pruned-50.safetensors")
    assert (model.features[0].out_channels, model.features[4].out_channels) == (16, 32)
    assert spec.plan.kept["features.0"] == steps[1]["plan"]["layers"]["features.0"]["kept"]
    report = (out / "report.md").read_text()
    assert "## Iterative pruning of all layers" in report


@pytest.mark.slow  # the shared run (iterative, scratch, retrained sensitivity): ~30 s
def test_scratch_controls_rebuild_the_pruned_widths_with_fresh_weights(run):
    config, out, results = run
    baseline, row = results.baseline, results.pruning[0]
    by_kind = {r.kind: r for r in results.scratch}
    assert by_kind["E"].epochs == config.train.epochs
    assert by_kind["B"].epochs == round(config.train.epochs * baseline.macs / row.macs)
    assert by_kind["B"].epochs > by_kind["E"].epochs
    pruned = load_file(str(out / "pruned-50.safetensors"))
    for kind in "EB":
        scratch = load_file(str(out / f"scratch-{kind}-50.safetensors"))
        assert {k: v.shape for k, v in scratch.items()} == {k: v.shape for k, v in pruned.items()}
        assert not torch.allclose(scratch["features.0.weight"], pruned["features.0.weight"])
    first = load_file(str(out / "scratch-E-50.safetensors"))["features.0.weight"]
    second = load_file(str(out / "scratch-B-50.safetensors"))["features.0.weight"]
    assert not torch.equal(first, second)
    report = (out / "report.md").read_text()
    assert "## Pruned architectures trained from scratch (controls)" in report
    assert "scratch-B" in report


def test_scratch_epochs():
    assert scratch_epochs("E", 160, 1000, 400) == 160
    assert scratch_epochs("B", 160, 1000, 400) == 400  # 2.5x less compute per epoch
    assert scratch_epochs("B", 10, 3, 2) == 15


@pytest.mark.slow  # the shared run (iterative, scratch, retrained sensitivity): ~30 s
def test_sensitivity_with_retraining_resumes_per_layer_and_ratio(run):
    config, out, results = run
    sensitivity = results.sensitivity
    assert sensitivity.retrain_epochs == 1
    assert list(sensitivity.layers) == ["features.0", "features.4"]
    assert "retrained 1 epochs" in (out / "report.md").read_text()
    # A resumed run reads the finished (layer, ratio) stages back and redoes the rest.
    resumed = out.parent / "resumed"
    shutil.copytree(out, resumed)
    stages = resumed / "stages"
    for name in ["sensitivity.json", "sensitivity-features.4-50.json", "pruned-50.json",
                 "pruned-50-step02.json"]:
        (stages / name).unlink()
    marked = json.loads((stages / "sensitivity-features.0-50.json").read_text())
    marked["top1"] = -1.0
    (stages / "sensitivity-features.0-50.json").write_text(json.dumps(marked))
    again = run_pipeline(config, resumed, resume=True, progress=False, log=quiet)
    assert again.sensitivity.layers["features.0"] == [-1.0]
    assert again.sensitivity.layers["features.4"] == sensitivity.layers["features.4"]
    for name in ["pruned-50.safetensors", "stages/pruned-50-step02.safetensors"]:
        first, second = load_file(str(out / name)), load_file(str(resumed / name))
        assert all(torch.equal(first[k], second[k]) for k in first), name


def test_the_sensitivity_command_refuses_retraining(config, capsys):
    from filterprune.cli import main

    argv = ["sensitivity", str(config), "--checkpoint", "m.safetensors",
            "--set", "sensitivity.retrain_epochs=1"]
    assert main(argv) == 2
    assert "runs in `filterprune run`" in capsys.readouterr().err
