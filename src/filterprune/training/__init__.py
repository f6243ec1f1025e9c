"""Training and evaluation loops."""

from filterprune.training.loop import ComputeSettings, TrainSettings, evaluate, train

__all__ = ["ComputeSettings", "TrainSettings", "evaluate", "train"]
