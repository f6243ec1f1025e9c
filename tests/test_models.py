"""Tests of the model zoo: registry, shapes, gradients, torch.fx tracing, architectures."""

from __future__ import annotations

import pytest
import torch
import torch.fx
from _zoo import ARCHITECTURES
from torch import nn

from filterprune.errors import FilterpruneError
from filterprune.models import _registry, create_model, list_models, model_arguments

MODELS = list_models()
# (in_channels, image side): CIFAR-10 and (Fashion-)MNIST.
INPUTS = [(3, 32), (1, 28)]
NUM_CLASSES = 7
VGG16_WIDTHS = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
RESNET_DEPTHS = {"resnet20": 20, "resnet32": 32, "resnet44": 44, "resnet56": 56, "resnet110": 110}


def build(name: str, in_channels: int, side: int) -> nn.Module:
    kwargs: dict[str, object] = {"num_classes": NUM_CLASSES, "in_channels": in_channels}
    if "input_size" in model_arguments(name):
        kwargs["input_size"] = side
    return create_model(name, **kwargs)


def convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_expected_models_registered():
    assert set(MODELS) == {"scnnb", "vgg16", "vgg16-lite", *RESNET_DEPTHS, "resnet18", "resnet34",
                           "resnet50", "mobilenetv2", "resnet20-dwse"}
    assert MODELS.index("resnet20") < MODELS.index("resnet110")
    assert set(ARCHITECTURES) < set(MODELS)


@pytest.mark.parametrize(
    ("name", "in_channels", "side"),
    [(name, *INPUTS[0]) for name in MODELS] + [(name, *INPUTS[1]) for name in ARCHITECTURES],
)
def test_forward_backward(name, in_channels, side):
    torch.manual_seed(0)
    model = build(name, in_channels, side).train()
    x = torch.randn(2, in_channels, side, side)
    out = model(x)
    assert out.shape == (2, NUM_CLASSES)
    assert torch.isfinite(out).all()
    nn.functional.cross_entropy(out, torch.tensor([0, 1])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize(("in_channels", "side"), INPUTS)
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_fx_trace_matches(name, in_channels, side):
    torch.manual_seed(0)
    model = build(name, in_channels, side).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, in_channels, side, side)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", MODELS)
def test_init(name):
    model = create_model(name)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.equal(m.bias, torch.zeros_like(m.bias))
    for conv in convs(model):
        # Kaiming normal, fan_out, ReLU gain: std = sqrt(2 / (out_channels * k * k)).
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        assert conv.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.25)


# --- CIFAR ResNets (He et al. 2016, §4.2) ---


def resnet_param_count(depth: int, num_classes: int = 10, in_channels: int = 3) -> int:
    """Hand count: 3x3 convs without bias, BN (weight + bias), option A shortcuts, fc."""
    n = (depth - 2) // 6

    def conv(c_in: int, c_out: int) -> int:
        return c_in * c_out * 9

    def bn(c: int) -> int:
        return 2 * c

    total = conv(in_channels, 16) + bn(16)
    c_in = 16
    for width in (16, 32, 64):
        for _ in range(n):
            total += conv(c_in, width) + bn(width) + conv(width, width) + bn(width)
            c_in = width
    return total + 64 * num_classes + num_classes


def test_resnet20_param_count():
    # The well-known 0.27M; by hand: stem 432 + 32, stage 1 6 x (2304 + 32),
    # stage 2 4608 + 5 x 9216 + 6 x 64, stage 3 18432 + 5 x 36864 + 6 x 128, fc 650.
    expected = 432 + 32 + 6 * (2304 + 32) + 4608 + 5 * 9216 + 384 + 18432 + 5 * 36864 + 768 + 650
    assert expected == 269_722 == resnet_param_count(20)
    model = create_model("resnet20")
    assert sum(p.numel() for p in model.parameters()) == 269_722


@pytest.mark.parametrize(
    ("name", "millions"),
    [("resnet32", 0.46), ("resnet44", 0.66), ("resnet56", 0.85), ("resnet110", 1.7)],
)
def test_resnet_param_counts(name, millions):
    model = create_model(name, num_classes=100, in_channels=1)
    count = sum(p.numel() for p in model.parameters())
    assert count == resnet_param_count(RESNET_DEPTHS[name], num_classes=100, in_channels=1)
    # He et al. 2016, Table 6 (10 classes, RGB), given to two significant figures.
    assert float(f"{resnet_param_count(RESNET_DEPTHS[name]) / 1e6:.2g}") == millions


@pytest.mark.parametrize("name", list(RESNET_DEPTHS))
def test_resnet_structure(name):
    depth = RESNET_DEPTHS[name]
    n = (depth - 2) // 6
    model = create_model(name)
    layers = convs(model)
    # Depth 6n + 2 counts the weighted layers: the stem conv, 6n block convs and fc.
    assert len(layers) == 6 * n + 1 == depth - 1
    assert all(c.kernel_size == (3, 3) and c.bias is None for c in layers)
    assert model.get_submodule("conv1").out_channels == 16
    assert isinstance(model.get_submodule("bn1"), nn.BatchNorm2d)
    assert model.get_submodule("fc").in_features == 64
    for stage, width in zip(("layer1", "layer2", "layer3"), (16, 32, 64), strict=True):
        assert len(model.get_submodule(stage)) == n
        for i in range(n):
            block = f"{stage}.{i}"
            for sub in ("conv1", "conv2"):
                assert model.get_submodule(f"{block}.{sub}").out_channels == width
            assert model.get_submodule(f"{block}.bn1").num_features == width
            assert model.get_submodule(f"{block}.bn2").num_features == width
            stride = 2 if stage != "layer1" and i == 0 else 1
            assert model.get_submodule(f"{block}.conv1").stride == (stride, stride)
            # Option A: no parameters on any shortcut.
            assert not list(model.get_submodule(f"{block}.shortcut").parameters())


def test_resnet_feature_maps():
    model = create_model("resnet20").eval()
    shapes = {}
    for stage in ("layer1", "layer2", "layer3"):
        model.get_submodule(stage).register_forward_hook(
            lambda _m, _i, out, stage=stage: shapes.__setitem__(stage, tuple(out.shape))
        )
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert shapes == {"layer1": (1, 16, 32, 32), "layer2": (1, 32, 16, 16), "layer3": (1, 64, 8, 8)}


def test_pad_shortcut_zero_pads_channels():
    block = create_model("resnet20").layer2[0]
    x = torch.randn(2, 16, 8, 8)
    y = block.shortcut(x)
    assert y.shape == (2, 32, 4, 4)
    torch.testing.assert_close(y[:, 8:24], x[:, :, ::2, ::2])
    assert not y[:, :8].any() and not y[:, 24:].any()


# --- VGG-16 (Li et al. 2017, §4.1) ---


def check_vgg(model: nn.Module, widths: list[int]) -> None:
    layers = convs(model)
    assert [c.out_channels for c in layers] == widths
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.bias is None for c in layers)
    features = list(model.features)
    for i, m in enumerate(features):
        if isinstance(m, nn.Conv2d):
            assert isinstance(features[i + 1], nn.BatchNorm2d)
            assert isinstance(features[i + 2], nn.ReLU)
    assert sum(isinstance(m, nn.MaxPool2d) for m in features) == 4
    assert isinstance(features[-1], nn.AdaptiveAvgPool2d)
    head = [type(m) for m in model.classifier]
    assert head == [nn.Flatten, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert model.classifier[1].in_features == model.classifier[1].out_features == widths[-1]
    assert model.classifier[4].in_features == widths[-1]
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())


def test_vgg16_architecture():
    check_vgg(create_model("vgg16"), VGG16_WIDTHS)


def test_vgg16_lite_is_half_width():
    half = [w // 2 for w in VGG16_WIDTHS]
    check_vgg(create_model("vgg16-lite"), half)
    check_vgg(create_model("vgg16", width_multiplier=0.5), half)


def test_vgg16_avgpool_matches_paper_2x2_pool():
    model = create_model("vgg16").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        last_map = model.features[:-1](x)
        assert last_map.shape[-2:] == (2, 2)
        pooled = nn.functional.avg_pool2d(last_map, 2)
        torch.testing.assert_close(model.features(x), pooled)


# --- SCNNB (Lei et al. 2019) ---


@pytest.mark.parametrize(("side", "in_features"), [(28, 3136), (32, 4096)])
def test_scnnb_architecture(side, in_features):
    model = create_model("scnnb", input_size=side)
    assert [c.out_channels for c in convs(model)] == [32, 64]
    linears = [m for m in model.classifier if isinstance(m, nn.Linear)]
    shapes = [(fc.in_features, fc.out_features) for fc in linears]
    assert shapes == [(in_features, 1280), (1280, 10)]
    assert isinstance(model.classifier[0], nn.Flatten)
    assert any(isinstance(m, nn.Dropout) and m.p == 0.5 for m in model.classifier)


# --- Registry ---


def test_model_arguments():
    assert model_arguments("scnnb") == {"num_classes", "in_channels", "input_size"}
    assert model_arguments("vgg16") == {"num_classes", "in_channels", "width_multiplier"}
    assert model_arguments("vgg16-lite") == {"num_classes", "in_channels"}
    assert model_arguments("resnet56") == {"num_classes", "in_channels"}


def test_unknown_model_name():
    with pytest.raises(FilterpruneError, match="unknown model 'resnet19'") as err:
        create_model("resnet19")
    message = str(err.value)
    assert "\n" not in message
    assert all(name in message for name in MODELS)
    assert isinstance(err.value, ValueError)
    with pytest.raises(FilterpruneError, match="resnet19"):
        model_arguments("resnet19")


def test_unknown_kwarg():
    with pytest.raises(FilterpruneError, match="'input_size'") as err:
        create_model("resnet20", input_size=32)
    assert "num_classes" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(FilterpruneError, match="'width_multiplier'"):
        create_model("vgg16-lite", width_multiplier=0.25)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("vgg16", {"width_multiplier": 0.0}), ("scnnb", {"input_size": 3})],
)
def test_bad_values(name, kwargs):
    with pytest.raises(FilterpruneError):
        create_model(name, **kwargs)


def test_bad_resnet_depth():
    from filterprune.models import CifarResNet

    with pytest.raises(FilterpruneError, match="6n \\+ 2"):
        CifarResNet(21)


@pytest.fixture
def empty_registry(monkeypatch):
    monkeypatch.setattr(_registry, "_MODELS", {})
    monkeypatch.setattr(_registry, "_ARGUMENTS", {})


@pytest.mark.usefixtures("empty_registry")
def test_register_model_forms():
    @_registry.register_model
    def tiny(num_classes: int = 10) -> nn.Module:
        return nn.Linear(4, num_classes)

    @_registry.register_model("tiny-named")
    def tiny_named(in_channels: int = 3) -> nn.Module:
        return nn.Linear(in_channels, 2)

    assert list_models() == ["tiny", "tiny-named"]
    assert create_model("tiny", num_classes=3).out_features == 3
    assert create_model("tiny-named", in_channels=5).in_features == 5
    assert model_arguments("tiny-named") == {"in_channels"}
    with pytest.raises(ValueError, match="already registered"):
        _registry.register_model("tiny")(tiny_named)


@pytest.mark.usefixtures("empty_registry")
def test_register_model_rejects_var_kwargs():
    def loose(**kwargs: object) -> nn.Module:
        return nn.Identity()

    with pytest.raises(ValueError, match="no \\*args"):
        _registry.register_model(loose)
