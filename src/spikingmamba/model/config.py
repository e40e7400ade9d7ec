"""Configuration of the (spiking) Mamba-1 language model; field names follow transformers' MambaConfig."""

from __future__ import annotations

import math

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from spikingmamba.errors import ConfigError
from spikingmamba.neurons.config import SpikingConfig
from spikingmamba.ops.selective_scan import BACKENDS


@strict
class SpikingMambaConfig(PreTrainedConfig):
    """Mamba-1 shape plus `spiking` (None for the dense teacher, else a SpikingConfig dict)."""

    model_type = "spikingmamba"

    vocab_size: int = 50280
    hidden_size: int = 768
    state_size: int = 16
    num_hidden_layers: int = 24
    layer_norm_epsilon: float = 1e-5
    expand: int = 2
    conv_kernel: int = 4
    use_bias: bool = False
    use_conv_bias: bool = True
    time_step_rank: str | int = "auto"
    time_step_min: float = 0.001
    time_step_max: float = 0.1
    time_step_floor: float = 1e-4
    initializer_range: float = 0.02
    residual_in_fp32: bool = True
    tie_word_embeddings: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 0
    eos_token_id: int | None = 0
    scan_backend: str = "auto"
    spiking: dict | None = None

    def __post_init__(self, **kwargs):
        if self.time_step_rank == "auto":
            self.time_step_rank = math.ceil(self.hidden_size / 16)
        for name in ("vocab_size", "hidden_size", "state_size", "num_hidden_layers", "expand",
                     "conv_kernel", "time_step_rank"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"config.{name} must be a positive integer, got {value!r}")
        if self.scan_backend not in BACKENDS:
            raise ConfigError(f"config.scan_backend must be one of {BACKENDS}, got {self.scan_backend!r}")
        if self.spiking is not None:
            self.spiking = SpikingConfig.from_dict(dict(self.spiking)).to_dict()
        super().__post_init__(**kwargs)

    @property
    def intermediate_size(self) -> int:
        return self.expand * self.hidden_size

    @property
    def layer_types(self) -> list[str]:
        """Every layer is recurrent: transformers' DynamicCache gives each a conv + recurrent state slot."""
        return ["linear_attention"] * self.num_hidden_layers

    @property
    def spiking_config(self) -> SpikingConfig | None:
        return None if self.spiking is None else SpikingConfig.from_dict(self.spiking)
