"""Model files whose metadata does not fit their weights are refused in one line, early."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from safetensors.torch import load_file, save_file

from filterprune.checkpoint import ModelSpec, load_model, save_model
from filterprune.errors import FilterpruneError
from filterprune.models import create_model


@pytest.fixture()
def model_file(tmp_path):
    spec = ModelSpec("scnnb", {"in_channels": 1}, (1, 1, 28, 28))
    return save_model(tmp_path / "m.safetensors", spec.build(), spec)


def _rewrite_metadata(path, **changes):
    """The same tensors with the metadata's fields replaced (a hand-edited or hostile file)."""
    meta = json.loads(_metadata(path))
    meta.update(changes)
    save_file(load_file(str(path)), str(path), metadata={"filterprune": json.dumps(meta)})


def _metadata(path) -> str:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata()["filterprune"]


@pytest.mark.parametrize("changes, message", [
    ({"kwargs": {"in_channels": "abc"}}, "does not build model 'scnnb'"),
    ({"kwargs": ["in_channels"]}, "'kwargs' must map names"),
    ({"name": 7}, "'name' must be a string"),
    ({"input_shape": [1, 1, "28", 28]}, "'input_shape' must be"),
    ({"input_shape": [1, 3, 100000, 100000]}, "'input_shape' must be"),
    ({"plan": {"layers": 3}}, "'plan' is malformed"),
    ({"kwargs": {"in_channels": 1, "num_classes": 11}}, "classifier"),
])
def test_malformed_metadata_is_one_line_error(model_file, changes, message):
    _rewrite_metadata(model_file, **changes)
    with pytest.raises(FilterpruneError, match=message) as info:
        load_model(model_file)
    assert str(model_file) in str(info.value) and "\n" not in str(info.value)


def test_metadata_that_would_allocate_without_bound_is_refused_before_building(
    model_file, monkeypatch
):
    """num_classes 800000 would build a 1280 x 800000 classifier (4 GB) on the CPU; the shapes
    are compared on the meta device (no memory) first, and nothing is built for real."""
    _rewrite_metadata(model_file, kwargs={"in_channels": 1, "num_classes": 800_000})
    devices = []

    def spy(name, **kwargs):
        devices.append(torch.get_default_device().type)
        return create_model(name, **kwargs)

    monkeypatch.setattr("filterprune.checkpoint.create_model", spy)
    with pytest.raises(FilterpruneError, match=r"800000"):
        load_model(model_file)
    assert devices == ["meta"]


def test_pruned_zoo_model_passes_the_shape_check(tmp_path):
    import filterprune

    spec = ModelSpec("resnet20", {"num_classes": 5}, (1, 3, 32, 32))
    result = filterprune.prune(spec.build(), spec.example_input(), ratio=0.5)
    spec.plan = result.plan
    save_model(tmp_path / "p.safetensors", result.model, spec)
    loaded, _ = load_model(tmp_path / "p.safetensors")
    assert loaded.layer1[0].conv1.out_channels == 8


def test_a_directory_is_named_as_one(tmp_path):
    with pytest.raises(FilterpruneError, match="is a directory"):
        load_model(tmp_path)


def test_model_files_get_the_permissions_of_ordinary_files(tmp_path, model_file):
    """safetensors writes 0600; model files should be like reports: 0666 less the umask."""
    old = os.umask(0o027)
    try:
        path = save_model(tmp_path / "u.safetensors", create_model("scnnb", in_channels=1),
                          ModelSpec("scnnb", {"in_channels": 1}, (1, 1, 28, 28)))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert stat.S_IMODE(model_file.stat().st_mode) == 0o666 & ~old
