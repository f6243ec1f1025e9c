"""Interrupted runs resume to the same weights; training health; determinism."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from filterprune.cli import main
from filterprune.data import BatchLoader
from filterprune.errors import FilterpruneError
from filterprune.models import create_model
from filterprune.pipeline.config import load_config
from filterprune.pipeline.results import RunResults
from filterprune.pipeline.session import open_run
from filterprune.training import TrainSettings, train


def tensors_equal(a, b) -> bool:
    first, second = load_file(str(a)), load_file(str(b))
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def cli(*argv) -> list[str]:
    return [sys.executable, "-m", "filterprune", *map(str, argv)]


def resume_args(config):
    return ["run", config, "--set", "train.epochs=4", "--set", "sensitivity.enabled=false",
            "--set", "prune.ratios=[0.5]", "--set", "retrain.epochs=2"]


@pytest.mark.slow  # two CLI runs, one killed: ~65 s under load
def test_killed_run_resumes_to_the_same_final_weights(tmp_path, config):
    """A run killed (SIGKILL) after its first checkpoint, then resumed, equals an uninterrupted
    one."""
    args = resume_args(config)
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    subprocess.run(cli(*args, "--out", tmp_path / "whole"), check=True, env=env,
                   capture_output=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen(cli(*args, "--out", killed), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = killed / "stages" / "baseline.state.safetensors"
    deadline = time.monotonic() + 120
    while not state.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "results.json").exists()

    refused = subprocess.run(cli(*args, "--out", killed), env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    resumed = subprocess.run(cli(*args, "--out", killed, "--resume"), env=env,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr

    for name in ["baseline.safetensors", "pruned-50.safetensors"]:
        assert tensors_equal(tmp_path / "whole" / name, killed / name), name
    whole = RunResults.load(tmp_path / "whole" / "results.json")
    again = RunResults.load(killed / "results.json")
    assert again.pruning == whole.pruning
    assert [h["loss"] for h in again.baseline.history] == [
        h["loss"] for h in whole.baseline.history
    ]
    assert "continuing baseline from its last epoch" in " ".join(resumed.stderr.split())
    killed_session, resumed_session = json.loads(
        (killed / "stages" / "sessions.json").read_text())["sessions"]
    assert killed_session["elapsed_s"] > 0.1  # counted up to its last epoch's state file
    assert again.wall_time_s == pytest.approx(
        killed_session["elapsed_s"] + resumed_session["elapsed_s"], abs=0.05)
    assert not list((killed / "stages").glob("*.state.safetensors"))


@pytest.mark.slow  # a run, then its resume: ~13 s
def test_finished_stages_are_not_redone(tmp_path, config, monkeypatch, capsys):
    out = tmp_path / "run"
    assert main([*map(str, resume_args(config)), "--out", str(out)]) == 0
    report = (out / "report.md").read_text()

    def no_training(*args, **kwargs):
        raise AssertionError("a finished stage was trained again")

    first = json.loads((out / "stages" / "sessions.json").read_text())["sessions"]
    capsys.readouterr()
    monkeypatch.setattr("filterprune.pipeline.session.train", no_training)
    assert main([*map(str, resume_args(config)), "--out", str(out), "--resume"]) == 0
    logged = " ".join(capsys.readouterr().err.split())  # the console wraps long lines
    assert "4 stage(s) finished (baseline, baseline-retrained, pruned-50, deploy)" in logged
    assert (out / "report.md").read_text().split("Wall time")[0] == report.split("Wall time")[0]
    sessions = json.loads((out / "stages" / "sessions.json").read_text())["sessions"]
    assert len(first) == 1 and len(sessions) == 2
    assert sessions[0]["elapsed_s"] == pytest.approx(first[0]["elapsed_s"], abs=0.05)
    assert RunResults.load(out / "results.json").wall_time_s == pytest.approx(
        sum(s["elapsed_s"] for s in sessions), abs=0.05)


def test_resume_under_a_different_config_is_refused(tmp_path, config, capsys):
    out = tmp_path / "run"
    args = [*map(str, resume_args(config)), "--out", str(out)]
    earlier = load_config(config, [*resume_args(config)[3::2], "train.epochs=1"])
    open_run(out, earlier, resume=False, log=print)  # what a run under train.epochs=1 leaves
    assert main([*args, "--resume"]) == 2
    assert "config key 'train.epochs' was 1, now 4" in capsys.readouterr().err
    assert main(["run", str(config), "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["run", str(config), "--out", str(tmp_path / "empty"), "--resume"]) == 2
    assert "holds no run (no config.yaml)" in capsys.readouterr().err


def _batches(seed: int) -> BatchLoader:
    """The same 64 images every time; ``seed`` seeds their order and augmentation."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (64,), generator=g)
    return BatchLoader(images, labels, 16, mean=(0.5,), std=(0.5,), shuffle=True, augment=True,
                       generator=torch.Generator().manual_seed(seed))


def test_training_resumed_from_its_state_file_equals_uninterrupted(tmp_path):
    settings = TrainSettings(epochs=3, lr=0.05, schedule="cosine")
    torch.manual_seed(0)
    whole, batches = create_model("scnnb", in_channels=1), _batches(1)
    train(whole, batches, settings, progress=False, rng=batches.generator)

    torch.manual_seed(0)
    part, batches = create_model("scnnb", in_channels=1), _batches(1)
    state = tmp_path / "state.safetensors"
    short = settings.model_copy(update={"epochs": 1})
    train(part, batches, short, progress=False, state_path=state, rng=batches.generator)
    torch.manual_seed(123)  # the state file restores every random number generator
    resumed, batches = create_model("scnnb", in_channels=1), _batches(99)
    history = train(resumed, batches, settings, progress=False, state_path=state,
                    rng=batches.generator)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_last_good_state(tmp_path):
    state = tmp_path / "state.safetensors"
    model, batches = create_model("scnnb", in_channels=1), _batches(0)
    train(model, batches, TrainSettings(epochs=1, lr=0.01), progress=False, state_path=state)
    good = load_file(str(state))
    exploding = TrainSettings(epochs=2, lr=1e30, momentum=0.0, weight_decay=0.0)
    with pytest.raises(FilterpruneError, match="training diverged: loss is (nan|inf) in epoch 2"):
        train(model, batches, exploding, progress=False, state_path=state)
    kept = load_file(str(state))
    assert all(torch.equal(good[k], kept[k]) for k in good)


def test_corrupt_state_file_is_a_clear_error(tmp_path):
    state = tmp_path / "state.safetensors"
    state.write_bytes(b"\x00" * 16)
    with pytest.raises(FilterpruneError, match="cannot read training state"):
        train(create_model("scnnb", in_channels=1), _batches(0), TrainSettings(epochs=1),
              progress=False, state_path=state)


@pytest.mark.parametrize("command", ["train", "prune"])
def test_deterministic_runs_give_the_same_plan_and_weights(tmp_path, config, capsys, command):
    outs = []
    for i in range(2):
        out = tmp_path / f"train{i}"
        argv = ["train", str(config), "--out", str(out), "--deterministic", "--set",
                "train.epochs=1"]
        assert main(argv) == 0
        outs.append(out / "baseline.safetensors")
    if command == "train":
        assert tensors_equal(*outs)
    else:
        plans = []
        for i, checkpoint in enumerate(outs):
            assert main(["prune", "--checkpoint", str(checkpoint), "--ratio", "0.5",
                         "--strategy", "greedy", "--out", str(tmp_path / f"p{i}.safetensors")]) == 0
            plans.append((tmp_path / f"p{i}.plan.json").read_text())
        assert plans[0] == plans[1]
        assert tensors_equal(tmp_path / "p0.safetensors", tmp_path / "p1.safetensors")


@pytest.mark.slow  # a run of two seeds, then its resume: ~9 s
def test_seeds_repeat_the_baseline_and_the_sweep_in_resumable_stages(tmp_path, config,
                                                                    monkeypatch):
    args = [*map(str, resume_args(config)), "--set", "train.epochs=1", "--set",
            "retrain.epochs=1", "--set", "deploy.enabled=false", "--set", "seeds=2",
            "--out", str(tmp_path / "run")]
    assert main(args) == 0
    out = tmp_path / "run"
    results = RunResults.load(out / "results.json")
    (repeat,) = results.repeats
    assert repeat.seed == 1 and [row.stage for row in repeat.pruning] == ["pruned-50-seed1"]
    for name in ["baseline-seed1", "pruned-50-seed1"]:
        assert (out / f"{name}.safetensors").is_file()
        assert (out / "stages" / f"{name}.json").is_file()
    # another seed, other initial weights: the two baselines differ
    assert not tensors_equal(out / "baseline.safetensors", out / "baseline-seed1.safetensors")
    assert "## Repeated over 2 seeds" in (out / "report.md").read_text()

    def no_training(*args, **kwargs):
        raise AssertionError("a finished stage was trained again")

    monkeypatch.setattr("filterprune.pipeline.session.train", no_training)
    assert main([*args, "--resume"]) == 0
    assert RunResults.load(out / "results.json").repeats == results.repeats
