"""The command line, run in-process on a small synthetic dataset in the official idx format."""

import argparse
import json

import pytest
import torch

from filterprune.checkpoint import ModelSpec, load_model, save_model
from filterprune.cli import main
from filterprune.cli._common import output_dir
from filterprune.engine import PruningPlan
from filterprune.errors import FilterpruneError
from filterprune.models import create_model
from filterprune.pipeline.config import load_config, parse_config
from filterprune.pipeline.results import RunResults
from filterprune.pipeline.run import initial_model, retrained_baseline_stage
from filterprune.pipeline.session import open_run, prepare


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_run_writes_the_report_and_every_stage(tmp_path, config, capsys):
    out = tmp_path / "run"
    code, stdout, _ = run_cli(capsys, "run", config, "--out", out, "--json")
    assert code == 0
    for name in ["report.md", "results.json", "config.yaml", "sensitivity.png", "filter_norms.png",
                 "accuracy_vs_macs.png", "accuracy_vs_params.png", "baseline.safetensors",
                 "pruned-30.safetensors", "pruned-60.safetensors"]:
        assert (out / name).is_file(), name
    results = RunResults.load(out / "results.json")
    printed = json.loads(stdout)
    assert printed.pop("out_dir") == str(out) and RunResults.from_dict(printed) == results
    assert results.baseline.top1 > 50  # the synthetic classes are easy
    assert [r.ratio for r in results.pruning] == [0.3, 0.6]
    macs = [results.baseline.macs] + [r.macs for r in results.pruning]
    assert macs == sorted(macs, reverse=True) and len(set(macs)) == 3
    assert results.pruning[1].kept == {"features.0": 12, "features.4": 25}  # floor(n * 0.4)
    assert list(results.sensitivity.layers) == ["features.0", "features.4"]
    assert results.sensitivity.split == "validation" and results.dataset.validation_size == 20
    assert results.dataset.train_size == 180
    control = results.baseline_retrained  # the control for the pruned rows' extra epoch
    assert control.epochs == 1 and 0 <= control.top1 <= 100
    for record in [results.baseline, control, *results.pruning]:
        assert record.intervals.split == "test" and record.intervals.n == 100
        assert record.intervals.top1.contains(record.intervals.top1.estimate)
    for row in results.pruning:
        assert "paired" in row.intervals.drop.method
        assert row.intervals.drop_vs_retrained.estimate == pytest.approx(
            control.top1 - row.top1_after)
    report = (out / "report.md").read_text()
    assert "| baseline retrained (control) |" in report
    assert "drop vs baseline retrained (after)" in report
    assert load_config(out / "config.yaml") == load_config(config)
    model, spec = load_model(out / "pruned-60.safetensors")
    assert model.features[0].out_channels == 12
    assert spec.plan.widths == {"features.0": 32, "features.4": 64}


def test_train_prune_finetune_evaluate_summary(tmp_path, config, capsys):
    out = tmp_path / "steps"
    code, stdout, _ = run_cli(capsys, "train", config, "--out", out, "--json",
                              "--set", "train.epochs=1")
    assert code == 0
    baseline = out / "baseline.safetensors"
    assert json.loads(stdout)["checkpoint"] == str(baseline)

    code, stdout, _ = run_cli(capsys, "prune", "--checkpoint", baseline, "--ratio", "0.5",
                              "--dry-run", "--json")
    assert code == 0 and not (out / "baseline-pruned.safetensors").exists()
    assert json.loads(stdout)["plan"]["layers"]["features.0"]["width"] == 32

    code, stdout, _ = run_cli(capsys, "prune", "--checkpoint", baseline, "--ratio",
                              "features.0=0.5", "--ratio", "features.4=0.25", "--json")
    assert code == 0
    pruned = out / "baseline-pruned.safetensors"
    plan = PruningPlan.load(out / "baseline-pruned.plan.json")
    assert {k: len(v) for k, v in plan.kept.items()} == {"features.0": 16, "features.4": 48}
    assert json.loads(stdout)["macs_after"] < json.loads(stdout)["macs_before"]

    code, stdout, _ = run_cli(capsys, "finetune", config, "--checkpoint", pruned, "--out",
                              out / "ft", "--json")
    assert code == 0
    finetuned = out / "ft" / "finetuned.safetensors"
    code, stdout, _ = run_cli(capsys, "evaluate", config, "--checkpoint", finetuned, "--json")
    assert code == 0
    evaluated = json.loads(stdout)
    assert 0 <= evaluated["top1"] <= 100 and evaluated["top5"] is None

    code, stdout, _ = run_cli(capsys, "summary", "--checkpoint", finetuned, "--json")
    summary = json.loads(stdout)
    assert code == 0 and summary["macs"] == evaluated["macs"]
    assert summary["layers"][0]["weight_shape"] == [16, 1, 3, 3]

    code, stdout, _ = run_cli(capsys, "sensitivity", config, "--checkpoint", baseline)
    assert code == 0 and "features.4" in stdout and "(validation split)" in stdout


def test_summary_of_zoo_model_with_plan(tmp_path, capsys):
    code, stdout, _ = run_cli(capsys, "summary", "--model", "vgg16", "--json")
    full = json.loads(stdout)
    assert code == 0 and isinstance(full["macs"], int) and isinstance(full["params"], int)
    assert float(f"{full['macs']:.2e}") == 3.13e8  # Li et al. 2017, Table 1
    plan = PruningPlan(kept={"features.0": list(range(32))}, widths={"features.0": 64})
    plan.save(tmp_path / "plan.json")
    code, stdout, _ = run_cli(capsys, "summary", "--model", "vgg16", "--plan",
                              tmp_path / "plan.json", "--json")
    pruned = json.loads(stdout)
    # conv 1 loses half its filters (3*9*32*32*32 MACs), conv 2 half its inputs (64*9*32*32*32)
    assert full["macs"] - pruned["macs"] == 3 * 9 * 32 * 32 * 32 + 64 * 9 * 32 * 32 * 32
    code, stdout, _ = run_cli(capsys, "summary", "--model", "resnet20")
    assert code == 0 and "layer3.2.conv2" in stdout and "MACs" in stdout


@pytest.mark.parametrize(
    ("overrides", "message"),
    [(["model.name=nope"], "unknown model 'nope'"),
     (["data.name=imagenet9"], "unknown dataset"),
     (["prune.ratios=[0.5, 1.5]"], "ratio 1.5"),
     (["prune.skip=[no.such.layer]"], "unknown layer or pattern 'no.such.layer'"),
     (["train.epochs=-1"], "train.epochs"),
     (["train.epoch=3"], "train.epoch"),
     (["data.data_dir=/no/such/dir"], "/no/such/dir"),
     (["device=tpu9"], "device")],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, config, capsys, overrides, message):
    argv = ["run", config, "--out", tmp_path / "bad"]
    for assignment in overrides:
        argv += ["--set", assignment]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert message in err
    assert not (tmp_path / "bad").exists()  # a run that failed left --out as it found it


def test_an_output_directory_that_cannot_be_made_is_one_line(tmp_path, config, capsys):
    (tmp_path / "afile").write_text("a file")
    for out, message in [(tmp_path / "afile" / "sub", "is a file"),
                         ("/proc/x", "cannot write the run directory /proc/x")]:
        code, _, err = run_cli(capsys, "run", config, "--out", out)
        assert code == 2 and message in err and err.count("\n") == 1, err


def test_a_run_that_finished_no_stage_can_be_rerun_in_its_directory(tmp_path, config):
    out = tmp_path / "run"
    (out / "stages").mkdir(parents=True)
    (out / "config.yaml").write_text("left by a run that failed before its first stage")
    (out / "stages" / "sessions.json").write_text('{"sessions": []}')
    args = argparse.Namespace(out=str(out), resume=False, overwrite=False)
    assert output_dir(args, str(config)) == out
    (out / "stages" / "baseline.state.safetensors").write_bytes(b"an epoch of work")
    with pytest.raises(FilterpruneError, match="not empty"):
        output_dir(args, str(config))


def test_bad_files_are_one_line_errors(tmp_path, capsys):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("train: [unclosed\n")
    not_a_model = tmp_path / "model.safetensors"
    not_a_model.write_bytes(b"not a safetensors file")
    for argv, message in [
        (["run", tmp_path / "missing.yaml"], "config file not found"),
        (["run", bad_yaml], "malformed YAML"),
        (["summary", "--checkpoint", not_a_model], "cannot read model file"),
        (["summary", "--model", "vgg16", "--plan", tmp_path / "none.json"], "plan not found"),
        (["prune", "--checkpoint", not_a_model, "--ratio", "abc"], "cannot read model file"),
    ]:
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and message in err and err.count("\n") == 1, (argv, err)


def test_existing_results_are_never_overwritten(tmp_path, config, capsys):
    out = tmp_path / "kept"
    out.mkdir()
    (out / "report.md").write_text("earlier results")
    code, _, err = run_cli(capsys, "run", config, "--out", out)
    assert code == 2 and "not empty" in err
    assert (out / "report.md").read_text() == "earlier results"


def test_debug_shows_the_traceback(config, tmp_path):
    with pytest.raises(FilterpruneError, match="unknown model"):
        main(["run", str(config), "--out", str(tmp_path / "x"), "--set", "model.name=nope",
              "--debug"])


def test_config_overrides_and_unknown_keys():
    given = {"train": {"epochs": 3}}
    config = parse_config(given, ["train.lr=0.2", "prune.skip=[a, b.*]"])
    assert (config.train.epochs, config.train.lr, config.prune.skip) == (3, 0.2, ["a", "b.*"])
    assert given == {"train": {"epochs": 3}}  # the caller's dicts are left as they were
    with pytest.raises(FilterpruneError, match="invalid config: prune.criterion"):
        parse_config({"prune": {"criterion": "l7"}})
    with pytest.raises(FilterpruneError, match="not of the form"):
        parse_config({}, ["train.epochs"])


def test_model_file_round_trip_is_bit_identical(tmp_path):
    torch.manual_seed(0)
    spec = ModelSpec("resnet20", {"num_classes": 7}, (1, 3, 32, 32))
    import filterprune

    model = spec.build()
    result = filterprune.prune(model, spec.example_input(), ratio={"layer2.*.conv1": 0.5})
    spec.plan = result.plan
    for m in result.model.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
    save_model(tmp_path / "m.safetensors", result.model, spec)
    loaded, loaded_spec = load_model(tmp_path / "m.safetensors")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), result.model.eval()(x))
    assert loaded_spec.plan == result.plan and loaded_spec.kwargs == {"num_classes": 7}


def test_pt_state_dicts_load_without_running_code(tmp_path, config, capsys):
    """Weights from other tools: torch.load(weights_only=True), never arbitrary unpickling."""
    weights = tmp_path / "other-tool.pt"
    torch.save(create_model("scnnb", in_channels=1).state_dict(), weights)
    code, stdout, _ = run_cli(capsys, "evaluate", config, "--checkpoint", weights, "--json")
    assert code == 0 and json.loads(stdout)["macs"] > 0

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    malicious = tmp_path / "malicious.pt"
    torch.save({"features.0.weight": Exploit()}, malicious)
    code, _, err = run_cli(capsys, "evaluate", config, "--checkpoint", malicious)
    assert code == 2 and "cannot read weights file" in err
    assert not marker.exists()

    wrong = tmp_path / "wrong.pt"
    torch.save(create_model("resnet20").state_dict(), wrong)
    code, _, err = run_cli(capsys, "evaluate", config, "--checkpoint", wrong)
    assert code == 2 and "do not fit the model: 'features.0.weight' is missing" in err


@pytest.mark.parametrize("override", ["baseline_retrained=false", "retrain.epochs=0"])
def test_the_control_for_extra_training_is_off_when_asked_or_without_retraining(
        tmp_path, config, override):
    cfg = load_config(config, [override])
    session = prepare(cfg, progress=False)
    stages = open_run(tmp_path / "run", cfg, False, print)
    assert retrained_baseline_stage(session, initial_model(session, print), stages, print) is None
    assert stages.finished() == []
