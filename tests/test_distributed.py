"""Multi-process training under torchrun: sharded epochs, one writer, identical weights."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from filterprune.checkpoint import load_model
from filterprune.data import BatchLoader
from filterprune.pipeline.results import RunResults

SRC = Path(__file__).resolve().parents[1] / "src"


def test_ranks_share_each_epoch_disjointly():
    images = torch.arange(11, dtype=torch.uint8).view(11, 1, 1, 1).expand(11, 1, 2, 2).clone()
    labels = torch.arange(11)
    shares = []
    for rank in range(2):
        loader = BatchLoader(images, labels, 2, mean=[0], std=[1], shuffle=True, rank=rank,
                             world_size=2, generator=torch.Generator().manual_seed(3))
        assert len(loader) == 3 and loader.num_samples == 5
        shares.append([torch.cat([y for _, y in loader]).tolist() for _ in range(2)])
    order = [torch.randperm(11, generator=g).tolist()
             for g in [torch.Generator().manual_seed(3)] for _ in range(2)]
    for epoch in range(2):
        assert shares[0][epoch] == order[epoch][0:10:2]
        assert shares[1][epoch] == order[epoch][1:10:2]
    assert shares[0][0] != shares[0][1]  # a fresh permutation every epoch


def torchrun(*argv, cwd):
    path = os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "filterprune", *map(str, argv)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=240,
    )


@pytest.mark.slow
def test_two_process_run_writes_once_and_resumes(tmp_path, config):
    out = tmp_path / "run"
    args = ["run", config, "--out", out, "--json", "--set", "train.epochs=2",
            "--set", "prune.ratios=[0.5]", "--set", "compute=auto",
            "--set", "calibration_budget_s=0.1"]
    done = torchrun(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)  # rank 0 alone printed: one JSON document
    results = RunResults.load(out / "results.json")
    assert printed["baseline"] == results.to_dict()["baseline"]
    assert results.environment.processes == 2
    assert results.baseline.top1 > 50 and results.baseline.epochs == 2
    assert list(results.sensitivity.layers) == ["features.0", "features.4"]  # both ranks'
    assert done.stderr.count("baseline top-1") == 1  # rank 0 alone logged
    assert done.stderr.count("compute: auto picked") == 1  # rank 0 calibrated, both use it
    assert results.environment.compute == results.calibration["picked"]
    assert sorted(p.name for p in (out / "stages").iterdir()) == [
        "baseline-retrained.json", "baseline.json", "compute.json", "deploy.json",
        "pruned-50.json", "sensitivity.json", "sessions.json"]  # no state file
    assert not list(out.rglob("*.tmp"))
    model, _ = load_model(out / "pruned-50.safetensors")
    assert model.features[0].out_channels == 16

    again = torchrun(*args, "--resume", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["pruning"] == results.to_dict()["pruning"]
    assert "training" not in again.stderr  # every stage was read back
