"""Tracing a model into an fx graph: torch.fx symbolic tracing, or, where fx cannot trace it,
one eager forward pass recorded op by op. Every node carries the shape of its output."""

from __future__ import annotations

import contextlib
import fnmatch
import math
import operator
from collections import OrderedDict

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import TensorMetadata, _extract_tensor_metadata
from torch.overrides import TorchFunctionMode

from filterprune.engine.custom import rule_of
from filterprune.engine.modes import as_tuple, eval_mode
from filterprune.engine.profile import COUNTED, MacCounter, Profile, profile
from filterprune.errors import FilterpruneError


def trace_graph(
    model: nn.Module, example_inputs: torch.Tensor | tuple, ignore: tuple[str, ...], tracer: str
) -> tuple[list[fx.Graph], str | None, Profile]:
    """The fx graphs of ``model`` with output shapes in ``node.meta["tensor_meta"]``: its
    forward in eval mode and, when layers with parameters did not run there (GoogLeNet's and
    Inception-v3's auxiliary heads run in train mode only), in train mode too, so that the
    channels those layers read are found; and the model's profile, counted in the eval-mode
    pass.

    Args:
        model: the network, run without gradients; its mode flags, buffers (BatchNorm
            statistics) and the random number generator are left as they were.
        example_inputs: inputs ``model(*example_inputs)`` accepts (the train-mode pass runs
            them twice in one batch).
        ignore: names or glob patterns of modules kept as leaves (not entered).
        tracer: ``"fx"``, ``"record"`` or ``"auto"`` (fx, else record).

    Returns:
        The graphs (eval mode first), why the train-mode pass failed (None if it ran or was
        not needed), and ``filterprune.engine.profile(model, example_inputs)``, counted in
        the eval-mode pass (by hooks, and from the output shapes of the conv and Linear
        modules fx traces through), or by a forward of its own where a call could not be
        counted there.

    Raises:
        FilterpruneError: fx cannot trace the model (with ``tracer="fx"``), or the model fails
            on ``example_inputs`` in eval mode.
    """
    leaf_tracer = LeafTracer(ignore)
    counter = MacCounter(model)
    with eval_mode(model):
        graphs = [_trace(model, example_inputs, leaf_tracer, tracer, counter)]
    costs = counter.profile(as_tuple(example_inputs)[0].shape[0]) \
        if not counter.uncounted and not leaf_tracer.uncounted else profile(model, example_inputs)
    if not _missed(model, graphs[0], leaf_tracer):
        return graphs, None, costs
    buffers = [(b, b.clone()) for b in model.buffers()]
    with torch.random.fork_rng(devices=[]), eval_mode(model):
        model.train()
        doubled = tuple(torch.cat([x, x]) if isinstance(x, torch.Tensor) and x.ndim else x
                        for x in as_tuple(example_inputs))  # BatchNorm trains on > 1 value
        try:
            graphs.append(_trace(model, doubled, leaf_tracer, tracer, None))
        except FilterpruneError as e:
            return graphs, str(e), costs
        finally:
            for buffer, saved in buffers:
                buffer.copy_(saved)
    return graphs, None, costs


def _trace(
    model: nn.Module, example_inputs: torch.Tensor | tuple, leaf_tracer: LeafTracer, tracer: str,
    counter: MacCounter | None,
) -> fx.Graph:
    """One graph of ``model``; ``counter`` (if given) counts the pass that gave its shapes."""
    if tracer != "record":
        try:
            graph = leaf_tracer.trace(model)
            with counter or contextlib.nullcontext(), torch.no_grad():
                ShapeProp(model, graph, counter).run(*as_tuple(example_inputs))
            return graph
        except Exception as e:  # fx raises many types (TraceError, TypeError, ...)
            if tracer == "fx":
                first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise FilterpruneError(
                    f"torch.fx cannot trace {type(model).__name__}: {first_line}"
                ) from e
    with counter or contextlib.nullcontext():
        return Recorder(model, leaf_tracer).record(as_tuple(example_inputs))


def _missed(model: nn.Module, graph: fx.Graph, leaf_tracer: LeafTracer) -> bool:
    """Whether a leaf layer with parameters (outside ignored modules) is not in ``graph``."""
    called = {n.target for n in graph.nodes if n.op == "call_module"} | \
        {n.target.rpartition(".")[0] for n in graph.nodes if n.op == "get_attr"}
    ignored = [name for name, m in model.named_modules()
               if any(fnmatch.fnmatchcase(name, key) for key in leaf_tracer.ignore)]
    return any(
        name not in called and not any(name.startswith(f"{i}.") for i in ignored)
        and next(m.parameters(recurse=False), None) is not None
        and leaf_tracer.is_leaf_module(m, name)
        for name, m in model.named_modules()
    )


class ShapeProp(fx.Interpreter):
    """Runs an fx graph on the model it was traced from (no GraphModule built: that copies the
    module tree and compiles code) and records each node's output shape in
    ``node.meta["tensor_meta"]``, as ``torch.fx.passes.shape_prop.ShapeProp`` does; ``counter``
    (if given) counts the MACs of the conv and Linear modules whose forward fx traced through
    (``LeafTracer.call_module``; the others it counts with its hooks)."""

    def __init__(self, model: nn.Module, graph: fx.Graph, counter: MacCounter | None) -> None:
        super().__init__(model, graph=graph)
        self.counter = counter
        self.attributes = {**self.submodules,
                           **dict(model.named_parameters(remove_duplicate=False)),
                           **dict(model.named_buffers(remove_duplicate=False))}

    def fetch_attr(self, target: str) -> object:
        """The module, parameter or buffer ``target`` names, from a dict (torch.fx walks the
        dotted path with ``getattr``: a quarter of the pass on MobileOne)."""
        found = self.attributes.get(target)
        return found if found is not None else super().fetch_attr(target)

    def run_node(self, n: fx.Node) -> object:
        """As torch.fx runs a node, without the traceback metadata it sets for torch.compile
        (a context manager per node: a fifth of the pass)."""
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        result = getattr(self, n.op)(n.target, args, kwargs)
        tensors = []
        meta = fx.node.map_aggregate(
            result, lambda x: tensors.append(x) or _metadata(x)
            if isinstance(x, torch.Tensor) else x)
        if tensors:
            n.meta["tensor_meta"] = meta
        for name, source in n.meta.get(_INLINED, []) if self.counter is not None else []:
            source_meta = source.meta.get("tensor_meta") if isinstance(source, fx.Node) else None
            self.counter.add(
                name, tuple(result.shape) if isinstance(result, torch.Tensor) else None,
                math.prod(source_meta.shape) if isinstance(source_meta, TensorMetadata) else None)
        return result


class _ModuleStack(OrderedDict):
    """torch.fx's stack of the modules being traced, which it copies into each node's
    ``nn_module_stack``: copied as ``copy.copy`` copies it (an OrderedDict of the same items),
    5x faster (the generic copy took a sixth of the trace of MobileOne)."""

    def __copy__(self) -> OrderedDict:
        return OrderedDict(self)


#: Node meta key: the conv and Linear modules (name, first input) whose forward fx traced
#: through and that returned the node's output.
_INLINED = "filterprune_inlined_calls"


def _metadata(x: torch.Tensor) -> TensorMetadata:
    """Shape, dtype and strides of ``x``, as torch.fx's ShapeProp records them, without its
    memory-format queries (a third of the shape pass; the engine reads only the shape)."""
    return _extract_tensor_metadata(x, include_contiguity=False)


#: Argument types torch.fx keeps as they are.
_PLAIN = frozenset({int, float, bool, str, type(None), torch.dtype, torch.device})


class LeafTracer(fx.Tracer):
    """An fx tracer that treats ignored modules and registered layers as leaves, and finds the
    name of a parameter or buffer a forward reads in a dict (torch.fx searches every parameter
    or buffer of the model on each read: quadratic in the model's size)."""

    def __init__(self, ignore: tuple[str, ...]) -> None:
        super().__init__()
        self.module_stack = _ModuleStack()
        self.ignore = ignore
        self.tensor_names: dict[int, str] = {}
        self.uncounted: list[str] = []  # conv/Linear calls the shape pass cannot count

    def trace(self, root, concrete_args=None) -> fx.Graph:
        self.uncounted = []
        self.tensor_names = {id(t): name for name, t in root.named_buffers()}
        self.tensor_names.update({id(p): name for name, p in root.named_parameters()})
        return super().trace(root, concrete_args)

    def getattr(self, attr: str, attr_val: object, parameter_proxy_cache: dict) -> object:
        name = self.tensor_names.get(id(attr_val))
        proxied = isinstance(attr_val, nn.Parameter) or (
            self.proxy_buffer_attributes and isinstance(attr_val, torch.Tensor))
        if name is None or not proxied or self.param_shapes_constant:
            return super().getattr(attr, attr_val, parameter_proxy_cache)
        if name not in parameter_proxy_cache:
            parameter_proxy_cache[name] = self.create_proxy("get_attr", name, (), {})
        return parameter_proxy_cache[name]

    def create_arg(self, a: object) -> object:
        """As torch.fx does, the most common arguments first (a quarter of the trace went to
        its checks on each)."""
        kind = type(a)
        if kind is fx.Proxy:
            return a.node
        if kind in _PLAIN:
            return a
        if kind is tuple or kind is list:
            return kind(self.create_arg(item) for item in a)
        name = self.tensor_names.get(id(a)) if isinstance(a, torch.Tensor) else None
        return super().create_arg(a) if name is None else self.create_node("get_attr", name,
                                                                           (), {})

    def call_module(self, m: nn.Module, forward, args: tuple, kwargs: dict) -> object:
        """As torch.fx does; a conv or Linear whose forward it traces through (timm's Linear,
        Conv2dSame) is marked on its output node, for the shape pass to count its MACs where
        its hooks do not fire."""
        output = super().call_module(m, forward, args, kwargs)
        path = self.path_of_module(m) if isinstance(m, COUNTED) else None
        if path is not None and not self.is_leaf_module(m, path):
            if isinstance(output, fx.Proxy):
                source = args[0].node if args and isinstance(args[0], fx.Proxy) else None
                output.node.meta.setdefault(_INLINED, []).append((path, source))
            else:
                self.uncounted.append(path)
        return output

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return any(fnmatch.fnmatchcase(module_qualified_name, key) for key in self.ignore) or \
            rule_of(m) is not None or super().is_leaf_module(m, module_qualified_name)


# Tensor operators as torch.fx writes them (the recorder sees the Tensor dunder methods).
_DUNDERS = {
    "__add__": operator.add, "__radd__": operator.add, "__iadd__": operator.iadd,
    "__sub__": operator.sub, "__rsub__": operator.sub, "__mul__": operator.mul,
    "__rmul__": operator.mul, "__imul__": operator.imul, "__truediv__": operator.truediv,
    "__getitem__": operator.getitem,
}


class Recorder(TorchFunctionMode):
    """Records one eager forward pass as an fx graph, for models torch.fx cannot trace.

    Leaf modules (as the fx tracer defines them: torch.nn layers and ignored modules) become
    ``call_module`` nodes through module hooks; torch functions and Tensor methods called
    outside them become ``call_function`` / ``call_method`` nodes through a TorchFunctionMode,
    each with the shape of its actual output. Data-dependent control flow is recorded along
    the path the example inputs take (the autograd-graph approach of other tools sees the same
    path, but not the arguments: dims, paddings and slices that the analysis needs).
    """

    def __init__(self, model: nn.Module, tracer: LeafTracer) -> None:
        super().__init__()
        self.model, self.tracer = model, tracer
        self.names = {id(m): name for name, m in model.named_modules()}
        self.tensors = {id(t): name for name, t in (*model.named_parameters(),
                                                   *model.named_buffers())}
        self.stack: list[tuple[str, type]] = []  # the modules whose forward is running
        self.graph = fx.Graph()
        self.nodes: dict[int, fx.Node] = {}  # id(tensor) -> the node that produced it
        self.alive: list[torch.Tensor] = []  # keeps recorded tensors (and their ids) alive
        self.depth = 0  # > 0 inside a leaf module

    def record(self, inputs: tuple) -> fx.Graph:
        for i, x in enumerate(inputs):
            self.bind(x, self.graph.placeholder(f"input_{i}"))
        hooks = [nn.modules.module.register_module_forward_pre_hook(self.enter),
                 nn.modules.module.register_module_forward_hook(self.leave)]
        try:
            with self:
                output = self.model(*inputs)
        except Exception as e:
            raise FilterpruneError(
                f"cannot trace {type(self.model).__name__}: running it on the example inputs "
                f"failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
            ) from e
        finally:
            for hook in hooks:
                hook.remove()
        self.graph.output(self.args(output))
        return self.graph

    def is_leaf(self, module: nn.Module) -> bool:
        name = self.names.get(id(module))
        return name is not None and self.tracer.is_leaf_module(module, name)

    def enter(self, module: nn.Module, args: tuple) -> None:
        if id(module) in self.names:
            self.stack.append((self.names[id(module)], type(module)))
        self.depth += self.is_leaf(module)

    def leave(self, module: nn.Module, args: tuple, output: object) -> None:
        if id(module) in self.names:
            self.stack.pop()
        if not self.is_leaf(module):
            return
        self.depth -= 1
        if self.depth == 0 and isinstance(output, torch.Tensor):
            node = self.graph.call_module(self.names[id(module)], self.args(args))
            self.bind(output, node)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        output = func(*args, **kwargs)
        pieces = isinstance(output, tuple | list) and output and \
            all(isinstance(x, torch.Tensor) for x in output)
        name = getattr(func, "__name__", "")
        if self.depth == 0 and name == "__setitem__":  # in place: no output to bind
            self.scope(self.graph.call_function(operator.setitem, self.args(args)))
        elif self.depth == 0 and (isinstance(output, torch.Tensor) or pieces):
            if name in _DUNDERS and getattr(torch.Tensor, name, None) is func:
                node = self.graph.call_function(_DUNDERS[name], self.args(args))
            elif getattr(torch.Tensor, name, None) is func:
                node = self.graph.call_method(name, self.args(args), self.args(kwargs))
            else:
                node = self.graph.call_function(func, self.args(args), self.args(kwargs))
            if pieces:  # a split: one getitem node per piece, as torch.fx writes it
                node.meta["tensor_meta"] = tuple(_metadata(x) for x in output)
                self.scope(node)
                for i, x in enumerate(output):
                    self.bind(x, self.graph.call_function(operator.getitem, (node, i)))
            else:
                self.bind(output, node)
        return output

    def scope(self, node: fx.Node) -> None:
        """Records the modules running, as torch.fx does (``nn_module_stack``)."""
        node.meta["nn_module_stack"] = {name: (name, cls) for name, cls in self.stack}

    def bind(self, tensor: torch.Tensor, node: fx.Node) -> None:
        node.meta["tensor_meta"] = _metadata(tensor)
        self.scope(node)
        self.nodes[id(tensor)] = node
        self.alive.append(tensor)

    def args(self, value: object) -> object:
        """``value`` with every tensor replaced by its node (a get_attr node for a parameter or
        buffer, a constant node for another tensor no recorded call made)."""
        return fx.node.map_aggregate(value, self.node_of)

    def node_of(self, value: object) -> object:
        if not isinstance(value, torch.Tensor):
            return value
        if id(value) not in self.nodes:
            target = self.tensors.get(id(value), "constant")
            self.bind(value, self.graph.create_node("get_attr", target))
        return self.nodes[id(value)]

