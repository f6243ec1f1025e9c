"""The passes ``prune`` shares or shortens for speed give what the long way gives: the profile
counted in the tracer's shape pass equals ``profile``, the tracer's graph equals torch.fx's,
``copy_model`` equals ``copy.deepcopy``,
the pruned model shares no data with the original (its parameters are cloned only where they
are not cut), and pausing the garbage collector leaves it as it was."""

import copy
import gc

import pytest
import torch
from torch import fx, nn
from torch.nn.utils import parametrizations

import filterprune
from filterprune.engine import profile, register_layer
from filterprune.engine.dependencies import trace
from filterprune.engine.surgery import copy_model
from filterprune.engine.tracers import LeafTracer
from filterprune.errors import FilterpruneError


class SameConv(nn.Conv2d):
    """A conv subclass outside torch.nn: torch.fx traces into its forward (as timm's
    Conv2dSame), so the shape pass does not call it as a module."""

    def forward(self, x):
        return super().forward(nn.functional.pad(x, (1, 1, 1, 1)))


class Net(nn.Module):
    def __init__(self, same: bool = False, aux: bool = False):
        super().__init__()
        self.stem = SameConv(3, 8, 3) if same else nn.Conv2d(3, 8, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.aux = nn.Conv2d(8, 4, 1) if aux else None
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = self.stem(x)
        x = self.block(x) + self.block(x)  # a module called twice: its MACs count twice
        if self.aux is not None and self.training:
            return self.head(x.mean((2, 3))), self.aux(x)
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize(
    ("net", "options"),
    [
        (Net(), {}),
        (Net(), {"tracer": "record"}),
        (Net(same=True), {}),  # fx traces through it: counted from the shapes
        (Net(), {"ignore": ["block"]}),  # its conv runs inside an ignored leaf
        (Net(aux=True), {}),  # the train-mode pass (aux head) is not counted
    ],
)
def test_profile_from_the_shape_pass_equals_profile(net, options):
    x = torch.randn(2, 3, 8, 8)
    costs = trace(net, x, **options).profile
    expected = profile(net, x)
    assert costs == expected
    assert [layer.name for layer in costs.layers] == ["stem", "block.0", "head"]
    assert costs.layers[1].macs == 2 * 8 * 8 * 9 * 8 * 8  # called twice, per image


class Up(nn.ConvTranspose2d):
    """A transposed conv outside torch.nn (fx traces through it): counted per input position."""

    def forward(self, x):
        return super().forward(x)


@pytest.mark.parametrize("tracer", ["fx", "record"])
def test_profile_of_a_traced_through_transposed_conv_equals_profile(tracer):
    net, x = nn.Sequential(nn.Conv2d(3, 4, 1), Up(4, 2, 2, stride=2)), torch.randn(2, 3, 4, 4)
    costs = trace(net, x, tracer=tracer).profile
    assert costs == profile(net, x)
    assert costs.layers[1].macs == 4 * 2 * 2 * 2 * 4 * 4  # weight entries x input positions


class Args(nn.Module):
    """Arguments of every kind torch.fx writes: tuples, lists, slices, ints, floats, dtypes,
    None, parameters, buffers and tensor constants."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.scale = nn.Parameter(torch.ones(1, 8, 1, 1))
        self.register_buffer("shift", torch.zeros(8, 1, 1))
        self.constant = torch.ones(1)

    def forward(self, x):
        y = torch.cat([self.conv(x), self.conv(x)], 1) * self.scale + self.shift
        a, b = torch.split(y, (2, 6), dim=1)
        z = nn.functional.interpolate(a[:, 0:2, ...], scale_factor=2.0, mode="nearest")
        return z.to(torch.float32).mean((2, 3), keepdim=False) + b.sum(None) + self.constant


@pytest.mark.parametrize("net", [Args(), Net(aux=True)])
def test_the_leaf_tracer_writes_the_graph_torch_fx_writes(net):
    assert str(LeafTracer(()).trace(net)) == str(fx.Tracer().trace(net))


def test_copy_model_equals_deepcopy_and_shares_nothing_with_the_original():
    net = Net(aux=True)
    net.head.weight = nn.Parameter(torch.randn(10, 8))
    net.tied = nn.Linear(8, 10)
    net.tied.weight = net.head.weight  # one parameter in two modules
    net.again = net.block  # one module under two names
    net.block[1].running_mean += 1
    net.register_buffer("part", net.block[1].running_mean[2:])  # shares its storage
    net.block[0].register_forward_hook(lambda module, args, output: None)
    parametrizations.weight_norm(net.stem)  # a module with its own __deepcopy__
    net.stem.parametrizations.weight.original0.requires_grad_(False)
    copied, reference = copy_model(net), copy.deepcopy(net)

    def tensors(model):
        return {**dict(model.named_parameters(remove_duplicate=False)),
                **dict(model.named_buffers(remove_duplicate=False))}

    mine, theirs, originals = tensors(copied), tensors(reference), tensors(net)
    assert mine.keys() == theirs.keys() == originals.keys()
    for name, tensor in mine.items():
        assert torch.equal(tensor, theirs[name]) and type(tensor) is type(theirs[name])
        assert tensor.requires_grad == theirs[name].requires_grad
        assert tensor.data_ptr() != originals[name].data_ptr()
    assert copied.tied.weight is copied.head.weight and copied.again is copied.block
    for model in (copied, reference):
        assert model.part.untyped_storage().data_ptr() == \
            model.block[1].running_mean.untyped_storage().data_ptr()
    assert copied.block[0]._forward_hooks.keys() == net.block[0]._forward_hooks.keys()
    assert copied.block[0]._forward_hooks is not net.block[0]._forward_hooks
    assert [type(m) for m in copied.modules()] == [type(m) for m in reference.modules()]
    x = torch.randn(2, 3, 8, 8)
    copied.eval(), reference.eval()
    with torch.no_grad():
        assert torch.equal(copied(x), reference(x))


class Gain(nn.Module):
    """A registered layer whose resize changes its tensors in place."""

    def __init__(self, c):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(c, 1, 1))
        self.fixed = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x * self.gain * self.fixed


register_layer(Gain, "follows", outputs={"gain": 0},
               resize=lambda module: (module.gain.data.mul_(2), module.fixed.data.mul_(2)))


def test_the_pruned_model_shares_no_data_with_the_original_which_is_left_unchanged():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), Gain(8), nn.Conv2d(8, 4, 3),
                        nn.Flatten(), nn.Linear(4 * 4 * 4, 5))
    net[1].running_mean += 1
    before = copy.deepcopy(net.state_dict())
    pruned = filterprune.prune(net, torch.randn(1, 3, 8, 8), ratio=0.5).model
    assert pruned[0].out_channels == 4 and pruned[5].out_features == 5  # its bias is not cut
    pointers = {t.data_ptr() for t in (*net.parameters(), *net.buffers()) if t.numel()}
    assert not pointers & {t.data_ptr() for t in (*pruned.parameters(), *pruned.buffers())}
    after = net.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[key], before[key]) for key in before)
    assert torch.equal(pruned[2].fixed, 2 * net[2].fixed)


def test_prune_restores_the_garbage_collector_state():
    x = torch.randn(1, 3, 8, 8)
    assert gc.isenabled()
    filterprune.prune(Net(), x, ratio=0.5)
    assert gc.isenabled()
    gc.disable()
    try:
        filterprune.prune(Net(), x, ratio=0.5)
        assert not gc.isenabled()
    finally:
        gc.enable()
    with pytest.raises(FilterpruneError):
        filterprune.prune(Net(), x, ratio=1.5)
    assert gc.isenabled()
