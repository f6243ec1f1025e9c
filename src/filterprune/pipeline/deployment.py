"""The deployment stage: every model of a run measured side by side (filterprune.deploy).

The baseline and every pruned model are loaded from their model files and timed in interleaved
rounds (``filterprune.deploy.measure``: every model once per round, the order rotated, until each
model's spread is under ``deploy.max_spread`` or ``deploy.budget_s`` is spent per batch size).
Each pruned model is timed next to the same network built directly at its widths
(``filterprune.deploy.rebuilt``): the ratio of their latencies should be 1.00 (no wrappers,
masks or index operations left behind by surgery). Speed-ups and that ratio come from the
rounds' paired times, so they hold when the machine's load drifts; every latency and ratio says
whether it is reliable, and the stage logs one line when the machine was too busy to measure.
"""

from __future__ import annotations

from pathlib import Path

import torch

from filterprune import distributed
from filterprune.checkpoint import load_model
from filterprune.deploy import file_size_mb, measure, rebuilt
from filterprune.pipeline.session import Log, Session, Stages


def deploy_stage(
    session: Session, pruned: list[str], stages: Stages, out_dir: Path, log: Log
) -> dict | None:
    """Measures the baseline and the models of the stages ``pruned`` (stage ``deploy``), or None
    when ``deploy.enabled`` is false (and on ranks other than 0 under torchrun).

    Returns:
        ``{"device", "threads", "batch_sizes", "rounds"`` (the least rounds), ``"max_spread"``,
        ``"budget_s"`` (per batch size: ``deploy`` settings), ``"reliable"``
        (every latency's spread under ``deploy.max_spread``), ``"models": {stage: {"size_mb",
        "metrics": {batch: Comparison.latency entry}, "speedup": {batch: Comparison.ratio entry
        of the baseline's latency over this model's}, "same_widths": {batch: latency / latency
        of the directly built model (median of the paired rounds)}, "same_widths_interval":
        {batch: Comparison.ratio entry of that}}}}`` (``filterprune.deploy.Comparison``).
    """
    cfg = session.config.deploy
    if not cfg.enabled:
        return None
    names = ["baseline", *pruned]
    # under torchrun, rank 0 alone measures (ranks measuring at once would slow each other)
    return stages.run("deploy", lambda: distributed.on_main(
        lambda: _measure_all(session, names, out_dir, log)))


def _measure_all(session: Session, names: list[str], out_dir: Path, log: Log) -> dict:
    cfg = session.config.deploy
    models = {name: load_model(out_dir / f"{name}.safetensors")[0] for name in names}
    models |= {_direct(name): rebuilt(models[name]) for name in names}
    measured = measure(models, session.spec.input_shape, cfg.batch_sizes, session.device,
                       groups=[[name, _direct(name)] for name in names], budget_s=cfg.budget_s,
                       max_spread=cfg.max_spread, min_rounds=cfg.rounds,
                       min_time_s=cfg.min_run_time_s)
    results = {}
    for name in names:
        same = {b: c.ratio(name, _direct(name)) for b, c in measured.items()}
        results[name] = {
            "size_mb": file_size_mb(out_dir / f"{name}.safetensors"),
            "metrics": {b: c.latency(name) for b, c in measured.items()},
            "speedup": {b: c.ratio("baseline", name) for b, c in measured.items()},
            "same_widths": {b: ratio["ratio"] for b, ratio in same.items()},
            "same_widths_interval": same,
        }
        latencies = ", ".join(f"batch {b}: {m['latency_ms']:.3f} ms"
                              + ("" if m["reliable"] else " (unreliable)")
                              for b, m in results[name]["metrics"].items())
        log(f"deploy {name}: {latencies}")
    busy = [f"batch {b}: {c.rounds} rounds in {c.elapsed_s:.0f} s"
            for b, c in measured.items() if not c.reliable]
    if busy:
        log(f"deploy: the machine was too busy to measure latency reliably (spread over "
            f"{cfg.max_spread:.0%} of the median; {'; '.join(busy)}); compare the paired "
            "ratios (speedup, same_widths), not the times")
    return {"device": str(session.device), "threads": torch.get_num_threads(),
            "batch_sizes": list(cfg.batch_sizes), "rounds": cfg.rounds,
            "max_spread": cfg.max_spread, "budget_s": cfg.budget_s,
            "reliable": not busy, "models": results}


def _direct(name: str) -> str:
    return f"{name} (built directly)"
