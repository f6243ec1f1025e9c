"""Models named by timm:NAME, torchvision:NAME and package.module:callable; weights files."""

import sys
import textwrap

import pytest
import torch
from torch import nn

from filterprune.checkpoint import build_model, load_model, load_weights, save_model
from filterprune.errors import FilterpruneError
from filterprune.models import create_model, model_arguments
from filterprune.models._external import default_input_shape
from filterprune.pipeline.config import load_config
from filterprune.pipeline.run import initial_model
from filterprune.pipeline.session import prepare


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """An importable module of the user's own, ``mynets``, with builders good and bad."""
    (tmp_path / "mynets.py").write_text(textwrap.dedent("""
        from torch import nn

        class Net(nn.Module):
            def __init__(self, num_classes=10, width=4):
                super().__init__()
                self.conv = nn.Conv2d(3, width, 3)
                self.fc = nn.Linear(width, num_classes)

            def forward(self, x):
                return self.fc(self.conv(x).mean((2, 3)))

        def build(num_classes=10, width=4):
            return Net(num_classes, width)

        def not_a_model():
            return 42

        zoo = type("Zoo", (), {"small": staticmethod(build)})
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "mynets"
    sys.modules.pop("mynets", None)


def test_an_import_path_builds_the_users_model_with_its_arguments(user_module):
    assert {"num_classes", "width"} <= model_arguments(f"{user_module}:build")
    model = create_model(f"{user_module}:build", num_classes=7, width=5)
    assert model.fc.out_features == 7 and model.conv.out_channels == 5
    assert create_model(f"{user_module}:zoo.small").fc.out_features == 10


@pytest.mark.parametrize("spec, message", [
    ("nosuchmodule_xyz:build", "cannot import 'nosuchmodule_xyz'"),
    ("mynets:missing", "has no attribute 'missing'"),
    ("mynets:not_a_model", "returned int, not a torch.nn.Module"),
    (":build", "malformed model spec"),
])
def test_an_import_path_that_does_not_give_a_module_is_one_clear_error(user_module, spec,
                                                                      message):
    with pytest.raises(FilterpruneError, match=message):
        create_model(spec)


def test_a_builder_refusing_its_arguments_is_one_clear_error(user_module):
    with pytest.raises(FilterpruneError, match="building model 'mynets:build' failed"):
        create_model("mynets:build", depth=3)


def test_a_missing_package_says_which_and_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` raise ImportError
    with pytest.raises(FilterpruneError, match=r"need the timm package.*pip install timm"):
        create_model("timm:resnet18")


def test_timm_models_take_classes_and_input_channels_and_declare_their_input():
    pytest.importorskip("timm")
    assert model_arguments("timm:resnet18") == {"num_classes", "in_chans"}
    model = create_model("timm:resnet18", num_classes=10, in_chans=1)
    assert model.fc.out_features == 10 and model.conv1.in_channels == 1
    assert default_input_shape("timm:resnet18", model) == (1, 3, 224, 224)
    with pytest.raises(FilterpruneError, match="unknown timm model 'resnet1'.*did you mean"):
        create_model("timm:resnet1")


def test_torchvision_models_take_classes():
    pytest.importorskip("torchvision")
    model = create_model("torchvision:resnet18", num_classes=10)
    assert model.fc.out_features == 10
    assert default_input_shape("torchvision:resnet18", model) == (1, 3, 224, 224)
    with pytest.raises(FilterpruneError, match="unknown torchvision model 'resnet_18'"):
        create_model("torchvision:resnet_18")


def test_an_unknown_zoo_name_lists_the_external_forms_too():
    with pytest.raises(FilterpruneError, match="timm:NAME, torchvision:NAME"):
        create_model("resnet1000")


def test_weights_load_from_training_checkpoints_and_ddp_names(tmp_path):
    source = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    torch.nn.init.normal_(source[1].weight)
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in
                                          source.state_dict().items()}}
    torch.save(wrapped, tmp_path / "ckpt.pt")
    target = load_weights(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)),
                          tmp_path / "ckpt.pt")
    assert torch.equal(target[1].weight, source[1].weight)
    assert torch.equal(target[0].bias, source[0].bias)


def test_weights_that_do_not_fit_name_the_first_tensor(tmp_path):
    torch.save(nn.Sequential(nn.Conv2d(3, 8, 3)).state_dict(), tmp_path / "wide.pt")
    with pytest.raises(FilterpruneError, match=r"'0.weight' is \(8, 3, 3, 3\) in the file, "
                                               r"\(4, 3, 3, 3\) in the model"):
        load_weights(nn.Sequential(nn.Conv2d(3, 4, 3)), tmp_path / "wide.pt")
    torch.save(nn.Sequential(nn.Conv2d(3, 4, 3, bias=False)).state_dict(), tmp_path / "nb.pt")
    with pytest.raises(FilterpruneError, match=r"'0.bias' is missing \(1 missing, 0 unexpected"):
        load_weights(nn.Sequential(nn.Conv2d(3, 4, 3)), tmp_path / "nb.pt")


def test_pretrained_weights_load_from_the_hub_and_the_file_rebuilds_without_it(
        tmp_path, monkeypatch):
    torchvision = pytest.importorskip("torchvision")
    # torchvision reads its hub through the cache in $TORCH_HOME first: put "pretrained"
    # weights there, so that the test needs no network.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = torchvision.models.get_model_weights("squeezenet1_1").DEFAULT.url
    torch.manual_seed(1)
    published = torchvision.models.squeezenet1_1().state_dict()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(published, tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[1])
    model, spec = build_model("torchvision:squeezenet1_1", pretrained=True)
    assert torch.equal(model.features[0].weight, published["features.0.weight"])
    assert "weights" not in spec.kwargs  # a file saved from it rebuilds offline
    save_model(tmp_path / "m.safetensors", model, spec)
    (tmp_path / "hub" / "checkpoints").rename(tmp_path / "gone")
    reloaded = load_model(tmp_path / "m.safetensors")[0]
    assert torch.equal(reloaded.features[0].weight, published["features.0.weight"])


def test_pretrained_weights_that_cannot_be_fetched_say_why_in_one_line(tmp_path, monkeypatch):
    pytest.importorskip("torchvision")
    (tmp_path / "not-a-directory").write_text("")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "not-a-directory"))  # the hub cache fails
    with pytest.raises(FilterpruneError, match="give a downloaded copy with --weights") as e:
        build_model("torchvision:squeezenet1_1", pretrained=True)
    assert "\n" not in str(e.value)
    with pytest.raises(FilterpruneError, match="expected value 1000") as e:
        build_model("torchvision:squeezenet1_1", pretrained=True, num_classes=10)
    assert "--weights" not in str(e.value)  # not a hub failure: no advice about the hub


def test_pretrained_weights_of_a_model_without_a_hub_are_refused(user_module):
    with pytest.raises(FilterpruneError, match="'mynets:build' has none"):
        build_model(f"{user_module}:build", pretrained=True)
    with pytest.raises(FilterpruneError, match="'resnet20' has none"):
        build_model("resnet20", pretrained=True)


def test_the_run_starts_from_pretrained_weights_when_the_config_asks(tmp_path, monkeypatch,
                                                                      config):
    torchvision = pytest.importorskip("torchvision")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # the hub's cache, as above: no network
    url = torchvision.models.get_model_weights("squeezenet1_1").DEFAULT.url
    torch.manual_seed(1)
    published = torchvision.models.squeezenet1_1().state_dict()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(published, tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[1])
    # torchvision's weights are for its 1000 classes: the model keeps them (only built here)
    cfg = load_config(config, ["model.name=torchvision:squeezenet1_1", "model.pretrained=true",
                               "model.kwargs={num_classes: 1000}"])
    lines = []
    model = initial_model(prepare(cfg, progress=False), lines.append)
    assert torch.equal(model.features[0].weight, published["features.0.weight"])
    assert lines == ["loaded the pretrained weights of torchvision:squeezenet1_1 from its hub"]
    with pytest.raises(FilterpruneError, match="model: .*'scnnb' has none"):
        load_config(config, ["model.pretrained=true"])
