"""Training: the loop, its options, schedules and checkpoints (docs/training.md)."""

from dualprune.train.config import TrainConfig
from dualprune.train.loop import evaluate, fit, flush_denormals
from dualprune.train.schedules import SCHEDULES, make_schedule

__all__ = ["SCHEDULES", "TrainConfig", "evaluate", "fit", "flush_denormals", "make_schedule"]
