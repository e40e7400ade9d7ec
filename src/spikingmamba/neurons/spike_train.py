"""Binary spike trains over D micro-timesteps from integer activations, and back.

An integer activation s in [-D, D] is emitted by an integrate-and-fire neuron without leak that
receives |s| (in units of the threshold Vth = 1) at the first micro-step and nothing after:

    v[0] = |s|;   o[i] = H(v[i] - Vth);   v[i+1] = v[i] - Vth * o[i]      for i = 0 .. D-1

so it fires on the first |s| micro-steps; the polarity sign(s) travels with the spikes.
`sum_i sign * o[i] == s` exactly, hence `sum_i W (theta * sign * o[i]) == W (theta * s)`.
"""

from __future__ import annotations

import torch


def integrate_and_fire(s: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary spikes o (D, *s.shape) in {0, 1} and the polarity sign(s) (*s.shape)."""
    v = s.abs()
    spikes = []
    for _ in range(levels):
        o = (v >= 1.0).to(s.dtype)      # H(v - Vth), Vth = 1
        v = v - o                       # reset by subtraction
        spikes.append(o)
    return torch.stack(spikes), torch.sign(s)


def decode_spike_train(spikes: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Integer activations back from a spike train: s = sign * sum_i o[i]."""
    return sign * spikes.sum(0)
