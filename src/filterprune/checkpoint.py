"""Model files: weights in safetensors, architecture as JSON in the file's metadata.

A model is described by its zoo name, the builder's keyword arguments, the example input shape
and, for a pruned model, the pruning plan replayed on the freshly built unpruned model. Loading
therefore builds the architecture from data and executes no code from the file.
"""

from __future__ import annotations

import json
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
        name: zoo model name (``filterprune.models.list_models()``).
        kwargs: builder keyword arguments (e.g. ``num_classes``, ``in_channels``).
        input_shape: example input shape (1, C, H, W).
        plan: pruning plan applied to the unpruned model, or None.
    """

    name: str
    kwargs: dict = field(default_factory=dict)
    input_shape: tuple[int, ...] = (1, 3, 32, 32)
    plan: PruningPlan | None = None

    def example_input(self) -> torch.Tensor:
        return torch.zeros(self.input_shape)

    def build(self) -> nn.Module:
        """Builds the (pruned) architecture with freshly initialised weights."""
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
            name=data["name"],
            kwargs=dict(data.get("kwargs", {})),
            input_shape=tuple(data["input_shape"]),
            plan=None if plan is None else PruningPlan.from_dict(plan),
        )


def save_model(path: str | Path, model: nn.Module, spec: ModelSpec) -> Path:
    """Writes ``model``'s weights and ``spec`` to ``path`` (.safetensors), atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"filterprune": json.dumps(spec.to_dict())}
    return atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=metadata))


def load_model(path: str | Path) -> tuple[nn.Module, ModelSpec]:
    """Rebuilds the model saved by ``save_model`` and loads its weights.

    Raises:
        FilterpruneError: the file is missing, not a safetensors file, or not one of ours, or its
            weights do not fit the architecture it describes.
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
    model = spec.build()
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise FilterpruneError(f"weights in {path} do not fit its architecture") from e
    return model, spec
