"""Outputs of many pruned variants of a model from one forward pass, without copying the model.

A pruned group's channels reach the rest of the network only through its consumers (the convs
and Linears reading them; followers such as BatchNorm and depthwise convs work per channel, and
anything else would block the group: filterprune.engine.graph). So a model pruned by a plan
computes what the unpruned model computes up to the consumers, and from there on what the
unpruned modules compute when each consumer reads only the kept entries of its input with the
matching columns of its weight, exactly as the physically pruned consumer does
(filterprune.engine.surgery).

Hence the outputs of many plans on one batch share everything before their consumers: the
unpruned forward pass runs once, node by node; as soon as the values a plan's consumers and
their descendants read are computed, the plan's suffix (consumers onwards) runs on them. Used
for the sensitivity analysis of Li et al. 2017, §3.2 (Fig. 2b): every layer alone at every
ratio, top-1 without retraining.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from filterprune.engine.graph import DependencyGraph, input_weight, layout_index
from filterprune.engine.modes import as_tuple, eval_mode
from filterprune.engine.plan import PruningPlan
from filterprune.engine.surgery import check_plan
from filterprune.errors import FilterpruneError


@dataclass
class _Suffix:
    """What one plan changes: the consumers' kept input indices and the nodes to recompute."""

    key: str
    number: int
    gather: dict[str, torch.Tensor]
    nodes: list[fx.Node]
    reads: set[fx.Node]  # nodes of the unpruned pass the suffix reads
    ready: int  # position of the last of them


class _Runner(fx.Interpreter):
    """Runs single nodes over an environment the caller sets; the consumers named in ``gather``
    read only their kept inputs (input entries and weight columns at the given indices)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm, garbage_collect_values=False)
        self.gather: dict[str, torch.Tensor] = {}

    def call_module(self, target, args, kwargs):
        index = self.gather.get(target)
        if index is None:
            return super().call_module(target, args, kwargs)
        module = self.fetch_attr(target)
        x = args[0].index_select(1, index.to(args[0].device))
        weight = input_weight(module, index)  # per conv group for a grouped conv
        if isinstance(module, nn.Conv2d):
            return module._conv_forward(x, weight, module.bias)
        return F.linear(x, weight, module.bias)


def _symbolic_trace(model: nn.Module) -> fx.GraphModule | Exception:
    try:
        return fx.symbolic_trace(model)
    except Exception as e:  # fx raises many types
        return e


class PrunedVariants:
    """Computes, for each of many pruning plans, the output of the model that plan would prune,
    sharing the unpruned computation before each plan's consumers.

    Args:
        model: the unpruned network (not modified; run in eval mode without gradients).
        graph: its dependency graph (``filterprune.engine.trace``).
        plans: key (e.g. the analysed layer's name) -> plans; each plan must fit ``graph``
            (``filterprune.engine.surgery.check_plan``).

    Raises:
        FilterpruneError: a plan does not fit the model, or plain torch.fx cannot trace the
            model (e.g. a graph traced with ``ignore``): evaluate copies pruned with
            ``apply_plan`` instead.

    Example:
        >>> from filterprune.engine import select_filters, trace
        >>> from filterprune.models import create_model
        >>> model, x = create_model("scnnb", input_size=8).eval(), torch.randn(2, 3, 8, 8)
        >>> graph = trace(model, x)
        >>> plans = {"features.0": [select_filters(model, graph, {"features.0": 0.5})]}
        >>> [(key, i, tuple(y.shape)) for key, i, y in PrunedVariants(model, graph, plans)(x)]
        [('features.0', 0, (2, 10))]
    """

    @staticmethod
    def supports(model: nn.Module) -> bool:
        """Whether plain torch.fx traces ``model`` whole (else evaluate pruned copies)."""
        return not isinstance(_symbolic_trace(model), Exception)

    def __init__(
        self, model: nn.Module, graph: DependencyGraph, plans: Mapping[str, Sequence[PruningPlan]]
    ) -> None:
        gm = _symbolic_trace(model)
        if isinstance(gm, Exception):
            raise FilterpruneError(
                f"torch.fx cannot trace {type(model).__name__} ({str(gm).splitlines()[0]}); "
                "evaluate copies pruned with apply_plan instead"
            ) from gm
        self.model = model
        self.runner = _Runner(gm)
        self.nodes = list(gm.graph.nodes)
        self.position = {node: i for i, node in enumerate(self.nodes)}
        calls: dict[str, list[fx.Node]] = {}
        for node in self.nodes:
            if node.op == "call_module":
                calls.setdefault(node.target, []).append(node)
        self.suffixes = []
        for key, key_plans in plans.items():
            for number, plan in enumerate(key_plans):
                check_plan(plan, graph)
                gather = {}
                for name, layout in graph.inputs.items():
                    index = layout_index(layout, plan.kept)
                    if index is not None:
                        gather[name] = index
                self.suffixes.append(self._suffix(key, number, gather, calls))
        # A value of the unpruned pass is dropped once neither a later node nor a suffix reads it.
        last_read = {}
        for node in self.nodes:
            for source in node.all_input_nodes:
                last_read[source] = self.position[node]
        for suffix in self.suffixes:
            for source in suffix.reads:
                last_read[source] = max(last_read[source], suffix.ready)
        self.release: dict[int, list[fx.Node]] = {}
        for node, position in last_read.items():
            self.release.setdefault(position, []).append(node)

    def _suffix(
        self, key: str, number: int, gather: dict[str, torch.Tensor],
        calls: dict[str, list[fx.Node]],
    ) -> _Suffix:
        """The consumers' calls and every node after them in the data flow, and the output."""
        changed = {node for name in gather for node in calls.get(name, ())}
        for node in self.nodes:
            if node in changed or any(source in changed for source in node.all_input_nodes):
                changed.add(node)
        changed.add(self.nodes[-1])  # the output node
        nodes = [node for node in self.nodes if node in changed]
        reads = {source for node in nodes for source in node.all_input_nodes} - changed
        ready = max((self.position[source] for source in reads), default=0)
        return _Suffix(key, number, gather, nodes, reads, ready)

    def __call__(self, inputs: torch.Tensor | tuple) -> list[tuple[str, int, torch.Tensor]]:
        """The output of every plan's pruned model on one batch.

        Args:
            inputs: a batch accepted by ``model(*inputs)``, e.g. images (B, C, H, W).

        Returns:
            ``(key, plan number, output)`` for every plan: the key, the plan's index in
            ``plans[key]`` and the output of the model pruned by that plan on ``inputs`` (e.g.
            logits (B, classes)); in the order the suffixes become computable (forward order of
            their consumers).
        """
        waiting: dict[int, list[_Suffix]] = {}
        for suffix in self.suffixes:
            waiting.setdefault(suffix.ready, []).append(suffix)
        runner, outputs = self.runner, []
        with eval_mode(self.model), torch.inference_mode():
            values: dict[fx.Node, object] = {}
            runner.args_iter = iter(as_tuple(inputs))
            for position, node in enumerate(self.nodes[: max(waiting, default=-1) + 1]):
                runner.env, runner.gather = values, {}
                values[node] = runner.run_node(node)
                for suffix in waiting.get(position, ()):
                    computed: dict[fx.Node, object] = {}
                    runner.env, runner.gather = ChainMap(computed, values), suffix.gather
                    for changed in suffix.nodes:
                        computed[changed] = runner.run_node(changed)
                    outputs.append((suffix.key, suffix.number, computed[suffix.nodes[-1]]))
                for done in self.release.get(position, ()):
                    values.pop(done, None)
        return outputs
