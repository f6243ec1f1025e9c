"""ONNX export of a (pruned) model, checked against PyTorch with onnxruntime."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from filterprune._io import atomic_write
from filterprune.errors import FilterpruneError

TOLERANCE = 1e-4  # largest accepted |ONNX - PyTorch|, relative to max(1, max |PyTorch output|)
OPSET = 17


def export_onnx(model: nn.Module, example_input: torch.Tensor, path: str | Path) -> float:
    """Writes ``model`` as ONNX (batch size dynamic) and checks it with onnxruntime.

    Args:
        model: the network (put in eval mode).
        example_input: one input (B, C, H, W); the check runs on it.
        path: the .onnx file, written atomically.

    Returns:
        The largest absolute difference between the ONNX and PyTorch outputs on
        ``example_input``.

    Raises:
        FilterpruneError: onnx/onnxruntime are not installed, or the outputs differ by more than
            ``TOLERANCE`` times max(1, the largest absolute PyTorch output) (float rounding grows
            with the size of the outputs).
    """
    try:
        import onnxruntime
    except ImportError:
        raise FilterpruneError(
            "ONNX export needs onnx and onnxruntime: pip install 'filterprune[export]'"
        ) from None
    model.eval()

    def export(tmp: Path) -> None:
        with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (example_input,), str(tmp), dynamo=False, opset_version=OPSET,
                input_names=["input"], output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            )

    atomic_write(path, export)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {"input": example_input.numpy()})
    with torch.no_grad():
        reference = model(example_input)
    diff = (torch.from_numpy(onnx_out) - reference).abs().max().item()
    allowed = TOLERANCE * max(1.0, reference.abs().max().item())
    if not diff <= allowed:
        raise FilterpruneError(
            f"ONNX and PyTorch outputs differ by {diff:.3g} (> {allowed:.3g}) for {path}"
        )
    return diff
