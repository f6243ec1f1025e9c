"""Model files: weights in safetensors, architecture as JSON in the file's metadata.

A model is described by its zoo name, the builder's keyword arguments, the example input shape
and, for a pruned model, the pruning plan replayed on the freshly built unpruned model. A model
of the user's own (no zoo name) is described by the plan and input shape only: loading it needs
the unpruned model, on which the plan is replayed. Loading therefore builds the architecture from
data and executes no code from the file. A model from outside the zoo is named by its spec
(``timm:NAME``, ``torchvision:NAME``, ``package.module:callable``): the file only names the
builder, which must already be importable (README, "What filterprune trusts").

Example:
    >>> import tempfile, torch, filterprune
    >>> from filterprune.models import create_model
    >>> net = create_model("scnnb", in_channels=1)
    >>> result = filterprune.prune(net, torch.zeros(1, 1, 28, 28), ratio=0.5)
    >>> spec = ModelSpec("scnnb", {"in_channels": 1}, (1, 1, 28, 28), result.plan)
    >>> path = filterprune.save(result.model, tempfile.mkdtemp() + "/m.safetensors", spec=spec)
    >>> filterprune.load(path).features[0].out_channels
    16
"""

from __future__ import annotations

import copy
import json
import math
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from filterprune._io import atomic_write
from filterprune.engine import PruningPlan, apply_plan, trace
from filterprune.errors import FilterpruneError
from filterprune.models import create_model, model_arguments
from filterprune.models._external import (
    default_input_shape,
    is_external,
    pretrained_arguments,
)

FORMAT = "filterprune/1"
# The largest example input (C x H x W elements) a model file may describe: 2^27 floats = 512 MB.
MAX_INPUT_ELEMENTS = 2**27


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


@dataclass
class ModelSpec:
    """Everything needed to rebuild a zoo model, pruned or not.

    Attributes:
        name: zoo model name (``filterprune.models.list_models()``) or external spec
            (``timm:NAME``, ``torchvision:NAME``, ``package.module:callable``), or None for a
            model of the user's own with no importable builder, which ``load`` then needs.
        kwargs: builder keyword arguments (e.g. ``num_classes``, ``in_channels``).
        input_shape: example input shape (1, C, H, W).
        plan: pruning plan applied to the unpruned model, or None.
    """

    name: str | None = None
    kwargs: dict = field(default_factory=dict)
    input_shape: tuple[int, ...] = (1, 3, 32, 32)
    plan: PruningPlan | None = None

    def example_input(self) -> torch.Tensor:
        return torch.zeros(self.input_shape)

    def build(self, model: nn.Module | None = None) -> nn.Module:
        """Builds the (pruned) architecture: the plan replayed on the zoo model with freshly
        initialised weights, or on a copy of ``model`` (the unpruned model; not modified).

        Raises:
            FilterpruneError: no zoo name and no ``model``, or the plan does not fit the model.
        """
        if model is not None:
            model = copy.deepcopy(model)
        elif self.name is None:
            raise FilterpruneError(
                "the model file describes a model of your own: pass the unpruned model, "
                "filterprune.load(path, model=...)"
            )
        else:
            model = create_model(self.name, **self.kwargs)
        if self.plan is not None:
            model = apply_plan(model, self.plan, trace(model, self.example_input()))
        return model

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "name": self.name,
            "kwargs": self.kwargs,
            "input_shape": list(self.input_shape),
            "plan": None if self.plan is None else self.plan.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> ModelSpec:
        """The description ``to_dict`` wrote, with the types of its fields checked.

        Raises:
            FilterpruneError: another format, a name that is not a string, kwargs that are not a
                mapping from names to JSON scalars or lists, an input shape that is not
                (1, C, H, W) of positive integers with C x H x W <= ``MAX_INPUT_ELEMENTS``, or a
                malformed plan.
        """
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise FilterpruneError(f"not a {FORMAT} model file (format: {found!r})")
        name, kwargs, shape, plan = (data.get(k) for k in ("name", "kwargs", "input_shape", "plan"))
        if name is not None and not isinstance(name, str):
            raise FilterpruneError(f"metadata 'name' must be a string, got {name!r}")
        kwargs = {} if kwargs is None else kwargs
        if not isinstance(kwargs, dict) or not all(
            isinstance(k, str) and isinstance(v, (bool, int, float, str, list, type(None)))
            for k, v in kwargs.items()
        ):
            raise FilterpruneError(f"metadata 'kwargs' must map names to values, got {kwargs!r}")
        if not (isinstance(shape, list) and len(shape) == 4 and shape[0] == 1 and all(
                isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)
                and math.prod(shape) <= MAX_INPUT_ELEMENTS):
            raise FilterpruneError(
                f"metadata 'input_shape' must be [1, C, H, W] of positive integers with C*H*W <= "
                f"{MAX_INPUT_ELEMENTS}, got {shape!r}"
            )
        try:
            plan = None if plan is None else PruningPlan.from_dict(plan)
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise FilterpruneError(f"metadata 'plan' is malformed: {_first_line(e)}") from None
        return cls(name=name, kwargs=dict(kwargs), input_shape=tuple(shape), plan=plan)

    def check_shapes(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        """Checks that the architecture this spec describes has exactly the tensors ``shapes``
        (name -> shape, e.g. read from a file's header), building it on the meta device, which
        allocates no memory: metadata such as ``"num_classes": 800000`` is refused before
        anything is built for real.

        Raises:
            FilterpruneError: the spec does not build (an argument of the wrong type or value),
                or a tensor is missing, unexpected, or of another shape.
        """
        try:
            with torch.device("meta"):
                skeleton = create_model(self.name, **self.kwargs)
            if self.plan is not None:
                example = torch.zeros(self.input_shape, device="meta")
                skeleton = apply_plan(skeleton, self.plan, trace(skeleton, example))
        except FilterpruneError:
            raise
        except (TypeError, ValueError, RuntimeError, IndexError, KeyError) as e:
            raise FilterpruneError(
                f"metadata does not build model {self.name!r} with {self.kwargs}: {_first_line(e)}"
            ) from None
        expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
        for key in sorted(set(expected) | set(shapes)):
            if expected.get(key) != shapes.get(key):
                raise FilterpruneError(
                    f"the weights do not fit the architecture its metadata describes "
                    f"({self.name} with {self.kwargs}): {key} is {shapes.get(key, 'missing')} in "
                    f"the file, {expected.get(key, 'absent')} in the architecture"
                )


def builder_arguments(
    name: str, kwargs: Mapping[str, object] | None, input_shape: tuple[int, int, int] | None,
    num_classes: int | None,
) -> dict[str, object]:
    """``kwargs`` with what the data determines filled in where the builder of ``name`` takes
    it: ``num_classes``, the input channels (``in_channels``, timm's ``in_chans``) and
    ``input_size`` (H) of ``input_shape`` (C, H, W); ``kwargs`` win.

    Raises:
        FilterpruneError: ``name`` does not resolve (``model_arguments``).
    """
    accepted = model_arguments(name)
    derived: dict[str, object] = {"num_classes": num_classes}
    if input_shape is not None:
        derived |= {"in_channels": input_shape[0], "in_chans": input_shape[0],
                    "input_size": input_shape[1]}
    return {k: v for k, v in derived.items() if k in accepted and v is not None} | dict(
        kwargs or {})


def build_model(
    name: str, kwargs: Mapping[str, object] | None = None, *, weights: str | Path | None = None,
    input_shape: tuple[int, int, int] | None = None, num_classes: int | None = None,
    pretrained: bool = False,
) -> tuple[nn.Module, ModelSpec]:
    """Builds the model a name or spec describes, with what a dataset determines filled in.

    Args:
        name: zoo name, ``timm:NAME``, ``torchvision:NAME`` or ``package.module:callable``.
        kwargs: builder keyword arguments; they win over the filled-in values.
        weights: a weights file loaded into the built model (``load_weights``).
        input_shape: ``(C, H, W)`` of one input image; fills ``in_channels`` / ``in_chans`` and
            ``input_size`` where the builder takes them. Default: the shape the model declares
            (timm's ``pretrained_cfg``; 3 x 224 x 224 for torchvision), else the zoo
            model's ``in_channels`` x ``input_size``
            squared (3 x 32 x 32 unless given).
        num_classes: fills ``num_classes`` where the builder takes it.
        pretrained: start from timm's or torchvision's pretrained weights, downloaded from
            their hub (``pretrained_arguments``); not recorded in the spec, so a model file
            saved from it rebuilds offline (its own weights replace the downloaded ones).

    Returns:
        The model and its ``ModelSpec`` (input shape ``(1, C, H, W)``; kwargs as passed to the
        builder, less the pretrained switch), ready for ``save_model``.

    Raises:
        FilterpruneError: the name does not resolve, the builder refuses its arguments, the
            weights do not fit, no input shape is given for a model that declares none, or
            ``pretrained`` for a spec without a hub or with its hub unreachable (said so when
            the download fails with an ``OSError``).
    """
    filled = builder_arguments(name, kwargs, input_shape, num_classes)
    if pretrained:
        hub = pretrained_arguments(name)
        try:
            model = create_model(name, **filled, **hub)
        except FilterpruneError as e:
            if not isinstance(e.__cause__, OSError):  # e.g. torchvision's 1000 classes only
                raise
            raise FilterpruneError(f"{e} (pretrained weights need their hub to be reachable; "
                                   "offline, give a downloaded copy with --weights)") from e
    else:
        model = create_model(name, **filled)
    if weights is not None:
        load_weights(model, weights)
    if input_shape is not None:
        shape = (1, *input_shape)
    elif (declared := default_input_shape(name, model)) is not None:
        shape = (1, int(filled.get("in_chans", declared[1])), *declared[2:])
    elif not is_external(name):
        size = int(filled.get("input_size", 32))
        shape = (1, int(filled.get("in_channels", 3)), size, size)
    else:
        raise FilterpruneError(f"model {name!r} declares no input shape: give it (--input-shape "
                               "C,H,W)")
    return model, ModelSpec(name, filled, tuple(shape))


def save_model(path: str | Path, model: nn.Module, spec: ModelSpec) -> Path:
    """Writes ``model``'s weights and ``spec`` to ``path`` (.safetensors), atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"filterprune": json.dumps(spec.to_dict())}
    return atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=metadata))


def load_model(path: str | Path, model: nn.Module | None = None) -> tuple[nn.Module, ModelSpec]:
    """Rebuilds the model saved by ``save_model`` and loads its weights.

    Args:
        path: the .safetensors file.
        model: the unpruned model the plan is replayed on (required when the file has no zoo
            name; else it replaces the zoo model); not modified.

    Returns:
        The model with the saved weights, and its description.

    Before anything is built, the metadata's types are checked and a zoo architecture is
    compared, tensor by tensor, with the shapes in the file's header (``ModelSpec.check_shapes``),
    so metadata that does not match the weights costs no memory.

    Raises:
        FilterpruneError: the file is missing, not a safetensors file, or not one of ours, or its
            metadata is malformed, or its weights do not fit the architecture it describes, or
            it needs ``model``.
    """
    path = Path(path)
    if path.is_dir():
        raise FilterpruneError(f"model file {path} is a directory")
    if not path.is_file():
        raise FilterpruneError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        spec = ModelSpec.from_dict(json.loads(metadata["filterprune"]))
        if model is None and spec.name is not None:
            spec.check_shapes(shapes)
        state = load_file(str(path))
    except FilterpruneError as e:
        raise FilterpruneError(f"model file {path}: {e}") from None
    except (SafetensorError, KeyError, json.JSONDecodeError, OSError) as e:
        raise FilterpruneError(f"cannot read model file {path}: {_first_line(e)}") from e
    model = spec.build(model)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise FilterpruneError(f"weights in {path} do not fit its architecture") from e
    return model, spec


def save(model: nn.Module, path: str | Path, *, spec: ModelSpec | None = None) -> Path:
    """Saves ``model``: weights in safetensors, architecture as JSON in the file's metadata.

    Args:
        model: the (pruned) network.
        path: the .safetensors file to write (atomically).
        spec: how to rebuild the architecture: a zoo name and kwargs, the input shape and the
            plan that pruned it (``ModelSpec("resnet56", {...}, (1, 3, 32, 32), result.plan)``),
            or, for a model of your own, ``ModelSpec(input_shape=..., plan=result.plan)``.
            None: an unpruned model of your own.

    Returns:
        ``path``.
    """
    return save_model(path, model, spec or ModelSpec())


def load(path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """Loads a model written by ``save``, executing no code from the file.

    Args:
        path: the .safetensors file.
        model: for a file without a zoo name, the unpruned model of your own (not modified):
            the plan is replayed on a copy of it, then the weights are loaded.

    Returns:
        The model with the saved weights and buffers: its outputs are bit-identical to the
        saved model's (in the same mode).

    Raises:
        FilterpruneError: see ``load_model``.
    """
    return load_model(path, model)[0]


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Reads the weights of a .safetensors file or of a PyTorch ``.pt`` / ``.pth`` state dict.

    ``.pt`` files are read with ``torch.load(weights_only=True)``, which unpickles tensors and
    containers only, never code.

    Raises:
        FilterpruneError: a missing file, another suffix, or a file that is not a flat mapping
            from names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FilterpruneError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        elif path.suffix in (".pt", ".pth"):
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise FilterpruneError(f"cannot read {path}: expected .safetensors, .pt or .pth")
    except (SafetensorError, pickle.UnpicklingError, RuntimeError, OSError, EOFError) as e:
        raise FilterpruneError(f"cannot read weights file {path}: {_first_line(e)}") from e
    state = _unwrap(state)
    if state is None:
        raise FilterpruneError(f"{path} is not a state dict (a mapping from names to tensors)")
    return state


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _unwrap(obj: object) -> dict[str, torch.Tensor] | None:
    """The state dict in ``obj``: ``obj`` itself, or the one training scripts nest under
    ``state_dict``, ``model`` or ``model_state_dict``; the ``module.`` prefix that
    DistributedDataParallel adds to every name is removed."""
    if isinstance(obj, Mapping) and not _is_state_dict(obj):
        obj = next((obj[k] for k in ("state_dict", "model_state_dict", "model")
                    if _is_state_dict(obj.get(k))), None)
    if not _is_state_dict(obj):
        return None
    if all(k.startswith("module.") for k in obj):
        return {k.removeprefix("module."): v for k, v in obj.items()}
    return dict(obj)


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Loads a weights file (see :func:`load_state_dict`) into ``model``, in place.

    Every tensor must fit: the same names and shapes as ``model.state_dict()``.

    Returns:
        ``model``.

    Raises:
        FilterpruneError: the file is unreadable, or does not fit; the message names the first
            missing, unexpected or mis-shaped tensor.
    """
    state, expected = load_state_dict(path), model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if misshaped:
        k = misshaped[0]
        raise FilterpruneError(
            f"weights in {path} do not fit the model: {k!r} is {tuple(state[k].shape)} in the "
            f"file, {tuple(expected[k].shape)} in the model"
        )
    if missing or unexpected:
        what = f"{missing[0]!r} is missing" if missing else f"{unexpected[0]!r} is not in the model"
        raise FilterpruneError(
            f"weights in {path} do not fit the model: {what} "
            f"({len(missing)} missing, {len(unexpected)} unexpected)"
        )
    model.load_state_dict(state)
    return model
