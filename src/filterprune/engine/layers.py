"""How channels flow through modules: convs (plain, grouped, depthwise), Linear, per-channel
norms, cross-channel norms, registered custom layers and the layers that keep the layout. The
rules the dependency builder (``filterprune.engine.dependencies``) applies to ``call_module``
nodes; see that module for the channel model.
"""

from __future__ import annotations

import fnmatch

from torch import fx, nn

from filterprune.engine import ops
from filterprune.engine.custom import LayerRule, rule_of
from filterprune.engine.nodes import cross_norm, not_conv2d

_PER_CHANNEL_NORMS = (
    nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
)


class LayerRules:
    """The builder's rules for modules, mixed into it as ``FunctionRules`` is, with the same
    union-find methods; ``member`` gives a layer's output channels their space."""

    def visit_module(self, node: fx.Node, shape: tuple | None) -> tuple | None:
        name, module = node.target, self.modules[node.target]
        source, src_shape = self.source(node)
        if any(fnmatch.fnmatchcase(name, key) for key in self.ignore):
            self.convs.setdefault(name, "it is ignored")
            for x in node.all_input_nodes:
                self.block(self.layouts.get(x, ()), f"its channels reach ignored module '{name}'")
            return self.fresh(shape, f"its channels come from ignored module '{name}'")
        rule = rule_of(module)
        if rule is not None:
            return self.visit_custom(node, rule, source, shape)
        if isinstance(module, nn.Conv2d):
            return self.visit_conv(name, module, source, shape)
        if isinstance(module, nn.modules.conv._ConvNd):  # Conv1d, Conv3d, transposed convs
            self.convs.setdefault(name, not_conv2d(name, module))
            return None
        if isinstance(module, nn.Linear) and source is not None and len(src_shape) == 2:
            if self.prune_linear:
                self.convs.setdefault(name, None)
            self.use(name, "input", source)
            return self.member(name, module.out_features)
        if isinstance(module, _PER_CHANNEL_NORMS) or (
            isinstance(module, nn.PReLU) and module.num_parameters > 1
        ):
            if source is not None:
                self.use(name, "follower", source)
            return source
        if isinstance(module, nn.GroupNorm | nn.LayerNorm):
            return None if source is None else self.cross_channel(node, source, shape, name)
        if isinstance(module, nn.LocalResponseNorm):
            return None if source is None else self.stop(source, shape, cross_norm(
                f"'{name}' ({type(module).__name__})"))
        if isinstance(module, nn.Flatten | nn.Unflatten):
            return None if source is None else self.reshaped(node, source, src_shape, shape)
        if isinstance(module, ops.PASS_MODULES):
            return source
        return None

    def visit_custom(
        self, node: fx.Node, rule: LayerRule, source: tuple | None, shape: tuple | None
    ) -> tuple | None:
        """A layer registered with ``filterprune.engine.register_layer``: its rule's flow."""
        name, what = node.target, self.describe(node)
        if rule.flow == "blocks":
            for x in node.all_input_nodes:
                self.block(self.layouts.get(x, ()), f"its channels reach {what}, registered "
                           "as blocking")
            return self.fresh(shape, f"its channels come from {what}, registered as blocking")
        if source is None or shape is None or len(shape) < 2:
            return None
        if rule.flow == "follows":
            if rule.outputs:
                self.use(name, "follower", source)
            return source
        if rule.inputs:
            self.use(name, "input", source)
        else:
            self.block(source, f"its channels reach {what}, registered with no input tensors "
                       "to cut")
        if rule.flow == "consumes":
            return self.fresh(shape, f"its channels come from {what}, registered as consuming")
        self.convs.setdefault(name, None)
        return self.member(name, shape[1])

    def visit_conv(
        self, name: str, conv: nn.Conv2d, source: tuple | None, shape: tuple | None
    ) -> tuple | None:
        if source is None:
            return None
        if conv.groups == 1:
            self.convs.setdefault(name, None)
            self.use(name, "input", source)
            return self.member(name, conv.out_channels)
        if conv.groups == conv.in_channels and conv.out_channels % conv.in_channels == 0:
            k = conv.out_channels // conv.in_channels  # filters per input channel
            self.convs.setdefault(name, "a depthwise conv: its channels follow its input's group"
                                  if k == 1 else f"a depthwise conv with {k} filters per input "
                                  "channel: they follow its input's group")
            output = source if k == 1 else \
                tuple((space, c, f * k, start) for space, c, f, start in source)
            self.use(name, "follower", output)
            return output
        per_group = conv.in_channels // conv.groups
        if any(s[1] % per_group or s[2] != 1 or not self.whole(s) for s in source):
            reason = f"its channels reach grouped conv '{name}' (groups={conv.groups}) across " \
                     "its groups' boundaries"
            self.convs.setdefault(name, reason)
            return self.stop(source, shape, reason)
        for space, channels, *_ in source:
            self.split(space, channels // per_group, f"grouped conv '{name}'")
        self.convs.setdefault(name, None)
        self.use(name, "input", source)
        output = self.member(name, conv.out_channels)
        self.split(output[0][0], conv.groups, f"grouped conv '{name}'")
        return output

    def member(self, name: str, channels: int) -> tuple:
        if name not in self.outputs:
            self.outputs[name] = self.new_space(channels, member=name)
        return ((self.outputs[name], channels, 1, 0),)
