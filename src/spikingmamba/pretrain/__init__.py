"""Pretraining a dense Mamba teacher from scratch (the offline default teacher)."""

from spikingmamba.pretrain.config import PretrainConfig
from spikingmamba.pretrain.trainer import pretrain

__all__ = ["PretrainConfig", "pretrain"]
