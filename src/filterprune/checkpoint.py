"""Model files: weights in safetensors, architecture as JSON in the file's metadata.

A model is described by its zoo name, the builder's keyword arguments, the example input shape
and, for a pruned model, the pruning plan replayed on the freshly built unpruned model. A model
of the user's own (no zoo name) is described by the plan and input shape only: loading it needs
the unpruned model, on which the plan is replayed. Loading therefore builds the architecture from
data and executes no code from the file (style.md rule 7).

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
from filterprune.models import create_model

FORMAT = "filterprune/1"


@dataclass
class ModelSpec:
    """Everything needed to rebuild a zoo model, pruned or not.

    Attributes:
        name: zoo model name (``filterprune.models.list_models()``), or None for a model of the
            user's own, which ``load`` then needs.
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
        if data.get("format") != FORMAT:
            raise FilterpruneError(f"not a {FORMAT} model file (format: {data.get('format')!r})")
        plan = data.get("plan")
        return cls(
            name=data.get("name"),
            kwargs=dict(data.get("kwargs", {})),
            input_shape=tuple(data["input_shape"]),
            plan=None if plan is None else PruningPlan.from_dict(plan),
        )


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

    Raises:
        FilterpruneError: the file is missing, not a safetensors file, or not one of ours, or its
            weights do not fit the architecture it describes, or it needs ``model``.
    """
    path = Path(path)
    if not path.is_file():
        raise FilterpruneError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        spec = ModelSpec.from_dict(json.loads(metadata["filterprune"]))
        state = load_file(str(path))
    except (SafetensorError, KeyError, json.JSONDecodeError, OSError) as e:
        raise FilterpruneError(f"cannot read model file {path}: {e!r}") from e
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
        first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FilterpruneError(f"cannot read weights file {path}: {first_line}") from e
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
