"""Shared fixtures: a small synthetic dataset in the official idx format and a run config."""

import numpy as np
import pytest
import yaml
from _idx import write_idx

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
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


