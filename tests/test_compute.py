"""Compute settings of training and evaluation: channels-last, bf16 autocast, torch.compile."""

import itertools
import json

import pytest
import torch

from filterprune.checkpoint import ModelSpec, load_model, save_model
from filterprune.cli import main
from filterprune.errors import FilterpruneError
from filterprune.models import create_model
from filterprune.pipeline.config import load_config, parse_config
from filterprune.training import ComputeSettings, TrainSettings, evaluate, train
from filterprune.training import calibrate as calibrate_module
from filterprune.training.calibrate import bf16_supported, calibrate_compute


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
    assert parse_config({}).compute == "auto"  # the default
    assert load_config(config, ["compute=auto"]).compute == "auto"
    with pytest.raises(FilterpruneError, match="compute"):
        load_config(config, ["compute=fast"])
    assert load_config(config, ["compute.bf16=true"]).compute.bf16
    with pytest.raises(FilterpruneError, match="compute.fp16"):
        load_config(config, ["compute.fp16=true"])


class CostlyNet(torch.nn.Module):
    """A small net whose forward pass advances a fake clock by a cost that depends on the
    compute setting it runs under (bf16 autocast, channels-last input); ``bf16_error`` is added
    to its logits under bf16 (a setting that computes something else)."""

    def __init__(self, clock, costs, bf16_error=0.0):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
            torch.nn.Flatten(), torch.nn.Linear(32, 10))
        self.clock, self.costs, self.bf16_error = clock, costs, bf16_error

    def forward(self, x):
        bf16 = torch.is_autocast_enabled(x.device.type)
        cl = not x.is_contiguous()  # 3 channels: a channels-last batch is not NCHW-contiguous
        name = " + ".join(p for p, on in [("bf16", bf16), ("channels-last", cl)] if on)
        self.clock.now += next(self.costs[name or "float32"])
        return self.net(x) + (self.bf16_error if bf16 else 0.0)

    def __deepcopy__(self, memo):  # copies share the clock
        copied = CostlyNet(self.clock, self.costs, self.bf16_error)
        copied.net.load_state_dict(self.net.state_dict())
        return copied


class Clock:
    now = 0.0

    def __call__(self):
        return self.now


def steady(cost):
    return itertools.repeat(cost)


def jittery(cost):  # +-10% in turn: no setting is faster beyond the noise
    return itertools.cycle([cost * 1.1, cost * 0.9, cost, cost * 1.05])


def calibrate(net, clock, **kwargs):
    images, labels = torch.randn(16, 3, 8, 8), torch.arange(16) % 10
    return calibrate_compute(net, images, labels, "cpu", timer=clock, budget_s=100, **kwargs)


@pytest.fixture
def with_bf16(monkeypatch):
    monkeypatch.setattr(calibrate_module, "bf16_supported", lambda device: True)


def test_auto_picks_the_fastest_setting_and_says_why(with_bf16):
    clock = Clock()
    costs = {"float32": steady(1.0), "channels-last": steady(0.8), "bf16": steady(0.5),
             "bf16 + channels-last": steady(2.0)}
    result = calibrate(CostlyNet(clock, costs), clock)
    assert result.settings == ComputeSettings(bf16=True) and result.picked == "bf16"
    assert result.measured["bf16"]["vs_float32"]["ratio"] == pytest.approx(2.0)
    assert result.measured["bf16 + channels-last"]["images_per_s"] == pytest.approx(16 / 2.0)
    assert result.reason.startswith("compute: auto picked bf16: 2.00x float32")
    rates = "images/s: float32 16, channels-last 20, bf16 32, bf16 + channels-last 8"
    assert rates in result.reason
    assert "compile" in result.skipped  # on CPU
    record = json.loads(json.dumps(result.to_dict()))  # a stage result: plain JSON
    assert ComputeSettings(**record["settings"]) == result.settings and record["picked"] == "bf16"


def test_auto_keeps_float32_unless_another_setting_is_faster_beyond_noise(with_bf16):
    clock = Clock()
    costs = {"float32": jittery(1.0), "channels-last": jittery(0.97), "bf16": jittery(1.2),
             "bf16 + channels-last": jittery(1.5)}
    result = calibrate(CostlyNet(clock, costs), clock)
    assert result.settings == ComputeSettings() and result.picked == "float32"
    assert result.measured["channels-last"]["vs_float32"]["low"] <= 1.0
    assert "no other setting was faster beyond the measurement's noise" in result.reason


def test_auto_never_picks_a_setting_that_computes_something_else(with_bf16):
    clock = Clock()
    costs = {"float32": steady(1.0), "channels-last": steady(0.9), "bf16": steady(0.5),
             "bf16 + channels-last": steady(0.5)}
    result = calibrate(CostlyNet(clock, costs, bf16_error=10.0), clock)
    assert result.picked == "channels-last"
    assert not result.measured["bf16"]["correct"] and result.measured["bf16"]["logits_error"] > 1
    assert "bf16 32 (wrong)" in result.reason


def test_auto_skips_bf16_where_the_cpu_has_no_bf16_kernels(monkeypatch):
    monkeypatch.setattr(calibrate_module, "bf16_supported", lambda device: False)
    clock = Clock()
    costs = {"float32": steady(1.0), "channels-last": steady(0.5)}
    result = calibrate(CostlyNet(clock, costs), clock)
    assert set(result.measured) == {"float32", "channels-last"}
    assert "no oneDNN bf16 kernels" in result.skipped["bf16"]
    assert result.picked == "channels-last"


def test_auto_calibrates_a_real_model_without_changing_it():
    net, (images, labels) = model(), batches()[0]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    result = calibrate_compute(net, images, labels, budget_s=0.5)
    assert result.measured["float32"]["vs_float32"]["ratio"] == pytest.approx(1.0)
    assert result.picked in result.measured and result.measured[result.picked]["correct"]
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key])


def test_auto_is_calibrated_once_per_run_and_trains_with_the_pick(tmp_path, config, capsys):
    out = tmp_path / "train"
    argv = ["train", str(config), "--out", str(out), "--json", "--set", "train.epochs=1",
            "--set", "compute=auto", "--set", "calibration_budget_s=0.05"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    calibration = json.loads((out / "stages" / "compute.json").read_text())
    assert result["compute"] == calibration["picked"]
    assert set(calibration["measured"]) >= {"float32", "channels-last"}
    assert calibration["reason"].startswith(f"compute: auto picked {calibration['picked']}")
    if not bf16_supported(torch.device("cpu")):
        assert "bf16" in calibration["skipped"]
    written = (out / "stages" / "compute.json").stat().st_mtime_ns
    assert main(argv + ["--resume"]) == 0  # reuses the pick: no second calibration
    assert json.loads(capsys.readouterr().out)["compute"] == calibration["picked"]
    assert (out / "stages" / "compute.json").stat().st_mtime_ns == written
