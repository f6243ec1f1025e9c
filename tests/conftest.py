"""Shared fixtures: a small synthetic dataset in the official idx format and a run config."""

import os

import numpy as np
import pytest
import torch
import yaml
from _idx import write_idx

from filterprune.engine.coverage import Coverage
from filterprune.pipeline.results import (
    Baseline,
    DatasetInfo,
    Environment,
    PrunedRow,
    RunResults,
    SensitivityTable,
)


def pytest_configure(config):
    """Under pytest-xdist (``-n 2``: one worker per core), each worker and the command-line
    processes it starts compute on one thread: two threads per worker would oversubscribe the
    cores."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


FILES = {
    "train-images-idx3-ubyte.gz": "train_images", "train-labels-idx1-ubyte.gz": "train_labels",
    "t10k-images-idx3-ubyte.gz": "test_images", "t10k-labels-idx1-ubyte.gz": "test_labels",
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """10 classes of 28x28 images, each class a bright 7x7 square at its own place, plus noise."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 200), ("test", 100)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 60, (n, 28, 28))
        for i, label in enumerate(labels):
            r, c = 7 * (label // 4), 7 * (label % 4)
            images[i, r : r + 7, c : c + 7] += 180
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    root = tmp_path_factory.mktemp("fashion")
    for name, key in FILES.items():
        write_idx(root / name, arrays[key])
    return root


@pytest.fixture
def config(tmp_path, data_dir):
    data = {
        "model": {"name": "scnnb"},
        "data": {"name": "fashion-mnist", "data_dir": str(data_dir), "eval_batch_size": 50},
        "train": {"epochs": 2, "batch_size": 32, "lr": 0.05},
        "retrain": {"epochs": 1, "batch_size": 32, "lr": 0.01, "schedule": "constant"},
        "prune": {"ratios": [0.3, 0.6]},
        "sensitivity": {"ratios": [0.5]},
        "deploy": {"batch_sizes": [1, 4], "min_run_time_s": 0.002, "rounds": 3,
                   "budget_s": 0.2},
        "compute": {},  # float32, explicitly: no calibration (compute: auto is the default)
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path




BASE_TOP1 = 91.23
BASE_MACS = 7_900_000
BASE_PARAMS = 4_100_000


def pruned_row(ratio, macs, params, before, after, top5=None, plan=None):
    """A pruning row at ``ratio`` (or by the named ``plan``)."""
    return PrunedRow(
        stage=plan or f"pruned-{round(ratio * 100):02d}", ratio=None if plan else ratio,
        plan=plan, macs=macs, params=params,
        params_conv_linear=params - 1000,
        macs_reduction=1 - macs / BASE_MACS, params_reduction=1 - params / BASE_PARAMS,
        top1_before=before, top1_after=after,
        top5_before=None if top5 is None else top5[0],
        top5_after=None if top5 is None else top5[1],
        retrain_epochs=2, kept={"features.0": 16, "features.4": 32},
    )


NO_BLOCKED = Coverage(conv_macs=7_000_000, requested_macs=7_000_000, reached_macs=7_000_000,
                      prunable_macs=7_000_000, blocked=())


def make_results() -> RunResults:
    """Hand-written results of a run built from the records: scnnb, 2 layers, 3 ratios (given
    out of order)."""
    return RunResults(
        model="scnnb",
        dataset=DatasetInfo("fashion-mnist", train_size=60000, test_size=10000, num_classes=10),
        criterion="l1",
        strategy="independent",
        residual="inner",
        environment=Environment(filterprune="0.1.0", torch="2.13.0", python="3.12.3",
                                device="cpu", seed=0, processes=1),
        coverage=NO_BLOCKED,
        baseline=Baseline(top1=BASE_TOP1, top5=None, loss=0.3, macs=BASE_MACS,
                          params=BASE_PARAMS, params_conv_linear=BASE_PARAMS - 1000, epochs=10,
                          train_time_s=120.5),
        sensitivity=SensitivityTable(
            ratios=[0.3, 0.6, 0.9],
            # features.0 is worse at 0.6 but features.4 at the highest ratio, 0.9.
            layers={"features.0": [90.5, 80.0, 70.1], "features.4": [91.0, 85.2, 60.3]},
        ),
        filter_norms={
            "features.0": [1.0, 0.9, 0.7, 0.4],
            "features.4": [1.0, 0.95, 0.8, 0.6, 0.5, 0.3, 0.2, 0.1],
        },
        pruning=[
            pruned_row(0.5, 3_002_000, 2_009_000, 70.20, 90.80),
            pruned_row(0.25, 6_320_000, 3_280_000, 85.10, 91.35),
            pruned_row(0.75, 1_186_000, 1_025_000, 31.50, 87.64),
        ],
        wall_time_s=170.2,
    )
