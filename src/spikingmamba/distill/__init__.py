"""Single-stage distillation of a dense Mamba teacher into a spiking student."""

from spikingmamba.distill.config import DistillConfig
from spikingmamba.distill.trainer import distill

__all__ = ["DistillConfig", "distill"]
