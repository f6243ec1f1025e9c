"""Model files (safetensors + JSON, no code executed on load) and ONNX export."""

import importlib.util
import json

import pytest
import torch
from _zoo import ARCHITECTURES
from safetensors.torch import save_file
from test_graph_general import NETS, randomize_bn

import filterprune
from filterprune.checkpoint import ModelSpec, load_state_dict
from filterprune.cli import main
from filterprune.errors import FilterpruneError
from filterprune.models import create_model, list_models, model_arguments
from filterprune.onnx_export import export_onnx


class Payload:
    """An arbitrary object: weights_only loading must refuse to unpickle it."""


def pruned_zoo_file(name: str, path, residual: str = "coupled"):
    """Prunes zoo model ``name`` at 0.3 and saves it; returns (pruned model, path)."""
    torch.manual_seed(0)
    kwargs = {"num_classes": 5, **({"input_size": 32} if "input_size" in model_arguments(name)
                                   else {})}
    model = randomize_bn(create_model(name, **kwargs))
    result = filterprune.prune(model, torch.zeros(1, 3, 32, 32), ratio=0.3, residual=residual)
    spec = ModelSpec(name, kwargs, (1, 3, 32, 32), result.plan)
    return result.model.eval(), filterprune.save(result.model, path / f"{name}.safetensors",
                                                 spec=spec)


@pytest.mark.parametrize("name", list_models())
def test_zoo_round_trip_is_bit_identical(name, tmp_path):
    model, path = pruned_zoo_file(name, tmp_path)
    loaded = filterprune.load(path).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("net", NETS, ids=[n[0] for n in NETS])
def test_own_model_round_trip_replays_the_plan(net, tmp_path):
    _, build, shape = net
    torch.manual_seed(0)
    original = randomize_bn(build())
    x = torch.randn(shape)
    result = filterprune.prune(original, x[:1], ratio=0.3, residual="coupled")
    path = filterprune.save(result.model, tmp_path / "m.safetensors",
                            spec=ModelSpec(input_shape=tuple(x[:1].shape), plan=result.plan))
    metadata = json.loads(json.dumps(result.plan.to_dict()))
    assert metadata == result.plan.to_dict()
    with pytest.raises(FilterpruneError, match="pass the unpruned model"):
        filterprune.load(path)
    fresh = build()  # other weights: only the architecture comes from it
    loaded = filterprune.load(path, model=fresh).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model.eval()(x))
    assert loaded is not fresh
    if importlib.util.find_spec("onnxruntime") is not None:
        assert export_onnx(loaded, x, tmp_path / "m.onnx") <= 1e-4


def test_unpruned_own_model_round_trip(tmp_path):
    model = randomize_bn(NETS[0][1]())
    path = filterprune.save(model, tmp_path / "m.safetensors")
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        assert torch.equal(filterprune.load(path, model=NETS[0][1]()).eval()(x), model(x))


def test_state_dicts_are_read_without_pickled_code(tmp_path):
    state = create_model("scnnb").state_dict()
    torch.save(state, tmp_path / "w.pt")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    for name in ("w.pt", "w.safetensors"):
        loaded = load_state_dict(tmp_path / name)
        assert all(torch.equal(loaded[k], v) for k, v in state.items())
    torch.save({"x": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(FilterpruneError, match="cannot read weights file"):
        load_state_dict(tmp_path / "evil.pt")
    torch.save({"w": [1, 2]}, tmp_path / "list.pth")
    with pytest.raises(FilterpruneError, match="not a state dict"):
        load_state_dict(tmp_path / "list.pth")
    (tmp_path / "w.bin").write_bytes(b"")
    with pytest.raises(FilterpruneError, match="expected .safetensors, .pt or .pth"):
        load_state_dict(tmp_path / "w.bin")


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_onnx_export_matches_pytorch(name, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    model, path = pruned_zoo_file(name, tmp_path)
    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(path), "--onnx", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["onnx"] == str(out) and out.is_file()
    onnxruntime = pytest.importorskip("onnxruntime")
    x = torch.randn(3, 3, 32, 32)  # another batch than the command's check
    (onnx_out,) = onnxruntime.InferenceSession(str(out)).run(None, {"input": x.numpy()})
    with torch.no_grad():
        reference = model(x)
    # float rounding grows with depth and output size (randomized deep nets reach 1e7 here)
    scale = max(1.0, reference.abs().max().item())
    assert (torch.from_numpy(onnx_out) - reference).abs().max().item() <= 1e-4 * scale
    assert main(["export", "--checkpoint", str(path), "--onnx", str(out)]) == 2
    assert "exists (use --overwrite)" in capsys.readouterr().err
