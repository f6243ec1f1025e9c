"""``filterprune export --checkpoint M --onnx OUT``: ONNX export of a (pruned) model file,
checked against PyTorch with onnxruntime."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import torch

from filterprune._io import atomic_write
from filterprune.checkpoint import load_model
from filterprune.errors import FilterpruneError

TOLERANCE = 1e-4  # largest accepted |ONNX - PyTorch| on the check batch
OPSET = 17


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "export", parents=[common], help="export a model file to ONNX",
        description="Write the model as ONNX (batch size left dynamic) and check it with "
        f"onnxruntime against PyTorch on a random batch (max abs difference <= {TOLERANCE}). "
        "Needs the 'export' extra: pip install 'filterprune[export]'.",
    )
    parser.add_argument("--checkpoint", required=True, help="model file (.safetensors)")
    parser.add_argument("--onnx", required=True, metavar="OUT", help="ONNX file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    parser.set_defaults(run=run, render=render)


def run(args: argparse.Namespace) -> dict:
    """Exports, then runs the ONNX model and PyTorch on the same batch of 2 random inputs.

    Returns:
        ``{"onnx": OUT, "input_shape": [...], "max_abs_diff": float, "opset": int}``.

    Raises:
        FilterpruneError: OUT exists (without --overwrite), onnxruntime is not installed, the
            model file cannot be read, or the outputs differ by more than the tolerance.
    """
    out = Path(args.onnx)
    if out.exists() and not args.overwrite:
        raise FilterpruneError(f"{out} exists (use --overwrite)")
    try:
        import onnxruntime
    except ImportError:
        raise FilterpruneError(
            "ONNX export needs onnx and onnxruntime: pip install 'filterprune[export]'"
        ) from None
    model, spec = load_model(args.checkpoint)
    model.eval()
    x = torch.randn((2, *spec.input_shape[1:]), generator=torch.Generator().manual_seed(0))

    def export(tmp: Path) -> None:
        with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (x,), str(tmp), dynamo=False, opset_version=OPSET,
                input_names=["input"], output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            )

    atomic_write(out, export)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        diff = (torch.from_numpy(onnx_out) - model(x)).abs().max().item()
    if not diff <= TOLERANCE:
        raise FilterpruneError(
            f"ONNX and PyTorch outputs differ by {diff:.3g} (> {TOLERANCE}) for {out}"
        )
    return {"onnx": str(out), "input_shape": list(spec.input_shape), "max_abs_diff": diff,
            "opset": OPSET}


def render(result: dict) -> str:
    return (f"wrote {result['onnx']} (opset {result['opset']}); max |ONNX - PyTorch| = "
            f"{result['max_abs_diff']:.2e}")
