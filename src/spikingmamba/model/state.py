"""Constant-size recurrent state for step-by-step decoding."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LayerState:
    conv: torch.Tensor   # (b, d_inner, conv_kernel - 1): the last inputs of the causal conv1d
    ssm: torch.Tensor    # (b, d_inner, d_state): the SSM state h


@dataclass
class MambaState:
    """One LayerState per layer; its size does not depend on how many tokens were consumed."""

    layers: list[LayerState]

    def nbytes(self) -> int:
        return sum(s.conv.numel() * s.conv.element_size() + s.ssm.numel() * s.ssm.element_size()
                   for s in self.layers)
