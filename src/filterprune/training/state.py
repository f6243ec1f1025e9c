"""Training state written after every epoch, so an interrupted stage resumes where it stopped.

One safetensors file holds the tensors (model weights, optimizer buffers, RNG states) and, in its
metadata, JSON for the rest (epoch, history, optimizer hyperparameters). Nothing is pickled, so
reading a state file runs no code. Files are written atomically (temporary file, then rename).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from filterprune._io import atomic_write
from filterprune.errors import FilterpruneError

FORMAT = "filterprune-training-state/1"


def save_training_state(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    history: list[dict],
    rng: torch.Generator | None,
) -> Path:
    """Writes the state after ``epoch`` (1-based count of finished epochs) to ``path``.

    Args:
        path: the state file (.safetensors).
        model: the network being trained.
        optimizer: its optimizer (momentum buffers and hyperparameters are saved).
        epoch: finished epochs.
        history: per-epoch records so far.
        rng: the generator that orders and augments the batches, if any.
    """
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    optim = optimizer.state_dict()
    for index, slots in optim["state"].items():
        for key, value in slots.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    if rng is not None:
        tensors["rng.batches"] = rng.get_state()
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    meta = {"format": FORMAT, "epoch": epoch, "history": history,
            "param_groups": optim["param_groups"]}
    metadata = {"filterprune": json.dumps(meta)}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_training_state(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    rng: torch.Generator | None,
) -> tuple[int, list[dict]]:
    """Restores model, optimizer and RNG states from ``path``.

    Returns:
        (finished epochs, history).

    Raises:
        FilterpruneError: the file is unreadable, not a training state, or does not fit the model.
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["filterprune"])
        tensors = load_file(str(path))
    except (SafetensorError, KeyError, json.JSONDecodeError, OSError) as e:
        raise FilterpruneError(f"cannot read training state {path}: {e!r}") from e
    if meta.get("format") != FORMAT:
        raise FilterpruneError(f"{path} is not a training state ({meta.get('format')!r})")
    slots: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            slots.setdefault(int(index), {})[name] = value
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        optimizer.load_state_dict({"state": slots, "param_groups": meta["param_groups"]})
    except (RuntimeError, ValueError) as e:
        raise FilterpruneError(f"training state {path} does not fit the model: {e}") from e
    torch.set_rng_state(tensors["rng.torch"])
    if rng is not None and "rng.batches" in tensors:
        rng.set_state(tensors["rng.batches"])
    if torch.cuda.is_available():
        keys = sorted((k for k in tensors if k.startswith("rng.cuda.")),
                      key=lambda k: int(k.rsplit(".", 1)[1]))
        states = [tensors[k] for k in keys]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    return int(meta["epoch"]), list(meta["history"])
