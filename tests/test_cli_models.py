"""Models from outside the zoo through the command line: a builder of the user's own (import
path), timm, and a .pt state dict; pruned files that record the spec work with every command."""

import json

import pytest
import torch
from torch import nn

from filterprune.checkpoint import load_model
from filterprune.cli import main

BUILDER = '''
from torch import nn

def tiny(num_classes=10, in_channels=3):
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes),
    )

def upsampling(num_classes=10, in_channels=3):
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.ConvTranspose2d(8, 16, 2, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes),
    )
'''


@pytest.fixture
def builder(tmp_path, monkeypatch):
    (tmp_path / "my_nets.py").write_text(BUILDER)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_nets:tiny"


def test_pruning_that_reaches_little_says_so_in_one_line_and_strict_fails(builder, capsys):
    spec = builder.replace("tiny", "upsampling")
    code, out, err = cli(capsys, "prune", "--model", spec, "--input-shape", "3,8,8",
                         "--ratio", "0.5", "--dry-run")
    assert code == 0 and "reached 0% of the requested conv MACs" in out
    (line,) = err.strip().splitlines()
    assert line.startswith("filterprune prune: warning: pruning reached 0%")
    assert "'2' is a ConvTranspose2d" in line
    code, _, err = cli(capsys, "prune", "--model", spec, "--input-shape", "3,8,8",
                       "--ratio", "0.5", "--dry-run", "--strict")
    assert code == 2 and err.startswith("filterprune prune: error: pruning reached 0%")


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_prune_a_builder_of_ones_own_then_summary_and_prune_the_file(tmp_path, builder, capsys):
    out = tmp_path / "tiny-pruned.safetensors"
    code, _, err = cli(capsys, "prune", "--model", builder, "--input-shape", "1,16,16",
                       "--num-classes", "4", "--ratio", "0.5", "--out", out, "--json")
    assert code == 0, err
    model, spec = load_model(out)  # rebuilt from the recorded spec: builder + plan
    assert spec.name == builder and spec.kwargs == {"num_classes": 4, "in_channels": 1}
    assert [model[0].out_channels, model[3].out_channels, model[8].out_features] == [4, 8, 4]
    code, stdout, err = cli(capsys, "summary", "--checkpoint", out, "--json")
    assert code == 0, err
    assert json.loads(stdout)["input_shape"] == [1, 1, 16, 16]
    code, _, err = cli(capsys, "prune", "--checkpoint", out, "--ratio", "0.5", "--json")
    assert code == 0, err
    assert load_model(tmp_path / "tiny-pruned-pruned.safetensors")[0][0].out_channels == 2


def test_a_pruned_file_of_ones_own_builder_evaluates_finetunes_and_exports(
        tmp_path, config, builder, capsys):
    # four commands, an epoch of training and an ONNX export: ~10 s on the shared 2 cores
    pruned = tmp_path / "p.safetensors"
    code, _, err = cli(capsys, "prune", "--model", builder, "--input-shape", "1,28,28",
                       "--ratio", "0.5", "--out", pruned)
    assert code == 0, err
    code, stdout, err = cli(capsys, "evaluate", config, "--checkpoint", pruned, "--json")
    assert code == 0, err
    # conv 1->4 (40) + BN (8) + conv 4->8 (296) + BN (16) + linear 8->10 (90)
    assert json.loads(stdout)["params"] == 450 and json.loads(stdout)["split"] == "test"
    code, stdout, err = cli(capsys, "finetune", config, "--checkpoint", pruned,
                            "--out", tmp_path / "ft", "--json")
    assert code == 0, err
    finetuned, spec = load_model(json.loads(stdout)["checkpoint"])
    assert spec.name == builder
    assert not torch.equal(finetuned[0].weight, load_model(pruned)[0][0].weight)
    pytest.importorskip("onnxruntime")
    code, _, err = cli(capsys, "export", "--checkpoint", tmp_path / "ft" / "finetuned.safetensors",
                       "--onnx", tmp_path / "m.onnx")
    assert code == 0 and (tmp_path / "m.onnx").is_file(), err


def test_weights_of_another_tool_load_into_the_named_model(tmp_path, builder, capsys):
    from my_nets import tiny

    source = tiny(num_classes=4)
    nn.init.normal_(source[0].weight)
    torch.save({"state_dict": source.state_dict()}, tmp_path / "trained.pt")
    out = tmp_path / "p.safetensors"
    code, _, err = cli(capsys, "prune", "--model", builder, "--weights",
                       tmp_path / "trained.pt", "--num-classes", "4", "--input-shape", "3,8,8",
                       "--ratio", "0.5", "--out", out)
    assert code == 0, err
    scores = source[0].weight.abs().sum(dim=(1, 2, 3))
    kept = scores.topk(4).indices.sort().values
    assert torch.equal(load_model(out)[0][0].weight, source[0].weight[kept])


OUT = ["--out", "x.safetensors"]


@pytest.mark.parametrize("argv, message", [
    (["--model", "no_such_module:net", *OUT], "cannot import 'no_such_module'"),
    (["--model", "my_nets:tiny", "--input-shape", "3x32", *OUT], "--input-shape must be C,H,W"),
    (["--model", "my_nets:tiny", "--model-kwargs", "[1]", *OUT], "must be a JSON object"),
    (["--model", "my_nets:tiny", "--model-kwargs", '{"depth": 3}', *OUT], "building model"),
    (["--model", "my_nets:tiny", "--weights", "missing.pt", *OUT], "missing.pt"),
    (["--model", "my_nets:tiny"], "give --out FILE"),
    (["--checkpoint", "m.safetensors", "--num-classes", "3"], "--num-classes goes with --model"),
    (["--checkpoint", "m.safetensors", "--pretrained"], "--pretrained goes with --model"),
    (["--model", "my_nets:tiny", "--pretrained", *OUT], "'my_nets:tiny' has none"),
])
def test_bad_model_options_are_one_line_and_exit_2(tmp_path, monkeypatch, builder, capsys,
                                                   argv, message):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(capsys, "prune", *argv, "--ratio", "0.5")
    assert code == 2 and not (tmp_path / "x.safetensors").exists()
    assert message in err and len(err.strip().splitlines()) == 1


def test_prune_a_timm_model_from_the_command_line(tmp_path, capsys):
    pytest.importorskip("timm")
    out = tmp_path / "r18.safetensors"
    code, _, err = cli(capsys, "prune", "--model", "timm:resnet18", "--input-shape", "3,32,32",
                       "--num-classes", "10", "--ratio", "0.3", "--residual", "coupled",
                       "--out", out, "--json")
    assert code == 0, err
    model, spec = load_model(out)
    assert spec.kwargs == {"num_classes": 10, "in_chans": 3}
    assert model.conv1.out_channels == 44 and model.fc.out_features == 10
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    code, stdout, err = cli(capsys, "summary", "--model", "timm:resnet18", "--json")
    assert code == 0, err
    assert json.loads(stdout)["input_shape"] == [1, 3, 224, 224]  # timm's pretrained_cfg


def test_the_main_job_trains_a_builder_of_ones_own(tmp_path, config, builder, capsys):
    code, stdout, err = cli(capsys, "train", config, "--set", f"model.name={builder}",
                            "--set", "train.epochs=1", "--out", tmp_path / "run", "--json")
    assert code == 0, err
    model, spec = load_model(json.loads(stdout)["checkpoint"])
    assert spec.name == builder and spec.kwargs["in_channels"] == 1  # filled from the data


def test_the_main_job_stops_before_training_when_strict_and_pruning_reaches_little(
        tmp_path, config, builder, capsys):
    run = tmp_path / "run"
    code, _, err = cli(capsys, "run", config, "--set", "model.name=my_nets:upsampling",
                       "--set", "prune.strict=true", "--out", run)
    assert code == 2 and "reached 0% of the requested conv MACs" in err
    assert "prune.strict" in err and len(err.strip().splitlines()) == 1
    assert not list(run.glob("*.safetensors"))  # failed before training
