"""Bad input found before any work is done: one line on stderr, exit code 2, no traceback."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _idx import write_idx
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from filterprune.checkpoint import ModelSpec, save_model
from filterprune.cli import main
from filterprune.data import load_dataset
from filterprune.errors import FilterpruneError


def one_line_error(capsys, argv) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_malformed_set_value(config, capsys):
    err = one_line_error(capsys, ["train", config, "--set", "prune.skip=[features.0"])
    assert "prune.skip=[features.0" in err and "not valid YAML" in err


def test_a_directory_as_the_config(tmp_path, capsys):
    assert "is a directory" in one_line_error(capsys, ["train", tmp_path])


def test_model_file_metadata_of_the_wrong_type(tmp_path, capsys):
    spec = ModelSpec("scnnb", {"in_channels": 1}, (1, 1, 28, 28))
    path = save_model(tmp_path / "m.safetensors", spec.build(), spec)
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["filterprune"])
    meta["kwargs"]["in_channels"] = "abc"
    save_file(load_file(str(path)), str(path), metadata={"filterprune": json.dumps(meta)})
    err = one_line_error(capsys, ["summary", "--checkpoint", path])
    assert "in_channels" in err and "abc" in err


@pytest.fixture
def mixed_sizes(tmp_path):
    """Training images 28 x 28, test images 32 x 32, in the idx format."""
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (20, 28, 28)))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(20) % 10)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (10, 32, 32)))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(10) % 10)
    return tmp_path


def test_train_and_test_images_of_different_sizes_are_refused_at_load(mixed_sizes):
    with pytest.raises(FilterpruneError, match="28 x 28 but test images 1 x 32 x 32"):
        load_dataset("mnist", mixed_sizes)


def test_cli_refuses_mixed_sizes_before_training(config, mixed_sizes, tmp_path, capsys):
    out = tmp_path / "out"
    err = one_line_error(capsys, ["train", config, "--data-dir", mixed_sizes, "--out", out])
    assert "same size" in err
    assert not (out / "stages").exists() or not any((out / "stages").glob("*.state.*"))
