"""Generic training machinery: typed configs, the loop, schedules, checkpoints, processes, metrics."""

from spikingmamba.training.config import TrainConfig, add_config_arguments, option
from spikingmamba.training.loop import NonFiniteLossError, Task, fit
from spikingmamba.training.schedule import warmup_cosine

__all__ = ["TrainConfig", "Task", "NonFiniteLossError", "fit", "option", "add_config_arguments",
           "warmup_cosine"]
