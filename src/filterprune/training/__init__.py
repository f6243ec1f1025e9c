"""Training and evaluation loops."""

from filterprune.training.loop import TrainSettings, evaluate, train

__all__ = ["TrainSettings", "evaluate", "train"]
