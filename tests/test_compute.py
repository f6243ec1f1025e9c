"""Compute settings of training and evaluation: channels-last, bf16 autocast, torch.compile."""

import pytest
import torch

from filterprune.checkpoint import ModelSpec, load_model, save_model
from filterprune.errors import FilterpruneError
from filterprune.models import create_model
from filterprune.pipeline.config import load_config
from filterprune.training import ComputeSettings, TrainSettings, evaluate, train


def batches(n=64, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 1, size, size, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    images[torch.arange(n), 0, labels, labels] += 8  # a learnable cue
    return [(images[i : i + 16], labels[i : i + 16]) for i in range(0, n, 16)]


def model():
    torch.manual_seed(0)
    return create_model("scnnb", in_channels=1, input_size=16)


def test_channels_last_evaluates_the_same():
    net, data = model(), batches()
    plain = evaluate(net, data)
    fast = evaluate(net, data, compute=ComputeSettings(channels_last=True))
    assert net.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert fast["top1"] == plain["top1"]
    assert fast["loss"] == pytest.approx(plain["loss"], rel=1e-5)


def test_channels_last_bf16_training_learns_saves_and_resumes(tmp_path):
    data, compute = batches(), ComputeSettings(channels_last=True, bf16=True)
    settings = TrainSettings(epochs=4, batch_size=16, lr=0.05, schedule="constant")
    net = model()
    history = train(net, data, settings, compute=compute, progress=False,
                    state_path=tmp_path / "state.safetensors")
    assert history[-1]["loss"] < history[0]["loss"]
    assert evaluate(net, data, compute=compute)["top1"] > 50
    spec = ModelSpec("scnnb", {"in_channels": 1, "input_size": 16}, (1, 1, 16, 16))
    save_model(tmp_path / "m.safetensors", net, spec)
    reloaded, _ = load_model(tmp_path / "m.safetensors")
    assert evaluate(reloaded, data)["top1"] == evaluate(net, data)["top1"]
    longer = settings.model_copy(update={"epochs": 5})
    resumed = train(model(), data, longer, compute=compute, progress=False,
                    state_path=tmp_path / "state.safetensors")
    assert [h["epoch"] for h in resumed] == [1, 2, 3, 4, 5] and resumed[:4] == history


def small_net():  # no dropout: compiled code draws its random numbers differently
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(32, 10),
    )


@pytest.mark.slow
def test_compiled_training_matches_eager():
    data, settings = batches(), TrainSettings(epochs=1, batch_size=16, lr=0.05)
    eager, compiled = small_net(), small_net()
    train(eager, data, settings, progress=False)
    train(compiled, data, settings, progress=False, compute=ComputeSettings(compile=True))
    for a, b in zip(eager.parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


def test_compute_keys_are_validated(config):
    assert load_config(config).compute == ComputeSettings()
    assert load_config(config, ["compute.bf16=true"]).compute.bf16
    with pytest.raises(FilterpruneError, match="compute.fp16"):
        load_config(config, ["compute.fp16=true"])
