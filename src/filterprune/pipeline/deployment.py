"""The deployment stage: every model of a run measured side by side (filterprune.deploy).

The baseline and every pruned model are loaded from their model files, run once to warm up, and
timed in interleaved rounds (round 1: every model, then round 2, ..., each round starting one
model further), so slow drifts of a shared machine and the position in a round touch them
alike; each model keeps, per batch size, its fastest round (``filterprune.deploy.fastest_of``).
Each pruned model is also timed against the same network built directly at its widths
(``filterprune.deploy.rebuilt``): the ratio of their latencies should be 1.00 (no wrappers,
masks or index operations left behind by surgery).
"""

from __future__ import annotations

from pathlib import Path

import torch

from filterprune import distributed
from filterprune.checkpoint import load_model
from filterprune.deploy import fastest_of, file_size_mb, measure, rebuilt, speedups
from filterprune.pipeline.session import Log, Session, Stages


def deploy_stage(
    session: Session, pruned: list[str], stages: Stages, out_dir: Path, log: Log
) -> dict | None:
    """Measures the baseline and the models of the stages ``pruned`` (stage ``deploy``), or None
    when ``deploy.enabled`` is false (and on ranks other than 0 under torchrun).

    Returns:
        ``{"device", "threads", "batch_sizes", "rounds", "models": {stage: {"size_mb", "metrics":
        {batch: {latency_ms, iqr_ms, images_per_s, peak_memory_mb}}, "same_widths":
        {batch: latency / latency of the directly built model}}}}``.
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
    direct = {name: rebuilt(model) for name, model in models.items()}
    shape = session.spec.input_shape

    def run(model: torch.nn.Module) -> dict:
        return measure(model, shape, cfg.batch_sizes, session.device, cfg.min_run_time_s)

    for model in [*models.values(), *direct.values()]:  # warm-up: first calls are slow
        measure(model, shape, cfg.batch_sizes, session.device, min_run_time_s=1e-3)
    rounds = []
    for k in range(cfg.rounds):  # round k starts at the k-th model: no model is always first
        order = names[k % len(names):] + names[:k % len(names)]
        rounds.append({name: (run(models[name]), run(direct[name])) for name in order})
    measured = {}
    for name in names:
        metrics = fastest_of([r[name][0] for r in rounds])
        same = fastest_of([r[name][1] for r in rounds])
        measured[name] = {
            "size_mb": file_size_mb(out_dir / f"{name}.safetensors"),
            "metrics": metrics,
            "same_widths": speedups(same, metrics),
        }
        latencies = ", ".join(f"batch {b}: {m['latency_ms']:.3f} ms" for b, m in metrics.items())
        log(f"deploy {name}: {latencies}")
    return {"device": str(session.device), "threads": torch.get_num_threads(),
            "batch_sizes": list(cfg.batch_sizes), "rounds": cfg.rounds, "models": measured}
