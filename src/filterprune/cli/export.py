"""``filterprune export --checkpoint M --onnx OUT``: ONNX export of a (pruned) model file,
checked against PyTorch with onnxruntime."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from filterprune.checkpoint import load_model
from filterprune.errors import FilterpruneError
from filterprune.onnx_export import OPSET, TOLERANCE, export_onnx


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "export", parents=[common], help="export a model file to ONNX",
        description="Write the model as ONNX (batch size left dynamic) and check it with "
        f"onnxruntime against PyTorch on a random batch (max abs difference <= {TOLERANCE} x "
        "max(1, max |output|)). "
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
    model, spec = load_model(args.checkpoint)
    x = torch.randn((2, *spec.input_shape[1:]), generator=torch.Generator().manual_seed(0))
    diff = export_onnx(model, x, out)
    return {"onnx": str(out), "input_shape": list(spec.input_shape), "max_abs_diff": diff,
            "opset": OPSET}


def render(result: dict) -> str:
    return (f"wrote {result['onnx']} (opset {result['opset']}); max |ONNX - PyTorch| = "
            f"{result['max_abs_diff']:.2e}")
