"""Executes a pruning plan: removes filters physically and returns a smaller dense model.

For each pruned channel group (filterprune.engine.graph): the output channels of its members
(conv or Linear weight rows and biases), the per-channel weights of its followers (BatchNorm
parameters and statistics, depthwise conv filters, per-channel PReLU slopes), and the input side
of every consumer (conv input channels; for a Linear after a flatten, the H*W input features of
each removed channel; after a concatenation, at the group's offset; for a grouped conv, each
conv group's kernels of its own kept input channels). Li et al. 2017, §3.1.
"""

from __future__ import annotations

import copy
import copyreg
from collections import OrderedDict
from collections.abc import Iterable

import torch
from torch import nn

from filterprune.engine.custom import rule_of
from filterprune.engine.graph import DependencyGraph, input_weight, layout_index
from filterprune.engine.plan import PruningPlan
from filterprune.errors import FilterpruneError


def check_plan(plan: PruningPlan, graph: DependencyGraph) -> None:
    """Checks that ``plan`` can be applied to the model of ``graph``, whatever the policy.

    Raises:
        FilterpruneError: a layer of the plan produces no channels of the model, its channels
            cannot be pruned (the reason names the operation), its width differs from the
            model's, layers sharing their channels are not given the same kept indices, or a
            depthwise conv listed in the plan does not keep the indices its input keeps, or
            a group read or written by grouped convs does not keep equal counts per conv group.
    """
    followers = {name: kept for name, kept in plan.kept.items() if name in graph.followers}
    members = {name: kept for name, kept in plan.kept.items() if name not in followers}
    for name, kept in followers.items():
        index = layout_index(graph.followers[name], members)
        if index is None or index.tolist() != kept:
            raise FilterpruneError(
                f"plan does not fit the model: the channels of depthwise conv '{name}' follow "
                "its input, so the plan must keep the indices its input keeps"
            )
    checked = set()  # groups checked once, from their first listed member
    for name, kept in members.items():
        group = graph.group_of(name)
        if group.blocked:
            raise FilterpruneError(f"layer '{name}' cannot be pruned: {group.blocked}")
        if plan.widths[name] != group.filters(name):
            raise FilterpruneError(
                f"plan does not fit the model: '{name}' has {group.filters(name)} filters, "
                f"the plan expects {plan.widths[name]}"
            )
        if id(group) in checked:
            continue
        checked.add(id(group))
        if group.members[0] not in members:
            raise FilterpruneError(
                f"plan does not fit the model: '{name}' and '{group.members[0]}' share their "
                "output channels, so the plan must list both")
        kept = group.kept_channels(members)
        starts = [sum(group.runs[:i]) for i in range(len(group.runs))]
        if any(not any(s <= i < s + n for i in kept)
               for s, n in zip(starts, group.runs, strict=True)):
            raise FilterpruneError(
                f"plan does not fit the model: '{name}' must keep at least one channel in each "
                f"of the {len(group.runs)} parts a split or slice cuts its channels into"
            )
        run = group.out_channels // group.chunks
        counts = torch.tensor(kept, dtype=torch.long).div(run, rounding_mode="floor")
        if len(set(counts.bincount(minlength=group.chunks).tolist())) > 1:
            raise FilterpruneError(
                f"plan does not fit the model: '{name}' must keep the same number of channels "
                f"in each of its {group.chunks} runs of {run} (grouped convs read or write them "
                "per group)"
            )
        for other in group.members:
            if plan.kept.get(other) != group.tiled(other, kept):
                raise FilterpruneError(
                    f"plan does not fit the model: '{name}' and '{other}' share their output "
                    "channels, so the plan must keep the same indices in both (in each copy "
                    "of the channels a layer repeats)"
                )


def apply_plan(model: nn.Module, plan: PruningPlan, graph: DependencyGraph) -> nn.Module:
    """Returns a pruned copy of ``model``; ``model`` itself is left unchanged.

    Args:
        model: the unpruned network.
        plan: kept filters per layer (``filterprune.engine.plan``).
        graph: the dependency graph of ``model`` (``filterprune.engine.trace``, with any
            residual policy).

    Returns:
        A new model whose pruned layers have ``len(plan.kept[name])`` output channels, with the
        parameters of the kept channels copied unchanged.

    Raises:
        FilterpruneError: the plan does not fit ``model`` (see ``check_plan``).
    """
    check_plan(plan, graph)
    copied = _SharedCopy(model)
    pruned = copied.model
    modules = dict(pruned.named_modules())
    for name, kept in plan.kept.items():
        if name not in graph.followers and rule_of(modules[name]) is not None:
            _cut(modules[name], torch.tensor(kept), "outputs", copied)
        elif name not in graph.followers:
            _prune_out(modules[name], torch.tensor(kept, dtype=torch.long))
    for name, layout in graph.followers.items():
        index = layout_index(layout, plan.kept)
        if index is not None and rule_of(modules.get(name)) is not None:
            _cut(modules[name], index, "outputs", copied)
        elif index is not None and name in modules:
            _prune_follower(modules[name], index)
        elif index is not None:
            _prune_scale(pruned.get_parameter(name), index)
    for name, layout in graph.inputs.items():
        index = layout_index(layout, plan.kept)
        if index is not None and rule_of(modules[name]) is not None:
            _cut(modules[name], index, "inputs", copied)
        elif index is not None:
            _prune_in(modules[name], index)
    for name, attribute, parts in graph.split_sizes:
        counts = [sum(s.entries for s in part) if index is None else len(index)
                  for part in parts for index in (layout_index(part, plan.kept),)]
        sizes = getattr(modules[name], attribute)
        total = sum(s.entries for part in parts for s in part)
        if isinstance(sizes, int):  # the part size, or the parts' total (FunctionRules.equal_parts)
            setattr(modules[name], attribute, sum(counts) if sizes == total else counts[0])
        else:
            setattr(modules[name], attribute, type(sizes)(counts))
    copied.own()
    return pruned


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model``, equal to ``copy.deepcopy(model)`` (the same tensors cloned, the
    same objects shared), made about twice as fast: module state is copied directly, without the
    generic pickling protocol for each of the dozen hook dicts every module holds (a deep copy
    took 25-30% of ``prune`` on small timm models). Modules with their own copying or
    pickling methods (parametrized layers) are copied by ``copy.deepcopy``."""
    copied = _SharedCopy(model)
    copied.own()
    return copied.model


_ATOMS = (type(None), bool, int, float, str)


class _SharedCopy:
    """``copy_model`` in two steps: ``model`` (the copy) first has new parameters and buffers
    holding the original data; ``apply_plan`` replaces most of them (``tensor.data = ...``,
    never in place), then ``own`` copies the others as ``copy.deepcopy`` copies them, so
    the data of each tensor is copied once instead of twice (parameters: clones; plain
    buffers: copies of their storage, shared where the originals share it)."""

    def __init__(self, model: nn.Module) -> None:
        self.memo: dict = {}
        self.shared: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id -> (copy, original)
        self.model = self.copy(model)

    def own(self, tensors: Iterable[torch.Tensor] | None = None) -> None:
        """Gives ``tensors`` of the copy (all by default) their own data where they still hold
        their original's."""
        keys = list(self.shared) if tensors is None else [id(t) for t in tensors]
        for key in keys:
            copied, original = self.shared.pop(key, (None, None))
            if copied is None or not copied.is_set_to(original):
                continue
            if type(original) is nn.Parameter:  # as nn.Parameter.__deepcopy__
                copied.data = original.data.clone(memory_format=torch.preserve_format)
            else:  # torch.Tensor.__deepcopy__, with the copies of storages made so far
                del self.memo[id(original)]
                copied.data = copy.deepcopy(original, self.memo)
                self.memo[id(original)] = copied

    def copy(self, value: object) -> object:
        cls, memo = type(value), self.memo
        if cls in _ATOMS or (cls is tuple and all(type(v) in _ATOMS for v in value)):
            return value  # what copy.deepcopy returns for them
        if id(value) in memo:
            return memo[id(value)]
        if cls in (nn.Parameter, torch.Tensor) and _shareable(value):
            memo[id(value)] = copied = nn.Parameter(value.data, value.requires_grad) \
                if cls is nn.Parameter else value.detach()
            self.shared[id(copied)] = (copied, value)
            return copied
        if isinstance(value, nn.Module) and _copied_by_state(cls):
            copied = cls.__new__(cls)
            memo[id(value)] = copied
            copied.__setstate__({key: self.copy(item)
                                 for key, item in value.__getstate__().items()})
            return copied
        if cls is set:
            memo[id(value)] = copied = {self.copy(item) for item in value}
            return copied
        if cls is dict or (cls is OrderedDict and not vars(value)):
            copied = cls()
            memo[id(value)] = copied
            for key, item in value.items():
                copied[self.copy(key)] = self.copy(item)
            return copied
        return copy.deepcopy(value, memo)


def _shareable(tensor: torch.Tensor) -> bool:
    """Whether the copy of ``tensor`` (an ``nn.Parameter`` or a ``torch.Tensor``) may hold its
    data until ``_SharedCopy.own``: a dense tensor in memory (not on the meta device, which
    holds no data) and, for a buffer, without gradient, attributes or view bits (its copy is
    ``tensor.detach()``, then given ``copy.deepcopy(tensor)`` as its data)."""
    buffer_ok = type(tensor) is nn.Parameter or (
        not tensor.requires_grad and tensor.grad is None and not vars(tensor)
        and not tensor.is_conj() and not tensor.is_neg())
    return buffer_ok and tensor.layout == torch.strided and not tensor.is_quantized \
        and tensor.device.type in ("cpu", "cuda")


def _copied_by_state(cls: type) -> bool:
    """Whether ``copy.deepcopy`` copies modules of ``cls`` as ``_SharedCopy.copy`` does: a new
    object given a copy of ``nn.Module.__getstate__`` through ``__setstate__``."""
    return cls not in copyreg.dispatch_table and cls.__getstate__ is nn.Module.__getstate__ \
        and cls.__reduce_ex__ is object.__reduce_ex__ and cls.__reduce__ is object.__reduce__ \
        and not any(hasattr(cls, name) for name in ("__deepcopy__", "__getnewargs_ex__",
                                                    "__getnewargs__"))


def zero_pruned(model: nn.Module, plan: PruningPlan, graph: DependencyGraph) -> nn.Module:
    """Zeroes in place the filters ``apply_plan`` would remove (weight rows and biases of the
    members of every pruned group), keeping the shapes: Soft Filter Pruning (He et al., IJCAI
    2018, §3.2, Alg. 1).

    Their BatchNorms and depthwise followers are left as they are, as in SFP: zeroing BatchNorm
    gamma would stop every gradient to the zeroed filters (and zeroing beta too, through
    ReLU'(0) = 0), while SFP keeps training them so that they can come back. So a zeroed channel
    still outputs its BatchNorm shift; ``apply_plan`` removes it for good.

    Args:
        model: the network, modified in place.
        plan: kept filters per layer.
        graph: the dependency graph of ``model``.

    Returns:
        ``model``.

    Raises:
        FilterpruneError: the plan does not fit ``model`` (see ``check_plan``).
    """
    check_plan(plan, graph)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, kept in plan.kept.items():
            if name in graph.followers:
                continue
            rule = rule_of(modules[name])
            tensors = dict(modules[name].named_parameters(recurse=False))
            for key, dim in rule.outputs.items() if rule else (("weight", 0), ("bias", 0)):
                param = tensors.get(key)
                if param is not None:
                    removed = torch.ones(param.shape[dim], dtype=torch.bool, device=param.device)
                    removed[kept] = False
                    param.index_fill_(dim, removed.nonzero().flatten(), 0)
    return model


def _cut(module: nn.Module, index: torch.Tensor, side: str, copied: _SharedCopy) -> None:
    """A registered layer's cut (``filterprune.engine.custom``), its tensors given their own
    data first: its ``resize`` may change them in place."""
    copied.own([*module.parameters(recurse=False), *module.buffers(recurse=False)])
    rule_of(module).cut(module, index, side)


def _select(param: torch.Tensor | None, index: torch.Tensor, dim: int) -> None:
    if param is not None:  # index_select copies: the original data is never written
        param.data = param.data.index_select(dim, index.to(param.device))
        if param.grad is not None:
            param.grad = None


def _prune_out(module: nn.Conv2d | nn.Linear, index: torch.Tensor) -> None:
    """Every own tensor with one entry per filter (weight, bias, a standardised conv's gain)."""
    filters = module.weight.shape[0]
    for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
        if tensor.ndim and tensor.shape[0] == filters:
            _select(tensor, index, 0)
    if isinstance(module, nn.Conv2d):
        module.out_channels = len(index)
    else:
        module.out_features = len(index)


def _prune_follower(module: nn.Module, index: torch.Tensor) -> None:
    """BatchNorm, depthwise conv (with k filters per input channel: ``index`` holds the k of
    each kept channel) or PReLU: every per-channel tensor along dim 0."""
    for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
        if tensor.ndim:  # not BatchNorm's num_batches_tracked
            _select(tensor, index, 0)
    n = len(index)
    if isinstance(module, nn.Conv2d):  # depthwise: k filters per input channel (k >= 1)
        k = module.out_channels // module.in_channels
        module.out_channels, module.in_channels, module.groups = n, n // k, n // k
    elif isinstance(module, nn.PReLU):
        module.num_parameters = n
    elif isinstance(module, nn.LayerNorm):
        module.normalized_shape = (n,)
    elif isinstance(module, nn.GroupNorm):
        module.num_channels = n
    else:
        module.num_features = n


def _prune_scale(param: nn.Parameter, index: torch.Tensor) -> None:
    """A parameter with one value per channel (a layer scale), along its channel dim."""
    _select(param, index, max(range(param.ndim), key=lambda d: param.shape[d]))


def _prune_in(module: nn.Conv2d | nn.Linear, index: torch.Tensor) -> None:
    module.weight.data = input_weight(module, index).detach()  # a copy
    module.weight.grad = None
    if isinstance(module, nn.Conv2d):
        module.in_channels = len(index)
    else:
        module.in_features = len(index)
