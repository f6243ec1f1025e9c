"""The scripts in examples/ run on tiny data and do what they say: files written, the pruned
model smaller, the saved model reloading with the same outputs."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import filterprune
from filterprune.checkpoint import load_model

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def script(name: str):
    """The example script ``name`` imported as a module (its ``main(argv)`` is called)."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def image_folder(tmp_path):
    """train/ and val/ of 3 classes, 6 and 2 PNG images of 40 x 40 each, a colour per class."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for split, n in (("train", 6), ("val", 2)):
        for c, colour in enumerate(((200, 30, 30), (30, 200, 30), (30, 30, 200))):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(rng.normal(colour, 40, (40, 40, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def test_torchvision_resnet18_with_ones_own_loop(tmp_path, image_folder):
    # a real ResNet-18 (11 M parameters) trained, analysed and retrained: ~5 s of CPU
    pytest.importorskip("torchvision")
    out = tmp_path / "run"
    path, model = script("prune_torchvision_resnet18").main(
        [str(image_folder), "--out", str(out), "--tiny"])
    assert (out / "baseline.pt").is_file() and (out / "sensitivity.png").is_file()
    pruned, spec = load_model(path)  # rebuilt from the spec alone: torchvision + plan
    assert spec.name == "torchvision:resnet18" and spec.input_shape == (1, 3, 32, 32)
    original = torchvision_resnet18(num_classes=3)
    original.load_state_dict(torch.load(out / "baseline.pt", weights_only=True))
    x = torch.zeros(spec.input_shape)
    assert filterprune.profile(pruned, x).macs < 0.9 * filterprune.profile(original, x).macs
    halved = [name for name, m in pruned.named_modules() if name.endswith(".conv1")
              and 2 * m.out_channels == original.get_submodule(name).out_channels]
    assert len(halved) == 8 - 2  # --ratio 0.5 on every block's conv1 but the 2 most sensitive
    x = torch.randn(2, *spec.input_shape[1:])
    assert torch.equal(pruned.eval()(x), model.eval()(x))


def torchvision_resnet18(num_classes):
    import torchvision

    return torchvision.models.resnet18(num_classes=num_classes)


@pytest.mark.slow  # four CLI processes, each importing torch and timm: about 35 s of CPU
def test_timm_model_through_the_command_line(tmp_path, image_folder):
    timm = pytest.importorskip("timm")
    out = tmp_path / "run"
    env = {**os.environ, "MODEL": "timm:test_resnet", "NUM_CLASSES": "3", "EPOCHS": "1",
           "PRETRAINED": "", "FILTERPRUNE": f"{sys.executable} -m filterprune",
           "DATA": f"{{name: imagefolder, data_dir: '{image_folder}', image_size: 32}}",
           "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(["bash", EXAMPLES / "prune_timm_cli.sh", out], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    pruned, spec = load_model(out / "pruned.safetensors")
    assert spec.name == "timm:test_resnet" and spec.kwargs == {"num_classes": 3, "in_chans": 3}
    assert (out / "pruned.plan.json").is_file()
    finetuned, spec_after = load_model(out / "finetune" / "finetuned.safetensors")
    assert spec_after.plan.to_dict() == spec.plan.to_dict()
    assert not torch.equal(finetuned.fc.weight, pruned.fc.weight)  # retrained
    x = torch.zeros(1, 3, 32, 32)
    full = timm.create_model("test_resnet", num_classes=3)
    assert filterprune.profile(finetuned, x).macs < 0.8 * filterprune.profile(full, x).macs
    assert "top1: " in done.stdout  # evaluate of the retrained file


def test_own_module_with_a_custom_metric_and_per_layer_ratios(tmp_path):
    example = script("prune_own_module")
    path, model = example.main(["--out", str(tmp_path), "--tiny"])
    with pytest.raises(filterprune.FilterpruneError, match="pass the unpruned model"):
        filterprune.load(path)  # a model of one's own: the file holds the plan, not the code
    reloaded, spec = load_model(path, model=example.Denoiser())
    widths = [reloaded.encoder[i].out_channels for i in (0, 3, 6)]
    # --ratio 0.6 keeps floor(32 * 0.4) = 12, the most sensitive layer at 0.2 keeps 25
    assert sorted(widths) == [12, 12, 25] and reloaded.head.out_channels == 3
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(reloaded.eval()(x), model.eval()(x)) and spec.input_shape == (1, 3, 16, 16)
    full = filterprune.profile(example.Denoiser(), torch.zeros(1, 3, 16, 16))
    assert filterprune.profile(reloaded, torch.zeros(1, 3, 16, 16)).params < full.params / 2
