"""A differentiable spike rate for the firing-rate penalty.

The rate of a neuron group at one position is r = mean over its channels of |s|, the number of
binary spikes per neuron for that token (a multi-level spike of value k is k spikes of the
D-micro-step train, and costs |k| accumulates, DESIGN.md section 2), so pushing r down is
pushing the energy down.

r is measured exactly in the forward pass; its gradient comes from the same rectangular surrogate
as the neuron's own (ds/du = alpha inside the clipping range, u = x / theta):

    dr/du = sign(s) * alpha / numel     (0 where s = 0)

so only neurons that fire are pushed toward |u| < 1/2 (where they fall silent), through both the
activation x and the threshold theta; neurons that are already silent feel nothing.

`SpikeRateProbe` recomputes s from each neuron's input in a forward pre-hook. That costs one more
elementwise pass per neuron but needs nothing from the neuron's code, and it is unaffected by the
SGC path (which changes what the neuron passes on, not its spikes).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from spikingmamba.neurons.silif import THETA_MIN, SpikingNeuron
from spikingmamba.neurons.surrogate import multi_level_spike


def spike_rate(neuron: SpikingNeuron, x: torch.Tensor) -> torch.Tensor:
    """mean over channels of |s| for `neuron` on input `x` (..., channels) -> (...),
    differentiable through the surrogate."""
    u = x / neuron.theta.clamp(min=THETA_MIN)
    return multi_level_spike(u, neuron.lo, neuron.hi, neuron.surrogate_alpha).abs().float().mean(-1)


class SpikeRateProbe:
    """Collects `spike_rate` of every neuron of `model` during the forward passes inside `watch()`."""

    def __init__(self, model: nn.Module):
        self.neurons = [(name, m) for name, m in model.named_modules() if isinstance(m, SpikingNeuron)]
        self.rates: list[torch.Tensor] = []

    @contextlib.contextmanager
    def watch(self):
        self.rates = []
        handles = [neuron.register_forward_pre_hook(self._hook) for _, neuron in self.neurons]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, neuron: SpikingNeuron, args) -> None:
        self.rates.append(spike_rate(neuron, args[0]))
