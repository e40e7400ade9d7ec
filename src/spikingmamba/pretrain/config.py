"""Configuration of `spikingmamba pretrain`: a dense Mamba LM trained from scratch."""

from __future__ import annotations

from dataclasses import dataclass

from spikingmamba.errors import ConfigError
from spikingmamba.training.config import CorpusConfig, TrainConfig, option


@dataclass
class PretrainConfig(CorpusConfig, TrainConfig):
    """Model shape and tokenizer, composed with the loop's `TrainConfig` and the training text."""

    tokenizer: str | None = option(None, "tokenizer folder (or \"gpt-neox\"); default: train a byte-level BPE "
                                   "of vocab_size tokens on the train split")
    vocab_size: int = option(4096, "size of the BPE trained when no tokenizer is given", gt=256)
    hidden_size: int = option(256, "d_model", ge=1)
    num_layers: int = option(6, "Mamba blocks", ge=1)
    state_size: int = option(16, "N, the SSM state size per channel", ge=1)
    expand: int = option(2, "d_inner = expand x d_model", ge=1)
    conv_kernel: int = option(4, "width of the causal depthwise convolution", ge=1)

    lr: float = option(2e-3, "peak learning rate (AdamW)", gt=0)

    def check(self) -> None:
        super().check()
        if self.hidden_size % 8:
            raise ConfigError(f"hidden_size must be a multiple of 8, got {self.hidden_size}")
